"""BADG's options (a leaf: pydantic only, so the command line checks `generator.options.*` before
torch is imported; `lightning_model` imports them from here)."""

from __future__ import annotations

from pydantic import Field

from generators.diffusion.options import LatentDiffusionOptions


class BadgOptions(LatentDiffusionOptions):
    """Defaults are the paper's where it gives them (Sec. 4.1, App. B); the `smoke` preset shrinks them."""

    backbone: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # "Stable Diffusion", v1.x (Sec. 4.1)
    resolution: int | None = 256  # "stable diffusion with 256x256 resolutions" (App. B)
    train_steps: int = Field(500, ge=1)  # "500 iterations" per class (Sec. 4.1, App. B)
    # the paper gives neither; the DreamBooth recipe it follows, as diffusers' DreamBooth example runs it
    # on Stable Diffusion (examples/dreambooth/README.md: --train_batch_size=1 --learning_rate=5e-6)
    train_batch_size: int = Field(1, ge=1)
    lr: float = 5e-6
    tokens_per_type: int = Field(0, ge=0, le=0)  # BADG learns no tokens: fixed DreamBooth identifiers
    sampling_steps: int = Field(50, ge=1)  # "DDIM sampler ... with 50-time steps" (Sec. 4.1)
    inversion_steps: int = Field(50, ge=1)  # "DDIM inversion with 50 time steps" (App. B)
    c2_input: str = Field("masked", pattern="^(masked|full)$")  # Eq. 9's C2 pass input, see torch_model
    refine_threshold: float = Field(0.5, gt=0, lt=1)  # Eq. 13
    # outside m, z_0* is the normal latent only up to the DDIM-inversion gap (Prop. 3.3 keeps the
    # background *path*, Sec. 3.2); True replaces it by the normal latent (a departure, docs/badg.md)
    keep_normal_background: bool = False
