"""Forward hooks that keep the outputs of named modules: U-Net decoder features (SeaS's coarse mask
features come from the U-Net's "up" layers, appendix "coarse feature extraction") and VAE decoder
features (SeaS's refined mask prediction, appendix Tab. 15: VAE decoder beats VAE encoder features).

    with FeatureTaps(unet, unet_decoder_blocks(unet)) as taps:
        eps = unet(x_t, t, encoder_hidden_states=context).sample
    features = taps.features  # name -> (B,C,h,w), the last forward's output of each module

Features keep their gradients unless `detach=True` (a mask head trained through them needs them).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def unet_decoder_blocks(unet: nn.Module) -> list[str]:
    """Names of the U-Net's decoder (up) blocks, coarse to fine."""
    return [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]


def vae_decoder_blocks(vae: nn.Module) -> list[str]:
    """Names of an AutoencoderKL's decoder up blocks, coarse to fine."""
    return [f"decoder.up_blocks.{i}" for i in range(len(vae.decoder.up_blocks))]


class FeatureTaps:
    def __init__(self, root: nn.Module, names: Sequence[str], detach: bool = False):
        modules = dict(root.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"no module named {', '.join(missing)} in {type(root).__name__}")
        self.names, self.detach = list(names), detach
        self.features: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._keeper(n)) for n in self.names]

    def _keeper(self, name: str):
        def keep(module, args, output):
            out = output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", output)
            self.features[name] = out.detach() if self.detach else out
        return keep

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
