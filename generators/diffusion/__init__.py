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
Importing this package costs nothing (the names below load on first use, PEP 562), so the
torch-free `options` imports without torch; diffusers/transformers load when a backbone does, and
Lightning when `generator` is imported.
"""

_EXPORTS = {
    "CrossAttentionHook": "attention", "TINY": "backbone", "Backbone": "backbone", "load_backbone": "backbone",
    "decode_latents": "latents", "decode_masks": "latents", "encode_images": "latents",
    "encode_masks": "latents", "mask_to_latent": "latents", "PerSampleNoise": "noise",
    "make_scheduler": "schedulers", "LearnedTokens": "tokens",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # lazily, so `generators.diffusion.options` (pydantic only) imports without torch
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f"generators.diffusion.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
