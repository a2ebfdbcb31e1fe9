"""One loader for every latent-diffusion backbone: a hub id, a local folder, or `tiny`.

A backbone is a diffusers-layout folder (`model_index.json` naming each component's library and
class, one subfolder per component). The loader reads that index, so the same code loads
- `CompVis/ldm-text2im-large-256`: the LDM txt2img-f8-large that AnomalyDiffusion and STAGE use
  (`unet/`, `vqvae/` (an AutoencoderKL), `bert/` (LDM-BERT), BERT `tokenizer/`; 256 px, 32x32x4);
- Stable Diffusion v1.x (`unet/`, `vae/`, CLIP `text_encoder/` and `tokenizer/`);
- `tiny`: random-init components built by `generators.diffusion.tiny`, saved once under
  `$SIAS_BENCH_CACHE/models/` and loaded back through this same path;
- `tiny-demo`: `tiny` with a wider U-Net pre-trained once on demo normal images
  (`generators.diffusion.tiny_demo`), cached the same way.
A missing backbone raises one BenchError saying what to download and where to put it.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmark.errors import BenchError
from generators.diffusion import tiny as tiny_recipe
from generators.diffusion import tiny_demo as tiny_demo_recipe
from generators.diffusion.hub import KNOWN_BACKBONES, LDM_SCHEDULE, ROLES, TINY, quiet_hub_libraries
from generators.diffusion.tiny import tiny_backbone_folder
from generators.diffusion.tiny_demo import TINY_DEMO, tiny_demo_backbone_folder

__all__ = ["Backbone", "load_backbone", "resolve_folder", "TINY", "LDM_SCHEDULE"]

# backbones the project builds itself instead of loading from the hub: name -> folder builder
BUILT_BACKBONES = {TINY: tiny_backbone_folder, TINY_DEMO: tiny_demo_backbone_folder}


@dataclass
class Backbone:
    """The frozen parts of a text-to-image latent diffusion model, loaded from one folder."""

    source: str
    folder: Path
    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    scheduler_config: dict

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell: the autoencoder's own figure when it has one (the tiny backbone's
        pixel-unshuffle), else AutoencoderKL's one halving per block after the first."""
        return vae_scale_factor(self.vae.config)

    @property
    def resolution(self) -> int:
        """Native image size in pixels (LDM-256: 32 * 8)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 1.0) or 1.0)

    @property
    def size_multiple(self) -> int:
        """Image sizes must be multiples of this: the VAE's downsampling times the denoiser's (a
        U-Net halves the latent once per block after the first; a DiT cuts it into patches)."""
        return size_multiple(self.vae_scale_factor, self.unet.config)

    @property
    def max_length(self) -> int:
        """Prompt length: the tokenizer's, capped by the text encoder's positions (77 for CLIP and
        LDM-BERT; a BERT tokenizer may claim 512)."""
        n = getattr(self.tokenizer, "model_max_length", None) or 77
        positions = getattr(self.text_encoder.config, "max_position_embeddings", None) or 77
        return int(min(n, positions))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}

    def freeze(self) -> "Backbone":
        for module in self.modules().values():
            module.requires_grad_(False).eval()
        return self


PROJECT_COMPONENTS = "generators.diffusion."  # the tiny backbone's own parts (its autoencoder)


def _component_class(library: str, name: str):
    if library in ("diffusers", "transformers") or library.startswith(PROJECT_COMPONENTS):
        module = library
    else:
        module = f"diffusers.pipelines.{library}"
    return getattr(importlib.import_module(module), name)


def missing_weights_message(source: str, reason: str) -> str:
    known = KNOWN_BACKBONES.get(source, "a diffusers-format text-to-image model")
    return (
        f"backbone '{source}' ({known}) is not available: {reason}. Download it where the hub is "
        f"reachable, e.g. `huggingface-cli download {source} --local-dir <folder>` (it needs "
        "model_index.json and the unet/, vae/ or vqvae/, text_encoder/ or bert/, tokenizer/ and "
        "scheduler/ subfolders), copy <folder> to this machine and pass "
        "`--set generator.options.backbone=<folder>`; or put it in the Hugging Face cache (HF_HOME). "
        "For a quick run without weights use `--set generator.options.backbone=tiny` (random init, "
        "numbers are not meaningful)."
    )


def resolve_folder(source: str) -> Path:
    """A local folder as given, else a hub snapshot (cache first; honours HF_HUB_OFFLINE)."""
    if source in BUILT_BACKBONES:
        return BUILT_BACKBONES[source]()
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or source.startswith((".", "~")) or source.count("/") != 1:
        raise BenchError(missing_weights_message(source, f"no folder {path}"))
    try:
        from huggingface_hub import snapshot_download

        subfolders = sorted({s for names in ROLES.values() for s in names} | {"scheduler"})
        return Path(snapshot_download(
            source, allow_patterns=["model_index.json"] + [f"{s}/*" for s in subfolders],
            ignore_patterns=["*.ckpt", "*.msgpack", "*.h5", "*.onnx*", "*fp16*", "*.bin.index.json"],
        ))
    except Exception as err:  # offline, not cached, gated, no network: one message for all
        raise BenchError(missing_weights_message(source, f"{type(err).__name__}: no local folder of that "
                                                 "name and the hub snapshot could not be loaded")) from err


def component_subfolders(source: str, folder: Path) -> dict[str, tuple[str, str, str]]:
    """role -> (subfolder, library, class name) as the folder's model_index.json names them."""
    index_file = folder / "model_index.json"
    if not index_file.exists():
        raise BenchError(missing_weights_message(source, f"{index_file} is missing (not a diffusers folder)"))
    index = json.loads(index_file.read_text())
    found = {}
    for role, names in ROLES.items():
        sub = next((n for n in names if isinstance(index.get(n), list) and index[n][0] and (folder / n).is_dir()), None)
        if sub is None:
            raise BenchError(missing_weights_message(source, f"{folder} has no {' or '.join(names)} component"))
        found[role] = (sub, *index[sub])
    return found


