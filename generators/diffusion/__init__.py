"""The latent-diffusion core every diffusion-based generator composes (diffusers underneath).

- `backbone`: one loader for a hub id, a local folder or `tiny` (random-init, cached) -> Backbone.
- `schedulers`: diffusers' DDPM / DDIM / DPM-Solver on the backbone's beta schedule.
- `tokens`: learned text tokens (textual inversion) for any tokenizer + text encoder.
- `attention`: a cross-attention hook that records, re-weights or masks per-token attention.
- `latents`: VAE encode/decode of images, masks at latent resolution.
- `noise`: per-sample random streams (a pair depends on its request's seed only).
- `ddpm`: forward noising, x0 prediction, the DDPM posterior and step.
- `concepts`, `few_shot`: concepts and prompts of a split; the few-shot training set, flips,
  resumable draws, mask placement.
- `generator`: `LatentDiffusionGenerator`, the base class of every diffusion method (Lightning).
- `conditioning`, `feature_taps`, `denoiser`, `inversion`: extra context tokens and
  multi-condition guidance; forward hooks on decoder features; one interface for U-Net and DiT
  denoisers; masked DDIM inversion (docs/diffusion.md says which method needs which).
Importing this package costs torch only; diffusers/transformers load when a backbone does, and
Lightning when `generator` is imported.
"""

from generators.diffusion.attention import CrossAttentionHook
from generators.diffusion.backbone import TINY, Backbone, load_backbone
from generators.diffusion.latents import decode_latents, decode_masks, encode_images, encode_masks, mask_to_latent
from generators.diffusion.noise import PerSampleNoise
from generators.diffusion.schedulers import make_scheduler
from generators.diffusion.tokens import LearnedTokens

__all__ = ["TINY", "Backbone", "CrossAttentionHook", "LearnedTokens", "PerSampleNoise", "decode_latents",
           "decode_masks", "encode_images", "encode_masks", "load_backbone", "make_scheduler", "mask_to_latent"]
