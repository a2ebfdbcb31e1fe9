"""STAGE's options (a leaf: pydantic only, so the command line checks `generator.options.*`
before torch is imported; `lightning_model` imports them from here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from generators.diffusion.options import LatentDiffusionOptions

# the authors' public code (Chhro123/STAGE) where it differs from the paper; docs/stage.md section 3
AUTHORS_CODE = {
    "adapter_layer_order": "conv-bn-relu",  # class MGA; the paper's Sec. III-D: conv, ReLU, BN
    "adapter_head_kernel": 1,  # a 1x1 last conv; the paper does not say (here 3x3)
    "aware_loss_weight": 4.0,  # l_simple_weight = 4 on the anomaly-aware term; the paper's Eq. 12: 1:1
    "tokens_per_type": 4,  # num_vectors_per_token in the MVTec config; the paper's Sec. IV-A: 8
    "intervals": ((800, 700), (400, 300)),  # its sampler's `800 >= i >= 700`; the paper: [1000, 800]
    "inference_mask": "ema",  # Eq. 4-6 with the EMA mask (p_mean_variance); the paper: M0
}


class StageOptions(LatentDiffusionOptions):
    """Defaults are the paper's (Sec. IV-A); the `smoke` preset shrinks them."""

    follows: Literal["paper", "authors-code"] = "paper"  # whose choices fill the options below

    pairs_per_type: int = 500
    tokens_per_type: int = Field(8, ge=1)
    init_word: str = "anomaly"  # initialises the learned tokens (authors' code)
    prompt: str = "{category} {defect}"  # the text before the learned tokens; BTAD in the paper: "damaged"
    adapter_channels: tuple[int, ...] = (64, 256, 512, 256, 64)  # authors' code
    adapter_residual: bool = False
    adapter_layer_order: Literal["conv-relu-bn", "conv-bn-relu"] = "conv-relu-bn"
    adapter_head_kernel: Literal[1, 3] = 3
    aware_loss_weight: float = Field(1.0, gt=0)
    inference_mask: Literal["m0", "ema"] = "m0"
    sampling_steps: int = Field(1000, ge=1)  # < T: respaced ancestral DDPM (a deviation, for speed)
    intervals: tuple[tuple[int, int], ...] = ((1000, 800), (400, 300))  # anomaly-only branch, paper's t
    t_s: int = Field(200, ge=0)
    graded_diffusion: bool = True
    anomaly_inference: bool = True
    mask_alignment: Literal["ema", "binary", "none"] = "ema"

    @model_validator(mode="before")
    @classmethod
    def _follow_the_authors_code(cls, data):
        """`follows` fills what the user left unset; explicit options still win."""
        if isinstance(data, dict) and data.get("follows") == "authors-code":
            return {**AUTHORS_CODE, **data}
        return data

    @model_validator(mode="after")
    def _check(self):
        if any(min(a, b) < 1 for a, b in self.intervals):
            raise ValueError("intervals are in the paper's t = 1..T")
        return self