def vae_scale_factor(vae_config) -> int:
    """Pixels per latent cell: the project autoencoders' `factor` (pixel-unshuffle, patch PCA),
    else AutoencoderKL's (and VQModel's) one halving per block after the first."""
    factor = vae_config.get("factor")
    return int(factor) if factor else 2 ** (len(vae_config["block_out_channels"]) - 1)


def size_multiple(vae_factor: int, denoiser_config) -> int:
    """Image sizes must be multiples of this: the VAE's downsampling times the denoiser's (a U-Net
    halves the latent once per block after the first; a DiT cuts it into patches)."""
    if denoiser_config.get("block_out_channels"):
        return vae_factor * 2 ** (len(denoiser_config["block_out_channels"]) - 1)
    return vae_factor * int(denoiser_config.get("patch_size") or 1)


def built_backbone_configs(source: str) -> tuple[dict, dict]:
    """The VAE and denoiser configs of a built backbone, from its recipe (read at call time: tests
    vary the recipe), so its geometry is known before it is built."""
    if source == TINY:
        return tiny_recipe.VAE, tiny_recipe.UNET
    return {"factor": tiny_demo_recipe.PATCH}, {"block_out_channels": tiny_demo_recipe.UNET_CHANNELS}


def backbone_geometry(source: str) -> tuple[int, int]:
    """(pixels per latent cell, the multiple image sizes must be) of a backbone, read from its
    components' config.json without loading a weight; a missing backbone raises the BenchError
    `load_backbone` would, so a run can check both before its first stage."""
    if source in BUILT_BACKBONES:
        vae, denoiser = built_backbone_configs(source)
    else:
        folder = resolve_folder(source)
        subfolders = component_subfolders(source, folder)
        configs = []
        for role in ("vae", "unet"):
            config_file = folder / subfolders[role][0] / "config.json"
            if not config_file.is_file():
                raise BenchError(missing_weights_message(source, f"{config_file} is missing"))
            configs.append(json.loads(config_file.read_text()))
        vae, denoiser = configs
    factor = vae_scale_factor(vae)
    return factor, size_multiple(factor, denoiser)


def load_backbone(source: str, dtype: torch.dtype = torch.float32, freeze: bool = True) -> Backbone:
    """Load the denoiser (`unet/` or a DiT's `transformer/`), vae, text encoder, tokenizer and the
    noise schedule from `source`; frozen (no gradients, eval mode) unless `freeze=False`, for
    methods that fine-tune the denoiser (SeaS, BADG)."""
    folder = resolve_folder(source)
    parts = {}
    for role, (sub, library, cls_name) in component_subfolders(source, folder).items():
        cls = _component_class(library, cls_name)
        try:
            with quiet_hub_libraries():
                parts[role] = cls.from_pretrained(folder / sub)
        except (OSError, ValueError) as err:
            raise BenchError(missing_weights_message(source, f"{folder / sub}: {err}")) from err
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = json.loads(scheduler_file.read_text()) if scheduler_file.exists() else dict(LDM_SCHEDULE)
    for role in ("unet", "vae", "text_encoder"):  # checkpoints may be stored in half precision
        if any(p.dtype != dtype for p in parts[role].parameters()) or getattr(parts[role], "dtype", dtype) != dtype:
            parts[role] = parts[role].to(dtype)
    backbone = Backbone(source, folder, scheduler_config=scheduler_config, **parts)
    return backbone.freeze() if freeze else backbone
