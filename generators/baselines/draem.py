"""DRAEM anomaly simulation (Zavrtanik et al., ICCV 2021, Sec. 3.3), with the parameters of the
authors' code (github.com/VitjanZ/DRAEM, `data_loader.py`: `MVTecDRAEMTrainDataset`; `perlin.py`).

    M   = rotate(perlin(2^a x 2^b lattice), U(-90, 90)) > 0.5,      a, b ~ U{0..5}
    A   = 3 of DRAEM's 10 augmentations (no repeats, in drawn order) applied to an anomaly source
    I_a = (1 - M) * I + (1 - beta) * (M * A) + beta * (M * I),       beta ~ U[0, 0.8)

The ten augmentations are imgaug augmenters in DRAEM; here each is the torchvision v2 function that
does the same, except two that torchvision lacks (brightness on a luma channel, additive
saturation: written here on YCbCr / HSV) and autocontrast with a histogram cutoff (PIL's, which is
the operation imgaug reproduces). Deviations from DRAEM (docs/baselines.md lists them all):
- the anomaly source is a DTD texture in DRAEM; the benchmark ships no DTD, so by default it is a
  normal training image of another category of the dataset (of the same one if there is no other);
  `source_dir` points at DTD's `images/` (or any texture folder) to get DRAEM's source back;
- every pair has an anomaly: DRAEM returns the normal image unchanged for half its samples, and
  the segmenter already gets the normal images; a mask with no pixel is drawn again;
- DRAEM also rotates the normal image by U(-90, 90) for 30% of samples (a training augmentation
  of its own, which leaves black corners); the benchmark keeps the normal image as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import ImageOps
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from benchmark.data.images import load_image
from benchmark.errors import BenchError
from generators.baselines.options import DraemOptions
from generators.baselines.training_free import TrainingFreeGenerator

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


# -- the ten augmentations of the anomaly source ------------------------------------------------
# An image here is a uint8 tensor (3, H, W). Each augmentation draws its parameters from the
# request's numpy Generator (`sample`) and applies them deterministically (`apply`), so the draws
# can be tested apart from the pixels.

@dataclass(frozen=True)
class SourceAugmentation:
    name: str
    sample: Callable[[np.random.Generator], dict]
    apply: Callable[..., torch.Tensor]


def gamma_contrast(image: torch.Tensor, gammas: list[float]) -> torch.Tensor:
    """iaa.GammaContrast((0.5, 2.0), per_channel=True): one gamma per channel."""
    return torch.cat([F.adjust_gamma(image[c:c + 1], g) for c, g in enumerate(gammas)])


def brightness_multiply_add(image: torch.Tensor, mul: float, add: float, add_first: bool) -> torch.Tensor:
    """iaa.MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30)) on the luma Y of YCbCr.

    imgaug picks one of six colour spaces per image (YCrCb, HSV, HLS, Lab, Luv, YUV) and changes its
    brightness channel; this uses YCrCb's for all. By hand: torchvision has no luma/chroma space.
    Adding d to R, G and B moves Y (BT.601) by d and leaves Cb and Cr unchanged."""
    x = image.double()
    luma = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    steps = [lambda y: (y + add).clamp(0, 255), lambda y: (y * mul).clamp(0, 255)]
    new = luma
    for step in (steps if add_first else steps[::-1]):
        new = step(new)
    return (x + (new - luma)).round().clamp(0, 255).to(torch.uint8)


def hue_saturation_add(image: torch.Tensor, hue: int, saturation: int) -> torch.Tensor:
    """iaa.AddToHueAndSaturation((-50, 50), per_channel=True): `hue` and `saturation` are added on
    OpenCV's 8-bit HSV scale (hue projected to int(hue / 255 * 180) of 180 degrees-halves).

    Hue: torchvision's `adjust_hue`. Saturation: by hand, torchvision only scales it. With H and V
    fixed each channel is c = V * (1 - S * k(H)), so c' = V - (V - c) * S' / S; a grey pixel has
    OpenCV's hue 0 (red): R = V, G = B = V * (1 - S')."""
    x = image.double() / 255
    v = x.max(0).values
    s = torch.where(v > 0, (v - x.min(0).values) / v.clamp_min(1e-12), torch.zeros_like(v))
    s_new = (s + saturation / 255).clamp(0, 1)
    coloured = v - (v - x) * (s_new / s.clamp_min(1e-12))
    grey = torch.stack([v, v * (1 - s_new), v * (1 - s_new)])
    x = torch.where(s > 0, coloured, grey)
    out = (x * 255).round().clamp(0, 255).to(torch.uint8)
    return F.adjust_hue(out, int(hue / 255 * 180) / 180)


def solarize(image: torch.Tensor, applied: bool, threshold: float) -> torch.Tensor:
    """iaa.Solarize(0.5, threshold=(32, 128)): for half the images, invert values >= threshold."""
    return F.solarize(image, threshold) if applied else image


def autocontrast(image: torch.Tensor, cutoff: int) -> torch.Tensor:
    """iaa.pillike.Autocontrast(): cut `cutoff`% (0..20) of each end of each channel's histogram,
    stretch the rest. torchvision's `autocontrast` has no cutoff; PIL's is the one imgaug copies."""
    return F.pil_to_tensor(ImageOps.autocontrast(F.to_pil_image(image), cutoff=cutoff))


def rotate_source(image: torch.Tensor, angle: float) -> torch.Tensor:
    """iaa.Affine(rotate=(-45, 45)): bilinear, black outside (imgaug's order=1, cval=0)."""
    return F.rotate(image, angle, interpolation=InterpolationMode.BILINEAR, fill=0)


DRAEM_AUGMENTATIONS: tuple[SourceAugmentation, ...] = (
    SourceAugmentation("gamma_contrast", lambda rng: {"gammas": rng.uniform(0.5, 2.0, 3).tolist()},
                       gamma_contrast),
    SourceAugmentation("brightness_multiply_add",
                       lambda rng: {"mul": float(rng.uniform(0.8, 1.2)), "add": float(rng.uniform(-30, 30)),
                                    "add_first": bool(rng.random() < 0.5)},  # imgaug's random_order
                       brightness_multiply_add),
    SourceAugmentation("sharpness", lambda rng: {"sharpness_factor": float(rng.uniform(0.0, 2.0))},
                       F.adjust_sharpness),  # iaa.pillike.EnhanceSharpness() default factor (0, 2)
    SourceAugmentation("hue_saturation_add",
                       lambda rng: {"hue": int(rng.integers(-50, 51)), "saturation": int(rng.integers(-50, 51))},
                       hue_saturation_add),
    SourceAugmentation("solarize",
                       lambda rng: {"applied": bool(rng.random() < 0.5), "threshold": float(rng.uniform(32, 128))},
                       solarize),
    SourceAugmentation("posterize", lambda rng: {"bits": int(rng.integers(1, 9))},
                       F.posterize),  # iaa.Posterize() default nb_bits U{1..8}, PIL's bit mask
    SourceAugmentation("invert", lambda rng: {}, F.invert),  # iaa.Invert() default p=1
    SourceAugmentation("autocontrast", lambda rng: {"cutoff": int(rng.integers(0, 21))}, autocontrast),
    SourceAugmentation("equalize", lambda rng: {}, F.equalize),  # iaa.pillike.Equalize()
    SourceAugmentation("rotate", lambda rng: {"angle": float(rng.uniform(-45, 45))}, rotate_source),
)
AUGMENTATIONS_BY_NAME = {a.name: a for a in DRAEM_AUGMENTATIONS}


def draw_source_augmentations(rng: np.random.Generator, count: int = 3) -> list[tuple[str, dict]]:
    """DRAEM's `randAugmenter`: `count` different augmentations in random order, with their draws."""
    chosen = rng.choice(len(DRAEM_AUGMENTATIONS), count, replace=False)
    return [(DRAEM_AUGMENTATIONS[int(i)].name, DRAEM_AUGMENTATIONS[int(i)].sample(rng)) for i in chosen]


def apply_source_augmentations(image: torch.Tensor, draws: list[tuple[str, dict]]) -> torch.Tensor:
    for name, params in draws:
        image = AUGMENTATIONS_BY_NAME[name].apply(image, **params)
    return image


# -- the Perlin mask ----------------------------------------------------------------------------

def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise with quintic fade, `res` lattice cells per axis (must divide
    `shape`), scaled by sqrt(2) as DRAEM's `rand_perlin_2d_np`; vectorized numpy."""
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


def draw_perlin_lattice(rng: np.random.Generator, exponents: tuple[int, int]) -> tuple[int, int]:
    """2**U{lo..hi-1} cells per axis, drawn independently (DRAEM: torch.randint(0, 6) twice)."""
    lo, hi = exponents
    return 2 ** int(rng.integers(lo, hi)), 2 ** int(rng.integers(lo, hi))


def rotated_perlin_noise(size: int, opts: DraemOptions, rng: np.random.Generator) -> np.ndarray:
    ry, rx = draw_perlin_lattice(rng, opts.perlin_scale)
    pad = int(np.lcm(ry, rx))
    n = int(np.ceil(size / pad) * pad)  # the lattice must divide the grid; crop back to size
    noise = torch.from_numpy(perlin_noise((n, n), (ry, rx), rng)[:size, :size]).float()[None]
    angle = float(rng.uniform(*opts.perlin_rotation))
    # iaa.Affine(rotate=(-90, 90)) on the noise: bilinear, 0 outside (never above the threshold)
    return F.rotate(noise, angle, interpolation=InterpolationMode.BILINEAR, fill=0.0)[0].numpy()


def perlin_mask(size: int, opts: DraemOptions, rng: np.random.Generator) -> np.ndarray:
    for _ in range(100):
        mask = rotated_perlin_noise(size, opts, rng) > opts.threshold
        if mask.mean() > opts.min_area:
            return mask
    raise RuntimeError(f"Perlin mask covered <= min_area {opts.min_area} 100 times; lower `min_area`")


def draw_beta(rng: np.random.Generator, beta: tuple[float, float]) -> float:
    """DRAEM: `torch.rand(1) * 0.8`, i.e. U[0, 0.8)."""
    return float(beta[0] + rng.random() * (beta[1] - beta[0]))


def blend_anomaly(image: np.ndarray, source: np.ndarray, mask: np.ndarray, beta: float) -> np.ndarray:
    """I_a = (1 - M) I + (1 - beta) M A + beta M I on [0, 1] images (DRAEM Sec. 3.3, `augment_image`),
    rounded to uint8 for the PNG."""
    i, a = image.astype(np.float64) / 255, source.astype(np.float64) / 255
    m = mask[..., None].astype(np.float64)
    out = (1 - m) * i + (1 - beta) * (m * a) + beta * (m * i)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def source_images(source_dir: str) -> list[str]:
    """The anomaly-source images under `source_dir` (any depth), sorted."""
    root = Path(source_dir)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        what = "no images" if root.is_dir() else "no such folder"
        raise BenchError(f"{root}: {what} for the DRAEM anomaly source; give a folder of textures (e.g. DTD's "
                         "images/) with --set generator.options.source_dir=<folder>, or unset it to use the "
                         "other categories' normal images")
    return [str(f) for f in files]


class DraemPerlin(TrainingFreeGenerator):
    name = "draem"
    Options = DraemOptions
    code_version: ClassVar[int] = 2  # 2: DRAEM's augmentation set and ranges, torchvision ops

    @classmethod
    def preflight(cls, options: DraemOptions, image_size: int) -> None:
        if options.source_dir:
            source_images(options.source_dir)

    def setup_split(self, split) -> None:
        super().setup_split(split)
        self.source_files = source_images(self.options.source_dir) if self.options.source_dir else None
        self.normals_by_category = {name: sorted(str(s.image) for s in c.train_good)
                                    for name, c in split.categories.items()}

    def source_candidates(self, category: str) -> list[str]:
        """DTD stands in for 'anything but this product': the other categories' normal images."""
        if self.source_files is not None:
            return self.source_files
        others = [f for name, files in sorted(self.normals_by_category.items()) if name != category for f in files]
        return others or self.normals_by_category[category]

    def synthesize(self, image, rng, request):
        size = image.shape[0]
        mask = perlin_mask(size, self.options, rng)
        candidates = self.source_candidates(request.category)
        source = load_image(candidates[int(rng.integers(len(candidates)))], size)
        draws = draw_source_augmentations(rng, self.options.augmentations_per_source)
        source = apply_source_augmentations(torch.from_numpy(source).permute(2, 0, 1).contiguous(), draws)
        beta = draw_beta(rng, self.options.beta)
        return blend_anomaly(image, source.permute(1, 2, 0).numpy(), mask, beta), mask
