"""SeaS' Refined Mask Prediction (RMP) branch, the extended noise schedule of its inference, and
the mask binarization: the math, no training loop.

- `CoarseFeatureExtraction` (A.5, Table 14, Fig. 10): U-Net decoder outputs F_2 ("up-2", 32x32x1280
  at 512 px) and F_3 ("up-3", 64x64x640) -> conv blocks -> concatenated coarse feature F_hat
  (64x64x192); the coarse mask M_hat is predicted from it.
- `MaskRefinementModule` (A.5, Table 17 case c, Fig. 12/13): chained conv blocks, each two 1x1 and
  one 3x3 convolution, "one-level-by-one-level residual learning", fused with a VAE-decoder
  feature (Table 15: decoder, not encoder); `RefinedMaskPrediction` chains one MRM per VAE level
  up to the image size and predicts the refined 2-channel mask M'_hat.
- `extended_alphas_cumprod`, `noise_to_extended_timestep`: a normal image forward-diffused to
  t = 1500 > T = 1000 (A.3 "More inference details").
- `binarize_mask`: channel 2 (anomaly) of M'_hat, averaged over the last sampling steps, > tau = 0.2
  (Table 18).
- `ModuleOutputs`, `unet_decoder_features`, `vae_decoder_features`: forward hooks that read F_y and
  the VAE-decoder features from the diffusers models without forking them.
Shapes in comments are SD v1.4 at 512 px; every channel count is a constructor argument so tests
and the smoke backbone use small ones.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from generators.seas.options import MASK_THRESHOLD, RMP_FEATURES, T_EXTENDED


# -- extended noise schedule (A.3) ------------------------------------------------------------------
def extended_alphas_cumprod(beta_start: float, beta_end: float, steps: int = T_EXTENDED,
                            schedule: str = "scaled_linear") -> torch.Tensor:
    """abar_1 .. abar_steps (0-based index t - 1) of the backbone's schedule re-spread over `steps`:
    the same first and last beta, `steps` betas linear in sqrt(beta) ("scaled_linear", SD / LDM) or
    in beta ("linear"). So abar_1500 < abar_1000: more noise than the trained T reaches, while
    every beta stays inside the trained range. The paper gives only t = 1500; the authors' code
    builds exactly this schedule and reads its last abar (float64 here)."""
    if schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    elif schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    else:
        raise ValueError(f"cannot extend a '{schedule}' beta schedule (known: scaled_linear, linear)")
    return torch.cumprod(1 - betas, 0)


def extended_schedule(backbone_config: dict, steps: int = T_EXTENDED) -> torch.Tensor:
    """`extended_alphas_cumprod` on a backbone's scheduler config (SD v1: 0.00085 .. 0.012)."""
    return extended_alphas_cumprod(backbone_config["beta_start"], backbone_config["beta_end"], steps,
                                   backbone_config.get("beta_schedule", "scaled_linear"))


def noise_to_extended_timestep(x0: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor,
                               t: int = T_EXTENDED) -> torch.Tensor:
    """q(x_t | x_0) at the paper's t (counted from 1) on the extended schedule: the initial latent
    sqrt(abar_t) x0 + sqrt(1 - abar_t) eps of a normal image."""
    a = abar[t - 1].item()
    return math.sqrt(a) * x0 + math.sqrt(1 - a) * noise


# -- mask binarization (Table 18) -------------------------------------------------------------------
def anomaly_probability(logits: torch.Tensor) -> torch.Tensor:
    """(B,2,H,W) RMP logits -> (B,1,H,W) probability of channel 2 (anomaly)."""
    return logits.softmax(1)[:, 1:2]


def binarize_mask(probabilities: Sequence[torch.Tensor], threshold: float = MASK_THRESHOLD) -> torch.Tensor:
    """Mean of the anomaly probabilities of the last sampling steps, > tau -> {0, 1} float mask."""
    return (torch.stack(list(probabilities)).mean(0) > threshold).float()


# -- Refined Mask Prediction (A.5) ------------------------------------------------------------------
def conv_bn_relu(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU())


class ConvBlock(nn.Sequential):
    """Table 17 case b: two 1x1 convolutions around one 3x3 convolution (each with BN and ReLU)."""

    def __init__(self, channels: int):
        super().__init__(conv_bn_relu(channels, channels, 1), conv_bn_relu(channels, channels, 3),
                         conv_bn_relu(channels, channels, 1))


