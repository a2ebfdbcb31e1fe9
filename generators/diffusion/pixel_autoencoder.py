"""A lossless, parameter-free autoencoder for the `tiny` backbone: pixel-unshuffle / pixel-shuffle.

A random-initialised AutoencoderKL cannot reconstruct anything, so every pair a diffusion method
made on the old tiny backbone was a grey canvas with a blob, whatever the method did. This one
folds each f x f pixel block into channels (3 f^2 latent channels at 1/f of the size; f = 8, like
the real VAEs' downsampling, so latent grids and latent masks have the real models' geometry) and
unfolds it back, bit for bit: decode(encode(x)) == x. Measured against the other option the issue
names (a small AutoencoderKL trained once on the demo data): that one costs training time and
still blurs the background; this one costs nothing and keeps every background pixel (see
docs/diffusion.md, "The tiny backbone").

It answers the calls the project makes on diffusers' AutoencoderKL: `encode(x).latent_dist`
(`.mode()`, `.sample(generator)`), `decode(z).sample`, `config.scaling_factor`, `config.latent_channels`,
`dtype`, and `save_pretrained` / `from_pretrained` (a config file, no weights).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from torch import nn


class PixelShuffleAutoencoder(nn.Module, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, factor: int = 8, in_channels: int = 3, scaling_factor: float = 1.0):
        super().__init__()
        # parameter-free; this buffer only carries the dtype/device that `.to()` sets
        self.register_buffer("anchor", torch.zeros(()), persistent=False)

    @property
    def latent_channels(self) -> int:
        return self.config.in_channels * self.config.factor**2

    @property
    def downscale_factor(self) -> int:
        return int(self.config.factor)

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        mean = F.pixel_unshuffle(x, self.config.factor)
        # zero variance: `mode()` and `sample()` both return the exact unshuffled pixels
        dist = DiagonalGaussianDistribution(torch.cat([mean, torch.zeros_like(mean)], 1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        x = F.pixel_shuffle(z, self.config.factor)
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x).latent_dist.mode()).sample

    def save_pretrained(self, folder) -> None:
        self.save_config(folder)

    @classmethod
    def from_pretrained(cls, folder, **kwargs) -> "PixelShuffleAutoencoder":
        return cls.from_config(cls.load_config(Path(folder)))
