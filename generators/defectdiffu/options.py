"""DefectDiffu's options and the paper's constants their defaults are (a leaf: pydantic only, so the
command line checks `generator.options.*` before torch is imported; `double_free`, `loss`,
`torch_model` and `lightning_model` import the constants from here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from generators.diffusion.options import LatentDiffusionOptions

BLOCKS_PAPER = (10, 10, 8)  # N background, M defect, K fusion blocks (Sec. 4.1)
LAST_STEPS = 100  # masks averaged over the last 100 denoising steps (Sec. 3.4)
P1 = 0.2  # probability of the unconditional product (Sec. 4.1)
P2 = 0.2  # probability of the unconditional ("good") defect (Sec. 4.1)
LAMBDA_MASK = 0.2  # lambda of Eq. 11 (Sec. 4.1)

SD_V15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # VAE + CLIP ViT-L/14 text encoder (768-wide)
DIT_FOLDER = "models/DiT-XL-2-512"  # where the paper preset looks for the DiT weights (relative to the run's cwd)


class DefectDiffuOptions(LatentDiffusionOptions):
    """Defaults are the paper's where it gives them (Sec. 4.1); the `smoke` preset shrinks them."""

    backbone: str = SD_V15  # supplies the VAE and the text encoder only
    resolution: int | None = 512  # "All images are resized to 512x512" (Sec. 4.1)
    # "tiny": a random 5-block TDIA on the backbone's latent; "tiny-demo-dit": the smoke TDIA pre-trained
    # once on demo images with its PCA autoencoder (generators/defectdiffu/tiny_dit.py), which replace
    # the backbone's autoencoder (the backbone must be `tiny`: its text encoder was used)
    transformer: Literal["dit-xl-2", "tiny", "tiny-demo-dit"] = "dit-xl-2"
    # a diffusers DiTTransformer2DModel folder (config.json + weights), e.g. the `transformer`
    # folder of facebook/DiT-XL-2-512; None = random initialisation (only sensible for `tiny`)
    dit_weights: str | None = DIT_FOLDER
    blocks: tuple[int, int, int] = BLOCKS_PAPER  # N, M, K (Sec. 4.1)
    # the paper gives none; the authors' code: AdamW lr 1e-5, batch 2, 1501 epochs
    train_steps: int = Field(50_000, ge=1)
    train_batch_size: int = Field(2, ge=1)
    lr: float = 1e-5
    tokens_per_type: int = Field(0, ge=0, le=0)  # no learned tokens: the prompts are plain words (Sec. 3.2)
    p1: float = Field(P1, ge=0, le=1)  # Algorithm 1 (Sec. 4.1)
    p2: float = Field(P2, ge=0, le=1)
    lambda_mask: float = Field(LAMBDA_MASK, ge=0)  # Eq. 11 (Sec. 4.1)
    mask_hidden: int = Field(64, ge=1)  # the mask module's width (architecture not given)
    # "vae": the mask latent is the VAE-encoded mask (Eq. 6); "cell": one channel per latent cell (the
    # cell's mask area), upsampled bilinearly: for the tiny autoencoders (`cell_mask_target`)
    mask_latent: Literal["vae", "cell"] = "vae"
    sampling_steps: int = Field(250, ge=1)  # not given; >= the 100 averaged mask steps, DiT's own 250
    mask_steps: int = Field(LAST_STEPS, ge=1)  # masks averaged over the last 100 steps (Sec. 3.4)
    w_p: float = 1.0  # Eq. 4 background scale; not printed (1 = the plain background condition)
    w_d: float = 1.0  # Eq. 4 defect strength, when `w_d_sweep` is empty
    w_d_sweep: tuple[float, ...] = ()  # one w_d per request, cycling (Fig. 4: strength diversity)
    # map defect folders through supplement Table 2; off for data that reuses MVTec AD product names
    # with other defect names (the demo data)
    unify_defects: bool = True
    # clamp DDIM's x0 estimate to [-1, 1]: right only where latents are pixels (the tiny backbone's
    # pixel-unshuffle autoencoder); a VAE latent has no such range
    clip_sample: bool = False
    zero_shot_targets: tuple[str, ...] = ()  # products with normal images only: Eq. 12 requests