class MaskRefinementModule(nn.Module):
    """One MRM level (Table 17 case c). The coarse feature x is upsampled to the VAE feature v's
    grid; chained conv blocks refine it level by level, each adding its residual to the previous
    level's output (r_k = r_{k-1} + B_k(r_{k-1}), r_0 = x); the refined feature gates the projected
    VAE feature, and x is added back:  out = P(v) * r_K + x."""

    def __init__(self, channels: int, vae_channels: int, blocks: int = 2):
        super().__init__()
        self.project = conv_bn_relu(vae_channels, channels, 1)
        self.blocks = nn.ModuleList(ConvBlock(channels) for _ in range(blocks))

    def forward(self, coarse: torch.Tensor, vae_feature: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(coarse, size=vae_feature.shape[-2:], mode="bilinear", align_corners=False)
        r = x
        for block in self.blocks:
            r = r + block(r)
        return self.project(vae_feature) * r + x


class CoarseFeatureExtraction(nn.Module):
    """F_2 (32x32x1280) and F_3 (64x64x640) -> 1x1 convs to 128 and 64 channels -> F_2 upsampled
    to F_3's grid -> concatenated F_hat (64x64x192), then `attention_layers` self-attention
    transformer layers over F_hat (the authors' code uses 4 with 8 heads; the paper says only
    "convolution blocks and concatenation"; 0 turns them off)."""

    def __init__(self, unet_channels: Sequence[int] = (1280, 640), channels: Sequence[int] = (128, 64),
                 attention_layers: int = 4, heads: int = 8, norm_groups: int = 32):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 1, bias=False) for c_in, c_out in zip(unet_channels, channels))
        self.out_channels = sum(channels)
        self.attention = None
        if attention_layers:
            from diffusers import Transformer2DModel

            self.attention = Transformer2DModel(num_attention_heads=heads, attention_head_dim=self.out_channels // heads,
                                                in_channels=self.out_channels, num_layers=attention_layers,
                                                norm_num_groups=norm_groups)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[-1].shape[-2:]  # the finest U-Net feature (F_3) sets the coarse grid
        parts = [F.interpolate(conv(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size
                 else conv(f) for conv, f in zip(self.convs, features)]
        x = torch.cat(parts, 1)
        return x if self.attention is None else self.attention(x, return_dict=False)[0]


class RefinedMaskPrediction(nn.Module):
    """The RMP branch: coarse mask from F_hat, refined mask after one MRM per VAE-decoder feature
    (SD: 512x128x128, 512x256x256, 256x512x512, coarse to fine). Both masks come from one head
    (BN, ReLU, 3x3 conv to 2 channels, as the authors' code shares it) and are returned as logits:
    (coarse (B,2,h,w), refined (B,2,H,W)). Normal images take the same path (Eq. 10 terms 2, 4)."""

    def __init__(self, unet_channels: Sequence[int] = (1280, 640), coarse_channels: Sequence[int] = (128, 64),
                 vae_channels: Sequence[int] = (512, 512, 256), attention_layers: int = 4, heads: int = 8,
                 norm_groups: int = 32, blocks: int = 2):
        super().__init__()
        self.coarse = CoarseFeatureExtraction(unet_channels, coarse_channels, attention_layers, heads, norm_groups)
        c = self.coarse.out_channels
        self.refine = nn.ModuleList(MaskRefinementModule(c, v, blocks) for v in vae_channels)
        self.head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 2, 3, padding=1))

    def forward(self, unet_features: Sequence[torch.Tensor], vae_features: Sequence[torch.Tensor]):
        x = self.coarse(unet_features)
        coarse = self.head(x)
        for mrm, v in zip(self.refine, vae_features):
            x = mrm(x, v)
        return coarse, self.head(x)


# -- reading features from the diffusers models -----------------------------------------------------
class ModuleOutputs:
    """Forward hooks that keep the outputs of some modules (a tuple output keeps its first item)."""

    def __init__(self, modules: Sequence[nn.Module]):
        self.outputs: list[torch.Tensor | None] = [None] * len(modules)
        self._handles = [m.register_forward_hook(self._keeper(i)) for i, m in enumerate(modules)]

    def _keeper(self, i: int):
        def keep(module, args, output):
            self.outputs[i] = output[0] if isinstance(output, tuple) else output
        return keep

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@contextmanager
def unet_decoder_features(unet: nn.Module, features: Sequence[int] = RMP_FEATURES):
    """Inside the block, every U-Net call leaves F_y (outputs of up_blocks[y - 1]) in `.outputs`."""
    hooks = ModuleOutputs([unet.up_blocks[y - 1] for y in features])
    try:
        yield hooks
    finally:
        hooks.remove()


@contextmanager
def vae_decoder_features(vae: nn.Module, blocks: Sequence[int] = (0, 1, 2)):
    """Inside the block, every AutoencoderKL decode leaves the outputs of decoder.up_blocks[i] in
    `.outputs` (SD: 512@128, 512@256, 256@512 px; the authors' choice, the paper says only "VAE
    decoder features")."""
    hooks = ModuleOutputs([vae.decoder.up_blocks[i] for i in blocks])
    try:
        yield hooks
    finally:
        hooks.remove()
