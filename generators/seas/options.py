"""SeaS's options and the paper's constants their defaults are (a leaf: pydantic only, so the
command line checks `generator.options.*` before torch is imported; `prompts`, `torch_model` and
`lightning_model` import the constants from here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, model_validator

from generators.diffusion.options import LatentDiffusionOptions

# the Unbalanced Abnormal prompt and its learning rates (prompts.py)
NORMAL_TOKENS = 1  # N' (A.3, Table 9)
ANOMALY_TOKENS = 4  # N (A.3, Table 9)
UNET_LR = 4e-6  # A.3
TOKEN_LR = 4e-5  # A.3
INIT_WORD = "defect"  # the authors' initializer token; the paper does not say how rows start

# the RMP branch, the extended noise schedule and the sampler (torch_model.py)
T_EXTENDED = 1500  # A.3: "we use t = 1500 to perform diffusion forward on normal images"
SAMPLING_STEPS = 25  # A.3: T = 25 sampling steps
MASK_THRESHOLD = 0.2  # tau, Table 18
MASK_STEPS = 3  # the authors' code averages the RMP output of the last 3 sampling steps
RMP_FEATURES = (2, 3)  # F_2 ("up-2") and F_3 ("up-3"), Table 14; F_y is the output of up_blocks[y - 1]
RMP_LR = 5e-4  # A.3

SD_V14 = "CompVis/stable-diffusion-v1-4"  # the authors' config (the appendix names no version)
GUIDANCE = {"mvtec": 8.0, "visa": 2.0, "mvtec3d": 5.0}  # authors' config: CFG scale per dataset


class SeasOptions(LatentDiffusionOptions):
    """Defaults are the paper's (A.3) on SD v1.4 at 512 px; the `smoke` preset shrinks them."""

    backbone: str = SD_V14
    resolution: int | None = None  # the run's image size; the paper preset: 512
    pairs_per_type: int = 1000  # not in the appendix; a choice (AnomalyDiffusion's count)
    # fit steps, SSF then RMP; None = (ssf + rmp steps per type) x the split's anomaly types (A.3: 800 x G each)
    train_steps: int | None = Field(None, ge=2)
    ssf_steps_per_type: int = Field(800, ge=1)
    rmp_steps_per_type: int = Field(800, ge=1)
    train_batch_size: int = Field(2, ge=1)  # anomaly images per step (A.3: 2)
    normal_batch_size: int = Field(2, ge=0)  # normal images per step (A.3: 2; 0 = Table 12 without normals)
    lr: float = UNET_LR  # the whole U-Net (A.3)
    token_lr: float = TOKEN_LR  # the UA prompt's new token rows (A.3)
    rmp_lr: float = RMP_LR  # the RMP branch (A.3)
    tokens_per_type: int = Field(1, ge=1, le=1)  # each <ob>/<df_k> is its own one-token concept (prompts.py)
    normal_tokens: int = Field(NORMAL_TOKENS, ge=1)  # N' (Table 9)
    anomaly_tokens: int = Field(ANOMALY_TOKENS, ge=1)  # N (Table 9)
    init_word: str = INIT_WORD
    sampling_steps: int = Field(SAMPLING_STEPS, ge=1)  # DPM-Solver steps (A.3: 25)
    noise_timestep: int = Field(T_EXTENDED, ge=1)  # A.3: t = 1500; above T the schedule is re-spread over it
    guidance_scale: float = GUIDANCE["mvtec"]  # 8 / 2 / 5 for MVTec AD / VisA / MVTec 3D AD (authors' config)
    mask_threshold: float = Field(MASK_THRESHOLD, gt=0, lt=1)  # tau (Table 18)
    mask_steps: int = Field(MASK_STEPS, ge=1)  # RMP outputs averaged over the last sampling steps (authors' code)
    da_scales: tuple[int, ...] = (2, 4)  # DA grids = latent / scale (Table 13: 32 and 16 of SD's 64)
    da_weight: float = Field(1.0, ge=0)  # weight of the DA term in the SSF loss (paper and authors: 1)
    rmp_features: tuple[int, ...] = RMP_FEATURES  # F_y = output of up_blocks[y - 1] (Table 14)
    rmp_coarse_channels: tuple[int, ...] = (128, 64)  # A.5: 192 in all; split as the authors
    rmp_attention_layers: int = Field(4, ge=0)  # authors' code; the paper says only "conv blocks"
    rmp_heads: int = Field(8, ge=1)
    rmp_norm_groups: int = Field(32, ge=1)
    rmp_timesteps: int | None = Field(None, ge=1)  # RMP training draws t in [0, this); None = [0, T) (paper silent)
    output: Literal["anomaly", "normal"] = "anomaly"  # "normal": SeaS' "a <ob>" images

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo):
        if (info.context or {}).get("partial"):  # the early check sees the user's keys without the preset
            return self
        if len(self.rmp_features) != len(self.rmp_coarse_channels):
            raise ValueError("rmp_features and rmp_coarse_channels need one entry per U-Net feature")
        if sum(self.rmp_coarse_channels) % self.rmp_heads:
            raise ValueError("the coarse feature's channels must split evenly into rmp_heads")
        return self
