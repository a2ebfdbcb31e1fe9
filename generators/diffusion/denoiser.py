"""One interface for the noise predictor: `Denoiser(latents, t, context) -> eps`.

Samplers and inversion call a denoiser without knowing whether it is a U-Net
(`UNet2DConditionModel`: the LDM, Stable Diffusion, the tiny backbone) or a DiT-style transformer
(DefectDiffu builds on DiT, Sec. 3.1): `as_denoiser(model)` wraps either.
- `UNetDenoiser`: context = text-encoder states (B,L,D).
- `TransformerDenoiser`: `PixArtTransformer2DModel` (DiT blocks with cross-attention; context =
  text states) or `DiTTransformer2DModel` (class-conditioned; context = class labels (B,)). Both
  predict a learned variance in extra output channels when out_channels = 2 x in_channels; the
  adapter returns the noise channels only.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class Denoiser(Protocol):
    def __call__(self, latents: torch.Tensor, t, context) -> torch.Tensor:
        """Predicted noise, the shape of `latents`; `t` is a diffusers timestep (int or (B,))."""


def _timesteps(t, latents: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=latents.device)
    return t.expand(len(latents)) if t.dim() == 0 else t


class UNetDenoiser:
    def __init__(self, unet: nn.Module):
        self.model = unet

    def __call__(self, latents, t, context):
        return self.model(latents, t, encoder_hidden_states=context).sample


class TransformerDenoiser:
    def __init__(self, transformer: nn.Module):
        self.model = transformer
        self.cross_attention = getattr(transformer.config, "cross_attention_dim", None) is not None

    def __call__(self, latents, t, context):
        t = _timesteps(t, latents)
        if self.cross_attention:  # PixArt-style: text states through cross-attention
            out = self.model(latents, encoder_hidden_states=context, timestep=t,
                             added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
        else:  # DiT: class labels through adaptive layer norm
            out = self.model(latents, timestep=t, class_labels=context).sample
        c = latents.shape[1]
        return out[:, :c] if out.shape[1] == 2 * c else out  # drop the learned-variance channels


def as_denoiser(model: nn.Module) -> Denoiser:
    """A U-Net (it has `up_blocks`) or a DiT-style transformer (`transformer_blocks`) as a Denoiser."""
    if hasattr(model, "up_blocks"):
        return UNetDenoiser(model)
    if hasattr(model, "transformer_blocks"):
        return TransformerDenoiser(model)
    raise TypeError(f"{type(model).__name__} is neither a U-Net nor a DiT-style transformer")
