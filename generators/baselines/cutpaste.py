"""CutPaste-scar (Li et al., CVPR 2021): a thin rectangle cut from the image, colour-jittered,
rotated, and pasted elsewhere in the same image. The pasted pixels are the mask.

Scar sizes are the paper's (width 2-16 px, height 10-25 px at 256 px), scaled to the image size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance
from pydantic import Field

from generators.base import GeneratorOptions
from generators.baselines.training_free import TrainingFreeGenerator


class CutPasteOptions(GeneratorOptions):
    scar_width: tuple[float, float] = (2, 16)  # px at 256 px
    scar_height: tuple[float, float] = (10, 25)
    rotation: float = Field(45.0, description="max |angle| in degrees")
    jitter: float = 0.1  # brightness/contrast/saturation factor range, as CutPaste
    scars: tuple[int, int] = (1, 3)  # scars per image


def color_jitter(patch: Image.Image, amount: float, rng: np.random.Generator) -> Image.Image:
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        patch = enhance(patch).enhance(float(rng.uniform(1 - amount, 1 + amount)))
    return patch


def paste_scar(image: np.ndarray, opts: CutPasteOptions, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    scale = min(h, w) / 256
    sw = max(1, int(round(rng.uniform(*opts.scar_width) * scale)))
    sh = max(2, int(round(rng.uniform(*opts.scar_height) * scale)))
    y, x = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
    patch = color_jitter(Image.fromarray(image[y:y + sh, x:x + sw]), opts.jitter, rng).convert("RGBA")
    patch = patch.rotate(float(rng.uniform(-opts.rotation, opts.rotation)), expand=True,
                         resample=Image.BILINEAR)
    alpha = np.asarray(patch)[..., 3] > 127
    ph, pw = alpha.shape
    ty, tx = int(rng.integers(0, max(1, h - ph + 1))), int(rng.integers(0, max(1, w - pw + 1)))
    ph, pw = min(ph, h - ty), min(pw, w - tx)
    alpha = alpha[:ph, :pw]
    out = image.copy()
    region = out[ty:ty + ph, tx:tx + pw]
    region[alpha] = np.asarray(patch)[:ph, :pw, :3][alpha]
    mask = np.zeros((h, w), bool)
    mask[ty:ty + ph, tx:tx + pw] = alpha
    return out, mask


class CutPasteScar(TrainingFreeGenerator):
    name = "cutpaste"
    Options = CutPasteOptions

    def synthesize(self, image, rng):
        mask = np.zeros(image.shape[:2], bool)
        for _ in range(int(rng.integers(self.options.scars[0], self.options.scars[1] + 1))):
            image, m = paste_scar(image, self.options, rng)
            mask |= m
        return image, mask
