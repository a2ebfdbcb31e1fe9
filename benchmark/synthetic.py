"""The synthetic set on disk: the one contract between generators and segmenters.

    images/<category>/<defect>/<id>.png   RGB
    masks/<category>/<defect>/<id>.png    0/255
    manifest.jsonl (+ manifest.rank<r>.jsonl while ranks write)   one line per finished pair
    meta.json                             generator name, resolved config, package versions

Each pair is written image first, then mask, each atomically (temp file + rename), and its
manifest line last, flushed and fsynced: a reader, or a resumed run, never sees half a pair. A
resumed generation skips the request ids already in the manifest, so a killed run started again
ends with the same set, no pair lost or duplicated (ids are stable, seeds live in the requests).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from benchmark.data.images import save_png_atomic
from benchmark.contracts import GenerationRequest, SyntheticPair


def append_line(path: Path, line: str) -> None:
    """Append one line durably; a torn last line left by a crash is closed off first, so it
    costs only its own pair (redone on resume), never the next one."""
    with open(path, "a+b") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(line.encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


class SyntheticSet:
    def __init__(self, root: Path):
        self.root = Path(root)

    # -- reading ------------------------------------------------------------------------------
    def manifest_files(self) -> list[Path]:
        return sorted(self.root.glob("manifest*.jsonl"))

    def records(self) -> list[dict]:
        """Finished pairs, deduplicated by id (a pair may appear in a rank shard and the merge)."""
        seen: dict[str, dict] = {}
        for path in self.manifest_files():
            for line in path.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash: its pair is redone
                seen.setdefault(rec["id"], rec)
        return [seen[k] for k in sorted(seen)]

    def done_ids(self) -> set[str]:
        return {r["id"] for r in self.records()}

    def meta(self) -> dict | None:
        path = self.root / "meta.json"
        return json.loads(path.read_text()) if path.exists() else None

    def __len__(self) -> int:
        return len(self.records())

    # -- writing ------------------------------------------------------------------------------
    def write_meta(self, meta: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
        tmp.replace(self.root / "meta.json")

    def write_pair(self, pair: SyntheticPair, generator: str, rank: int = 0) -> dict:
        req = pair.request
        rel = f"{req.category}/{req.defect}/{Path(req.id).name}.png"
        image_path, mask_path = self.root / "images" / rel, self.root / "masks" / rel
        save_png_atomic(np.ascontiguousarray(pair.image, dtype=np.uint8), image_path)
        save_png_atomic(pair.mask.astype(np.uint8) * 255, mask_path)
        record = {
            "id": req.id,
            "image": f"images/{rel}",
            "mask": f"masks/{rel}",
            "category": req.category,
            "defect": req.defect,
            "source_image": req.normal_image,
            "source_mask": list(req.mask) if req.mask else None,
            "mask_origin": pair.mask_origin,
            "seed": req.seed,
            "generator": generator,
        }
        append_line(self.root / f"manifest.rank{rank}.jsonl", json.dumps(record, sort_keys=True))
        return record

    def merge_manifests(self) -> None:
        """Fold the per-rank shards into manifest.jsonl (rank 0, after all ranks finished)."""
        records = self.records()
        tmp = self.root / "manifest.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        tmp.replace(self.root / "manifest.jsonl")
        for shard in self.root.glob("manifest.rank*.jsonl"):
            shard.unlink()

    def pending(self, requests: Sequence[GenerationRequest]) -> list[GenerationRequest]:
        done = self.done_ids()
        return [r for r in requests if r.id not in done]


class SyntheticSetWriter(BasePredictionWriter):
    """Writes each pair as soon as its predict step returns, so a crash loses at most one batch."""

    def __init__(self, synthetic_set: SyntheticSet, generator: str, on_pair=None):
        super().__init__(write_interval="batch")
        self.set = synthetic_set
        self.generator = generator
        self.on_pair = on_pair

    def write_on_batch_end(self, trainer, pl_module, prediction: Any, batch_indices, batch, batch_idx, dataloader_idx=0):
        for pair in prediction:
            self.set.write_pair(pair, self.generator, trainer.global_rank)
            if self.on_pair is not None:
                self.on_pair(pair)
