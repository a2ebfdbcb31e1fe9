"""DRAEM-style synthesis (Zavrtanik et al., ICCV 2021): a Perlin-noise mask blended with an
augmented anomaly-source texture.

    M = rotate(perlin(scale)) > 0.5                  (scales 2^[0, 6) per axis)
    I_a = (1 - M) * I + (1 - beta) * (M * A) + beta * (M * I),  beta ~ U[0, 0.8]

DRAEM takes A from DTD, which cannot be downloaded here: `source_dir` points at any folder of
texture images; by default A is the dataset's own normal images (other categories first), augmented
by 3 of DRAEM's 10 operations. Unlike DRAEM, every image gets an anomaly (no 50% normal draw):
normal images are already in the segmenter's training set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from scipy import ndimage

from benchmark.data.images import load_image
from benchmark.errors import BenchError
from generators.base import GeneratorOptions
from generators.baselines.training_free import TrainingFreeGenerator

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


class DraemOptions(GeneratorOptions):
    source_dir: str | None = None  # anomaly-source textures (DTD in the paper)
    perlin_scale: tuple[int, int] = (0, 6)  # exponent range, as DRAEM
    threshold: float = 0.5
    beta: tuple[float, float] = (0.0, 0.8)
    min_area: float = 0.002  # fraction of the image; redraw smaller masks


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise, vectorized; `res` lattice cells per axis must divide `shape`."""
    (h, w), (ry, rx) = shape, res
    angles = rng.uniform(0, 2 * np.pi, (ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], -1)
    yy, xx = np.meshgrid(np.arange(h) * ry / h, np.arange(w) * rx / w, indexing="ij")
    y0, x0 = yy.astype(int), xx.astype(int)
    fy, fx = yy - y0, xx - x0

    def corner(dy, dx):
        g = grads[y0 + dy, x0 + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t):
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    uy, ux = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1 - ux) + corner(1, 1) * ux
    return np.sqrt(2) * (top * (1 - uy) + bottom * uy)


def perlin_mask(size: int, opts: DraemOptions, rng: np.random.Generator) -> np.ndarray:
    lo, hi = opts.perlin_scale
    for _ in range(100):
        ry, rx = 2 ** int(rng.integers(lo, hi)), 2 ** int(rng.integers(lo, hi))
        pad = int(np.lcm(ry, rx))
        n = int(np.ceil(size / pad) * pad)
        noise = perlin_noise((n, n), (ry, rx), rng)[:size, :size]
        noise = ndimage.rotate(noise, float(rng.uniform(-90, 90)), reshape=False, mode="reflect")
        mask = noise > opts.threshold
        if mask.mean() >= opts.min_area:
            return mask
    raise RuntimeError("Perlin mask stayed below min_area 100 times; lower `min_area`")


def augment_source(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Three of DRAEM's ten augmentations, in random order."""
    ops = [
        lambda im: ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.5, 1.5))),
        lambda im: ImageEnhance.Contrast(im).enhance(float(rng.uniform(0.5, 1.5))),
        lambda im: ImageEnhance.Sharpness(im).enhance(float(rng.uniform(0.0, 2.0))),
        lambda im: Image.fromarray(np.clip(255 * (np.asarray(im) / 255) ** rng.uniform(0.5, 2.0), 0, 255).astype(np.uint8)),
        lambda im: _hue_shift(im, rng),
        lambda im: ImageOps.solarize(im, 50),
        lambda im: ImageOps.posterize(im, 4),
        lambda im: ImageOps.invert(im),
        lambda im: ImageOps.autocontrast(im),
        lambda im: ImageOps.equalize(im),
    ]
    im = Image.fromarray(image)
    for i in rng.choice(len(ops), 3, replace=False):
        im = ops[int(i)](im)
    angle = float(rng.uniform(-45, 45))
    im = im.rotate(angle, resample=Image.BILINEAR)
    return np.asarray(im.convert("RGB"))


def _hue_shift(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    hsv = np.asarray(im.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + int(rng.integers(-50, 50))) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


class DraemPerlin(TrainingFreeGenerator):
    name = "draem"
    Options = DraemOptions

    def setup_split(self, split) -> None:
        super().setup_split(split)
        if self.options.source_dir:
            root = Path(self.options.source_dir)
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise BenchError(f"{root}: no images for the DRAEM anomaly source; give a folder of "
                                 "textures (e.g. DTD's images/) with generator.source_dir")
        else:
            files = sorted({str(s.image) for c in split.categories.values() for s in c.train_good})
        self.source_files = [str(f) for f in files]

    def synthesize(self, image, rng):
        size = image.shape[0]
        mask = perlin_mask(size, self.options, rng)
        source = load_image(self.source_files[int(rng.integers(len(self.source_files)))], size)
        source = augment_source(source, rng).astype(np.float32)
        beta = float(rng.uniform(*self.options.beta))
        m = mask[..., None].astype(np.float32)
        img = image.astype(np.float32)
        out = (1 - m) * img + (1 - beta) * m * source + beta * m * img
        return np.clip(out + 0.5, 0, 255).astype(np.uint8), mask
