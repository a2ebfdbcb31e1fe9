"""Is a synthetic pair a real pair? Two checks of a mask-guided generator's output against its source.

A generator that paints a defect inside a given mask must leave the rest of the normal image alone,
or the pair is mislabelled (changed pixels the mask calls normal). With the mask dilated by
`radius` px (a disk; latent-space methods change whole latent cells, 8 px for an f8 autoencoder):
- `background_psnr`: PSNR (data range 255) of the image against its source outside the dilated
  mask; infinite when those pixels are identical.
- `changed_inside_fraction`: of the pixels whose largest channel change exceeds `threshold`/255,
  the fraction inside the dilated mask (1.0 when nothing changed).
The smoke STAGE pairs must reach >= 30 dB and >= 0.9 (tests/test_stage_pairs.py).

A generator that makes the whole image and its mask (DefectDiffu) has no source image to compare
with; `check_generated_set` counts instead the pairs whose mask is non-empty and covers less than
half the image, and the flat images (every channel's spread below `FLAT_STD` grey levels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torchmetrics.functional.image import peak_signal_noise_ratio

RADIUS = 8
CHANGE_THRESHOLD = 16  # of 255


def dilate(mask: np.ndarray, radius: int = RADIUS) -> np.ndarray:
    """Binary dilation of a (H, W) mask by a disk of `radius` px."""
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return ndimage.binary_dilation(mask.astype(bool), structure=x * x + y * y <= radius * radius)


def background_psnr(image: np.ndarray, source: np.ndarray, mask: np.ndarray, radius: int = RADIUS) -> float:
    """PSNR in dB of `image` against `source` (uint8 HxWx3) outside `mask` dilated by `radius`."""
    outside = ~dilate(mask, radius)
    if not outside.any():
        return float("inf")
    a = torch.from_numpy(image[outside].astype(np.float64))
    b = torch.from_numpy(source[outside].astype(np.float64))
    if torch.equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(a, b, data_range=255.0))


def changed_inside_fraction(image: np.ndarray, source: np.ndarray, mask: np.ndarray, radius: int = RADIUS,
                            threshold: int = CHANGE_THRESHOLD) -> float:
    """Fraction of the pixels changed by more than `threshold`/255 (any channel) that lie inside
    `mask` dilated by `radius`; 1.0 when no pixel changed that much."""
    changed = (np.abs(image.astype(np.int16) - source.astype(np.int16)) > threshold).any(-1)
    n = int(changed.sum())
    return 1.0 if n == 0 else float((changed & dilate(mask, radius)).sum() / n)


@dataclass(frozen=True)
class PairCheck:
    background_psnr: float
    changed_inside: float

    def passes(self, min_psnr: float = 30.0, min_inside: float = 0.9) -> bool:
        return self.background_psnr >= min_psnr and self.changed_inside >= min_inside


def check_pair(image: np.ndarray, source: np.ndarray, mask: np.ndarray, radius: int = RADIUS) -> PairCheck:
    """Both checks for one pair; `source` must be the normal image at the pair's resolution."""
    if image.shape != source.shape or image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape}, source {source.shape} and mask {mask.shape} differ in size")
    return PairCheck(background_psnr(image, source, mask, radius), changed_inside_fraction(image, source, mask, radius))


def check_synthetic_set(folder) -> dict[str, PairCheck]:
    """Both checks for every pair of a synthetic set on disk, at the pair's resolution (its manifest
    names each pair's source normal image; the written mask is the pair's own, after any
    augmentation by the generator)."""
    import json
    from pathlib import Path

    from benchmark.data.images import load_image, read_mask_array

    folder = Path(folder)
    out = {}
    for line in (folder / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        image = load_image(folder / record["image"])
        mask = read_mask_array(folder / record["mask"]) > 0
        source = load_image(record["source_image"], image.shape[0])  # generators write square images
        out[record["id"]] = check_pair(image, source, mask)
    return out


FLAT_STD = 2.0  # grey levels: an image whose every channel varies less than this is flat
MAX_MASK_FRACTION = 0.5


@dataclass(frozen=True)
class GeneratedSetCheck:
    pairs: int
    masks_in_range: int  # non-empty and < MAX_MASK_FRACTION of the image
    flat_images: int

    def passes(self, min_in_range: float = 0.9) -> bool:
        """The smoke criteria of a whole-image generator: >= 90% masks in range, no flat image."""
        return self.pairs > 0 and self.masks_in_range >= min_in_range * self.pairs and self.flat_images == 0


def mask_in_range(mask: np.ndarray, max_fraction: float = MAX_MASK_FRACTION) -> bool:
    """Non-empty and covering less than `max_fraction` of the image."""
    return bool(mask.any()) and float(mask.mean()) < max_fraction


def is_flat(image: np.ndarray, min_std: float = FLAT_STD) -> bool:
    """Every channel's standard deviation over the image below `min_std` grey levels."""
    return bool((image.reshape(-1, image.shape[-1]).astype(np.float64).std(0) < min_std).all())


def check_generated_set(folder) -> GeneratedSetCheck:
    """Mask range and flatness over every pair of a synthetic set on disk (its manifest)."""
    import json
    from pathlib import Path

    from benchmark.data.images import load_image, read_mask_array

    folder = Path(folder)
    records = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    in_range = sum(mask_in_range(read_mask_array(folder / r["mask"]) > 0) for r in records)
    flat = sum(is_flat(load_image(folder / r["image"])) for r in records)
    return GeneratedSetCheck(len(records), in_range, flat)


if __name__ == "__main__":  # python -m generators.diffusion.pair_checks <run>/synthetic [--generated]
    import sys

    if "--generated" in sys.argv:
        result = check_generated_set(sys.argv[1])
        print(f"{result.pairs} pairs: {result.masks_in_range} masks non-empty and < half the image, "
              f"{result.flat_images} flat images; {'pass' if result.passes() else 'FAIL'}")
        sys.exit(0 if result.passes() else 1)
    checks = check_synthetic_set(sys.argv[1])
    worst_psnr = min(c.background_psnr for c in checks.values())
    worst_inside = min(c.changed_inside for c in checks.values())
    failed = [k for k, c in checks.items() if not c.passes()]
    print(f"{len(checks)} pairs: min background PSNR {worst_psnr:.2f} dB, min changed-inside fraction "
          f"{worst_inside:.4f}; {len(failed)} fail{': ' + ', '.join(failed) if failed else ''}")
    sys.exit(1 if failed else 0)
