"""AnomalyDiffusion's options and the constants their defaults are (a leaf: pydantic and the
standard library only, so the command line checks `generator.options.*` before torch is imported;
`torch_model` and `lightning_model` import the constants from here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, ValidationInfo, model_validator

from generators.diffusion.options import LatentDiffusionOptions

# Eq. 10 and the masks (torch_model.guided_mask_eps, binarise_mask)
MASK_GUIDANCE_SCALE = 5.0  # Supp. C.1: "s is set 5 (the same as Textual Inversion)"
MASK_TOKENS = {"main_text": 4, "supplement": 2}  # k' (Sec. 4.1) vs "2 tokens" (Supp. C.1): they disagree
MASK_THRESHOLDS = {"midpoint": 0.5, "authors": 0.8}  # on the [0, 1] channel mean; the paper gives none


@dataclass(frozen=True)
class DdimSettings:
    steps: int
    eta: float


# The paper states no sampler settings. "authors": generate_with_mask.py (DDIM, 200 steps, eta 1);
# "authors_masks": generate_mask.py (100 steps, eta 1 by log_images' default). "smoke": few steps.
DDIM_SETTINGS = {"authors": DdimSettings(200, 1.0), "authors_masks": DdimSettings(100, 1.0),
                 "smoke": DdimSettings(10, 1.0)}


class AnomalyDiffusionOptions(LatentDiffusionOptions):
    """Defaults are the paper's (Sec. 4.1, Supp. C.1); the `smoke` preset shrinks them."""

    pairs_per_type: int = 1000
    train_steps: int = Field(300_000, ge=1)
    train_batch_size: int = Field(4, ge=1)
    lr: float = 5e-3
    tokens_per_type: int = Field(8, ge=1)  # k, the anomaly embedding e_a
    spatial_tokens: int = Field(4, ge=1)  # n, the spatial embedding e_s
    spatial_arch: Literal["resnet50", "resnet18"] = "resnet50"
    spatial_fpn_channels: int = Field(256, ge=1)
    spatial_grid: int = Field(4, ge=1)
    spatial_encoder_weights: str | None = None  # torchvision ImageNet ResNet state dict: a path, or a name under <cache>/weights/
    augment: bool = True  # Supp. B joint crop / translate / rotate
    augment_max_angle: float = 30.0
    augment_max_zoom: float = Field(1.25, ge=1.0)
    ddim_steps: int = Field(DDIM_SETTINGS["authors"].steps, ge=1)  # the paper gives none: the authors' 200
    ddim_eta: float = DDIM_SETTINGS["authors"].eta
    aar: bool = True
    aar_x0_from: Literal["current", "previous"] = "current"
    aar_clamp: tuple[float, float] | None = None  # the authors' code: (1.0, 1.5)
    mask_source: Literal["generated", "given"] = "generated"
    mask_tokens: int = Field(MASK_TOKENS["main_text"], ge=1)  # k'; Supp. C.1 says 2
    mask_guidance: float = MASK_GUIDANCE_SCALE
    mask_threshold: float = MASK_THRESHOLDS["midpoint"]  # the authors' code: 0.8
    mask_border_rule: bool = True  # the authors' rejection of masks along the border (not in the paper)
    mask_ddim_steps: int = Field(DDIM_SETTINGS["authors_masks"].steps, ge=1)
    mask_tries: int = Field(4, ge=1)  # draws per request before falling back to the given mask
    # the denoiser of Eq. 10: "backbone" = the frozen LDM steered by e_m (the paper); "stored_masks" =
    # the ideal denoiser of the jointly augmented few-shot masks seen in the fit (smoke: the random
    # tiny U-Net has no prior for e_m to steer; no e_m is then learned)
    mask_denoiser: Literal["backbone", "stored_masks"] = "backbone"
    stored_masks_per_type: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _check_mask_tokens(self, info: ValidationInfo):
        if (info.context or {}).get("partial"):  # the early check sees the user's keys without the preset
            return self
        if self.mask_source == "generated" and self.mask_denoiser == "backbone" and self.mask_tokens > self.tokens_per_type:
            raise ValueError("mask_tokens (k') cannot exceed tokens_per_type (k): e_m shares the token table")
        return self
