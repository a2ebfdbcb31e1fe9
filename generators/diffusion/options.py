"""The options every latent-diffusion generator shares (a leaf: pydantic only, so the command line
checks `generator.options.*` of every diffusion method before torch is imported; `generator`
imports them from here, each method's `options` module subclasses them)."""

from __future__ import annotations

from pydantic import Field

from generators.options import GeneratorOptions


class LatentDiffusionOptions(GeneratorOptions):
    """Options every latent-diffusion generator has; a method subclasses this with its own."""

    backbone: str = "CompVis/ldm-text2im-large-256"  # hub id, local folder, or "tiny"
    resolution: int | None = None  # px; None = the run's image size
    train_steps: int = Field(80_000, ge=1)
    train_batch_size: int = Field(4, ge=1)
    lr: float = 1e-3
    tokens_per_type: int = Field(8, ge=0)  # learned tokens per concept; 0 = the plain prompt
    init_word: str = "anomaly"  # initialises the learned tokens
    prompt: str = "{category} {defect}"  # the text before the learned tokens
    sampling_steps: int = Field(1000, ge=1)
    mask_augment: bool = True  # rot90/flip/shift of the given mask from the request seed
    seed: int = 0  # training draws: batches, flips, timesteps, noise
