"""CutPaste (Li et al., CVPR 2021): a patch cut from the normal image, colour-jittered
and pasted elsewhere in the same image; the pasted pixels are the mask.

- `scar` (the default, CutPaste-Scar): a thin rectangle, width U(2, 16) x height U(10, 25) px at
  256 px (scaled to the image size), rotated by U(-45, 45) degrees (nearest neighbour, the patch's
  own footprint is the mask);
- `normal` (CutPaste): a rectangle of U(0.02, 0.15) of the image area with aspect ratio
  log-uniform in [0.3, 1/0.3], not rotated;
- `union`: one of the two with probability 1/2.

The patch is jittered by torchvision's `ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1,
hue=0.1)`. The authors published no code: sizes and strengths are those of the public
re-implementations (Runinho/pytorch-cutpaste, LilitYolyan/CutPaste); docs/baselines.md has the sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from generators.baselines.options import CutPasteOptions
from generators.baselines.training_free import TrainingFreeGenerator


@dataclass(frozen=True)
class PatchDraw:
    """Everything random about one pasted patch."""
    width: int  # before rotation
    height: int
    angle: float  # degrees, counter-clockwise (torchvision)
    source_yx: tuple[int, int]
    jitter_seed: int
    target_uv: tuple[float, float]  # where the rotated patch goes, as fractions of the free room


def draw_scar(h: int, w: int, opts: CutPasteOptions, rng: np.random.Generator) -> PatchDraw:
    scale = min(h, w) / opts.reference_size
    width = min(w, max(1, int(round(rng.uniform(*opts.scar_width) * scale))))
    height = min(h, max(1, int(round(rng.uniform(*opts.scar_height) * scale))))
    return _draw_rest(h, w, width, height, float(rng.uniform(*opts.rotation)), rng)


def draw_normal_patch(h: int, w: int, opts: CutPasteOptions, rng: np.random.Generator) -> PatchDraw:
    area = rng.uniform(*opts.area_ratio) * h * w
    aspect = float(np.exp(rng.uniform(np.log(opts.aspect_ratio), -np.log(opts.aspect_ratio))))
    width = min(w, max(1, int(round(np.sqrt(area * aspect)))))
    height = min(h, max(1, int(round(np.sqrt(area / aspect)))))
    return _draw_rest(h, w, width, height, 0.0, rng)


def _draw_rest(h, w, width, height, angle, rng) -> PatchDraw:
    source = (int(rng.integers(0, h - height + 1)), int(rng.integers(0, w - width + 1)))
    return PatchDraw(width, height, angle, source, int(rng.integers(2**62)), (float(rng.random()), float(rng.random())))


def jitter_patch(patch: torch.Tensor, strength: float, seed: int) -> torch.Tensor:
    """torchvision's ColorJitter draws from torch's global generator; a forked, seeded generator
    makes it a function of `seed` and leaves the caller's random state as it was. It runs on floats:
    on uint8 torchvision truncates each intermediate grey level, which darkens grey by ~1% per step."""
    jitter = v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength, hue=strength)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = jitter(patch.float() / 255)
    return (out * 255).round().clamp(0, 255).to(torch.uint8)


def paste_patch(image: torch.Tensor, draw: PatchDraw, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut, jitter, rotate (nearest neighbour, growing the canvas) and paste; returns the new uint8
    (3, H, W) image and the bool mask of the pasted pixels."""
    (y, x), h, w = draw.source_yx, *image.shape[-2:]
    patch = jitter_patch(image[:, y:y + draw.height, x:x + draw.width], strength, draw.jitter_seed)
    rgba = torch.cat([patch, torch.full_like(patch[:1], 255)])
    if draw.angle:
        rgba = F.rotate(rgba, draw.angle, interpolation=InterpolationMode.NEAREST, expand=True, fill=0)
    ph, pw = min(rgba.shape[1], h), min(rgba.shape[2], w)  # a rotated patch may outgrow a tiny image
    rgba = rgba[:, :ph, :pw]
    ty, tx = int(draw.target_uv[0] * (h - ph + 1)), int(draw.target_uv[1] * (w - pw + 1))
    footprint = rgba[3] > 0
    out = image.clone()
    region = out[:, ty:ty + ph, tx:tx + pw]
    region[:, footprint] = rgba[:3, footprint]
    mask = torch.zeros((h, w), dtype=torch.bool)
    mask[ty:ty + ph, tx:tx + pw] = footprint
    return out, mask


class CutPasteScar(TrainingFreeGenerator):
    name = "cutpaste"
    Options = CutPasteOptions
    code_version: ClassVar[int] = 2  # 2: torchvision ColorJitter, one patch, nearest rotation, variants

    def draw_patch(self, h: int, w: int, rng: np.random.Generator) -> PatchDraw:
        variant = self.options.variant
        if variant == "union":
            variant = "scar" if rng.random() < 0.5 else "normal"
        return (draw_scar if variant == "scar" else draw_normal_patch)(h, w, self.options, rng)

    def synthesize(self, image, rng, request):
        out = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        mask = torch.zeros(out.shape[-2:], dtype=torch.bool)
        lo, hi = self.options.patches
        for _ in range(int(rng.integers(lo, hi + 1))):
            out, pasted = paste_patch(out, self.draw_patch(*out.shape[-2:], rng), self.options.jitter)
            mask |= pasted
        return out.permute(1, 2, 0).numpy(), mask.numpy()
