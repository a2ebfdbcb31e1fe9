"""Where SIAS-Bench keeps files, and how it writes them: the cache root, atomic writes, digests.

A leaf module (standard library only), so every part of the project can import it.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path


def cache_root() -> Path:
    """`$SIAS_BENCH_CACHE` (with `~` expanded), else `~/.cache/sias-bench`: demo data, tiny
    models and synthetic sets."""
    env = os.environ.get("SIAS_BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sias-bench"


def temp_name(path: Path) -> Path:
    """A hidden, unique sibling of `path`: same file system (so the rename is atomic), invisible to
    globs of the final suffix, and distinct per process and call, so two ranks never clobber it."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj, path: Path | str) -> None:
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def config_digest(obj) -> str:
    """The 12-hex id of a JSON-able configuration (key order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def file_digest(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def load_weights(path: Path | str) -> dict:
    """A local checkpoint's contents with `weights_only=True`: tensors and plain containers only,
    never pickled code (a checkpoint from elsewhere cannot run anything on load)."""
    import torch

    return torch.load(Path(path), map_location="cpu", weights_only=True)
