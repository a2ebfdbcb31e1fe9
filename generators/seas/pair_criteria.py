"""Issue 11's checks on SeaS pairs, which regenerate the whole image and carry a predicted mask.

The background checks of `generators.diffusion.pair_checks` do not apply (SeaS repaints every
pixel). Instead, over a synthetic set:
- `mask_in_range`: the predicted mask is non-empty and covers less than half the image; at least
  `MIN_IN_RANGE` (90 %) of the pairs must pass;
- `is_flat`: an image whose every channel has a pixel standard deviation below `FLAT_STD` grey
  levels is flat (one colour, what a collapsed sampler makes); no image may be flat. Every
  channel of every normal demo image has a std of 17 or more (wood, the flattest), so 3 is far
  below any real image and above a flat one's rounding noise;
- `is_noise`: an image whose mean absolute difference between neighbours (horizontal and vertical
  pairs, all channels, averaged) exceeds `NOISE_GRADIENT` grey levels, between pixels or between
  the means of 8 x 8 blocks (one latent cell of an f8 autoencoder), is noise; no image may be
  noise (issue 11: "a random-weight smoke backbone must not turn every pair into noise"). Measured
  on the demo data (every normal and defect image at 128 px): pixels 6.1 (pill) to 20.1 (grid),
  blocks 6.7 to 18.1; uniform random pixels: 85 (pixels); smoke pairs of a U-Net that could not
  denoise: 126 (pixels, per-pixel noise) and 64-84 (blocks, block-wise noise of a PCA latent;
  docs/seas.md). Each bound is twice the demo data's largest.

    python -m generators.seas.pair_criteria <run>/synthetic
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAX_MASK_FRACTION = 0.5  # "smaller than half the image" (issue 11)
MIN_IN_RANGE = 0.9  # "in at least 90% of pairs" (issue 11)
FLAT_STD = 3.0  # grey levels of 255
NOISE_GRADIENT = {1: 40.0, 8: 36.0}  # block size (px) -> grey levels: twice the demo images' largest (20.1, 18.1)


def mask_fraction(mask: np.ndarray) -> float:
    """Share of the image's pixels the (H, W) mask marks."""
    return float(np.asarray(mask, dtype=bool).mean())


def mask_in_range(mask: np.ndarray) -> bool:
    """Non-empty and strictly smaller than half the image."""
    return 0.0 < mask_fraction(mask) < MAX_MASK_FRACTION


def is_flat(image: np.ndarray) -> bool:
    """(H, W, 3) uint8: every channel's pixel std below `FLAT_STD`."""
    stds = np.asarray(image, dtype=np.float64).reshape(-1, image.shape[-1]).std(axis=0)
    return bool((stds < FLAT_STD).all())


def neighbour_difference(image: np.ndarray, block: int = 1) -> float:
    """Mean |difference| of horizontally and vertically neighbouring pixels (H, W, C), the two
    directions weighted equally; with `block` > 1, of the means of block x block tiles."""
    x = np.asarray(image, dtype=np.float64)
    if block > 1:
        h, w, c = x.shape
        x = x[: h - h % block, : w - w % block].reshape(h // block, block, w // block, block, c).mean((1, 3))
    if min(x.shape[:2]) < 2:  # fewer than two tiles a side: no neighbours to compare
        return 0.0
    return float((np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()) / 2)


def is_noise(image: np.ndarray) -> bool:
    return any(neighbour_difference(image, block) > bound for block, bound in NOISE_GRADIENT.items())


@dataclass
class PredictedPairReport:
    fractions: dict[str, float] = field(default_factory=dict)  # pair id -> mask fraction
    flat: list[str] = field(default_factory=list)  # ids of flat images
    noisy: list[str] = field(default_factory=list)  # ids of noise images

    @property
    def in_range(self) -> list[str]:
        return [k for k, f in self.fractions.items() if 0.0 < f < MAX_MASK_FRACTION]

    @property
    def share_in_range(self) -> float:
        return len(self.in_range) / len(self.fractions) if self.fractions else 0.0

    def passes(self) -> bool:
        return bool(self.fractions) and self.share_in_range >= MIN_IN_RANGE and not self.flat and not self.noisy

    def summary(self) -> str:
        f = np.array(list(self.fractions.values())) if self.fractions else np.zeros(1)
        empty = int((f == 0).sum())
        return (f"{len(self.fractions)} pairs: {len(self.in_range)} ({100 * self.share_in_range:.1f} %) with a "
                f"predicted mask non-empty and < half the image (need {100 * MIN_IN_RANGE:.0f} %); {empty} empty, "
                f"{int((f >= MAX_MASK_FRACTION).sum())} >= half; mask fraction median {100 * np.median(f):.1f} % "
                f"(min {100 * f.min():.1f}, max {100 * f.max():.1f}); {len(self.flat)} flat images, "
                f"{len(self.noisy)} noise images; "
                f"{'PASS' if self.passes() else 'FAIL'}")


def check_predicted_pairs(pairs) -> PredictedPairReport:
    """`pairs`: iterable of (id, image uint8 HxWx3, mask bool HxW)."""
    report = PredictedPairReport()
    for pair_id, image, mask in pairs:
        report.fractions[pair_id] = mask_fraction(mask)
        if is_flat(image):
            report.flat.append(pair_id)
        if is_noise(image):
            report.noisy.append(pair_id)
    return report


def read_synthetic_set(folder):
    """(id, image, mask) for every pair of a synthetic set on disk (its manifest.jsonl)."""
    from benchmark.data.images import load_image, read_mask_array

    folder = Path(folder)
    for line in (folder / "manifest.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            yield record["id"], load_image(folder / record["image"]), read_mask_array(folder / record["mask"]) > 0


if __name__ == "__main__":
    import sys

    result = check_predicted_pairs(read_synthetic_set(sys.argv[1]))
    print(result.summary())
    sys.exit(0 if result.passes() else 1)
