"""Where backbones come from: names, the LDM noise schedule, the cache root (a leaf: no project imports).

`backbone` (the loader) and `tiny` (the project-built backbone) both read these; neither imports
the other's callers, so the import graph has no cycle.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

TINY = "tiny"

# role -> subfolder names used by the pipelines we load (first match wins); a DiT-style pipeline
# keeps its denoiser under transformer/
ROLES = {
    "unet": ("unet", "transformer"),
    "vae": ("vae", "vqvae"),
    "text_encoder": ("text_encoder", "bert"),
    "tokenizer": ("tokenizer",),
}

# CompVis `make_beta_schedule("linear")` is linear in sqrt(beta): diffusers calls it "scaled_linear"
LDM_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}

KNOWN_BACKBONES = {
    "CompVis/ldm-text2im-large-256": "LDM txt2img-f8-large + LDM-BERT, 256 px (AnomalyDiffusion, STAGE)",
    "CompVis/stable-diffusion-v1-4": "Stable Diffusion v1.4, 512 px (SeaS)",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "Stable Diffusion v1.5, 512 px",
}


def cache_root() -> Path:
    return Path(os.environ.get("SIAS_BENCH_CACHE", "~/.cache/sias-bench")).expanduser()


def recipe_folder(name: str, recipe: dict) -> Path:
    """The cache folder of a model built from `recipe`: `<cache>/models/<name>-<hash of the recipe>`,
    so a changed recipe builds a new folder instead of reusing a stale one."""
    import hashlib
    import json

    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{name}-{key}"


@contextmanager
def quiet_hub_libraries():
    """Silence diffusers/transformers info logs and progress bars while loading components."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
        dlog.enable_progress_bar()
        tlog.enable_progress_bar()


@contextmanager
def atomic_folder(folder: Path):
    """Yield a temporary sibling of `folder` to write a backbone into; on success rename it to
    `folder` (a reader never sees half a folder; if a concurrent builder finished first, its copy is
    kept); the temporary folder is removed in every case."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        yield tmp
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: keep its copy
            if not (folder / "model_index.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
