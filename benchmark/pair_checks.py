"""`bench check-pairs`: are a synthetic set's labels true? The pair checks of a synthetic set.

A pair teaches the segmenter that its mask is defect and everything else normal, so a pixel the
mask calls normal must be normal. Two kinds of generator, two sets of checks; the kind is the
generator's `repaints_image` (generators/base.py).

Mask-kept generators (CutPaste, DRAEM, STAGE, AnomalyDiffusion, BADG, real-only) paint inside a
mask on a normal image and must leave the rest alone, or the pair is mislabelled. With the mask
dilated by `radius` px (a disk; latent-space methods change whole latent cells, 8 px for an f8
autoencoder), per pair against the normal image the manifest names (`source_image`):
- `background_psnr`: PSNR (data range 255) outside the dilated mask; infinite when identical;
- `changed_inside_fraction`: of the pixels whose largest channel change exceeds `threshold`/255,
  the share inside the dilated mask (1.0 when nothing changed).
A pair passes at >= 30 dB and >= 0.9 (the STAGE trust issue's bounds), with a mask that marks a
pixel and an image that differs from its source: a pair with an empty mask, or whose image is its
source unchanged, teaches nothing about defects (both checks above pass it), so each fails with
its own reason.

Whole-image generators (SeaS, DefectDiffu) repaint every pixel and predict the mask, so there is
no source to compare with; over the set (issues 11 and 13):
- `mask_in_range`: the mask is non-empty and covers less than half the image, in >= 90 % of pairs;
- `is_flat`: every channel's pixel standard deviation below `FLAT_STD` grey levels (one colour,
  what a collapsed sampler makes); no image may be flat. Every channel of every normal demo image
  has a std of 17 or more (wood, the flattest), so 3 is far below any real image;
- `is_noise`: the mean absolute difference of horizontal and vertical neighbours (all channels)
  above `NOISE_GRADIENT` grey levels, between pixels or between the means of 8 x 8 blocks (one
  latent cell of an f8 autoencoder); no image may be noise (issue 11: "a random-weight smoke
  backbone must not turn every pair into noise"). Measured on the demo data (every normal and
  defect image at 128 px): pixels 6.1 (pill) to 20.1 (grid), blocks 6.7 to 18.1; uniform random
  pixels 85; smoke pairs of a U-Net that could not denoise: 126 (pixels) and 64-84 (blocks of a
  PCA latent; docs/seas.md). Each bound is twice the demo data's largest.

    bench check-pairs runs/x                 # a run folder or its synthetic/ folder; exit 1 on failure
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RADIUS = 8
CHANGE_THRESHOLD = 16  # of 255
MIN_PSNR, MIN_INSIDE = 30.0, 0.9
MAX_MASK_FRACTION = 0.5  # "smaller than half the image" (issues 11, 13)
MIN_IN_RANGE = 0.9  # "in at least 90% of pairs" (issues 11, 13)
FLAT_STD = 3.0  # grey levels of 255
NOISE_GRADIENT = {1: 40.0, 8: 36.0}  # block size (px) -> grey levels: twice the demo images' largest (20.1, 18.1)


# -- mask-kept generators: the background against the source ------------------------------------
def dilate(mask: np.ndarray, radius: int = RADIUS) -> np.ndarray:
    """Binary dilation of a (H, W) mask by a disk of `radius` px."""
    from scipy import ndimage

    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return ndimage.binary_dilation(mask.astype(bool), structure=x * x + y * y <= radius * radius)


def background_psnr(image: np.ndarray, source: np.ndarray, mask: np.ndarray, radius: int = RADIUS) -> float:
    """PSNR in dB of `image` against `source` (uint8 HxWx3) outside `mask` dilated by `radius`."""
    import torch
    from torchmetrics.functional.image import peak_signal_noise_ratio

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
    empty_mask: bool
    unchanged: bool  # the image equals its source pixel for pixel

    def failures(self, min_psnr: float = MIN_PSNR, min_inside: float = MIN_INSIDE) -> list[str]:
        """Why the pair fails, one reason per failed check; empty when it passes."""
        reasons = ["empty mask"] if self.empty_mask else []
        reasons += ["image identical to its source"] if self.unchanged else []
        if self.background_psnr < min_psnr:
            reasons.append(f"background PSNR {self.background_psnr:.2f} dB < {min_psnr:g}")
        if self.changed_inside < min_inside:
            reasons.append(f"changed inside {self.changed_inside:.4f} < {min_inside:g}")
        return reasons

    def passes(self, min_psnr: float = MIN_PSNR, min_inside: float = MIN_INSIDE) -> bool:
        return not self.failures(min_psnr, min_inside)


def check_pair(image: np.ndarray, source: np.ndarray, mask: np.ndarray, radius: int = RADIUS) -> PairCheck:
    """Every check for one pair; `source` must be the normal image at the pair's resolution."""
    if image.shape != source.shape or image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape}, source {source.shape} and mask {mask.shape} differ in size")
    return PairCheck(background_psnr(image, source, mask, radius), changed_inside_fraction(image, source, mask, radius),
                     empty_mask=not mask.any(), unchanged=bool(np.array_equal(image, source)))


def check_synthetic_set(folder) -> dict[str, PairCheck]:
    """The checks for every pair of a synthetic set on disk, at the pair's resolution (its manifest
    names each pair's source normal image; the written mask is the pair's own, after any
    augmentation by the generator)."""
    from benchmark.data.images import load_image

    out = {}
    for record, image, mask in read_pairs(folder):
        source = load_image(record["source_image"], image.shape[0])  # generators write square images
        out[record["id"]] = check_pair(image, source, mask)
    return out


# -- whole-image generators: the set's masks and images ------------------------------------------
def mask_fraction(mask: np.ndarray) -> float:
    """Share of the image's pixels the (H, W) mask marks."""
    return float(np.asarray(mask, dtype=bool).mean())


def mask_in_range(mask: np.ndarray) -> bool:
    """Non-empty and strictly smaller than half the image."""
    return 0.0 < mask_fraction(mask) < MAX_MASK_FRACTION


def is_flat(image: np.ndarray) -> bool:
    """(H, W, 3) uint8: every channel's pixel std (population) below `FLAT_STD`."""
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
class WholeImageReport:
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
                f"mask non-empty and < half the image (need {100 * MIN_IN_RANGE:.0f} %); {empty} empty, "
                f"{int((f >= MAX_MASK_FRACTION).sum())} >= half; mask fraction median {100 * np.median(f):.1f} % "
                f"(min {100 * f.min():.1f}, max {100 * f.max():.1f}); {len(self.flat)} flat images, "
                f"{len(self.noisy)} noise images; "
                f"{'PASS' if self.passes() else 'FAIL'}")


def check_whole_image_pairs(pairs) -> WholeImageReport:
    """`pairs`: iterable of (id, image uint8 HxWx3, mask bool HxW)."""
    report = WholeImageReport()
    for pair_id, image, mask in pairs:
        report.fractions[pair_id] = mask_fraction(mask)
        if is_flat(image):
            report.flat.append(pair_id)
        if is_noise(image):
            report.noisy.append(pair_id)
    return report


def check_whole_image_set(folder) -> WholeImageReport:
    return check_whole_image_pairs((record["id"], image, mask) for record, image, mask in read_pairs(folder))


# -- a synthetic set on disk and the command -------------------------------------------------------
def read_pairs(folder):
    """(manifest record, image uint8 HxWx3, mask bool HxW) for every pair of a synthetic set."""
    from benchmark.data.images import load_image, read_mask_array

    folder = Path(folder)
    for line in (folder / "manifest.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            yield record, load_image(folder / record["image"]), read_mask_array(folder / record["mask"]) > 0


def synthetic_folder(path) -> Path:
    """A run folder's synthetic/ or a synthetic folder itself; BenchError naming what is missing."""
    from benchmark.errors import BenchError

    path = Path(path)
    for folder in (path / "synthetic", path):
        if (folder / "manifest.jsonl").is_file():
            return folder
    raise BenchError(f"{path}: no manifest.jsonl here nor in {path / 'synthetic'}; give a run folder "
                     "(bench run/generate --output) or its synthetic/ folder")


def generator_repaints_image(folder: Path) -> bool:
    """From the set's meta.json: whether its generator repaints the whole image."""
    from benchmark.errors import BenchError
    from benchmark.registry import GENERATORS

    meta = folder / "meta.json"
    try:
        name = json.loads(meta.read_text())["config"]["name"]
    except (OSError, ValueError, KeyError) as e:
        raise BenchError(f"{meta}: cannot read the generator's name ({e}); pass --kind mask-kept or whole-image") from e
    return GENERATORS.load(name).repaints_image


def add_arguments(parser) -> None:
    parser.add_argument("path", help="a run folder (bench run/generate --output) or its synthetic/ folder")
    parser.add_argument("--kind", default="auto", choices=["auto", "mask-kept", "whole-image"],
                        help="which checks: auto = from the generator named in meta.json (its repaints_image)")
    parser.add_argument("--show", type=int, default=10, help="list at most this many failing pairs")


def run(args) -> int:
    folder = synthetic_folder(args.path)
    if not any(line.strip() for line in (folder / "manifest.jsonl").read_text().splitlines()):
        print(f"{folder}: no synthetic pair to check (a real-only run writes none)")
        return 0
    whole = generator_repaints_image(folder) if args.kind == "auto" else args.kind == "whole-image"
    if whole:
        report = check_whole_image_set(folder)
        print(f"{folder} (whole-image checks): {report.summary()}")
        for pair_id in (report.flat + report.noisy)[: args.show]:
            print(f"  {pair_id}: {'flat' if pair_id in report.flat else 'noise'}")
        return 0 if report.passes() else 1
    checks = check_synthetic_set(folder)
    failed = [k for k, c in checks.items() if not c.passes()]
    print(f"{folder} (mask-kept checks, mask dilated by {RADIUS} px): {len(checks)} pairs, min background PSNR "
          f"{min(c.background_psnr for c in checks.values()):.2f} dB (need {MIN_PSNR:.0f}), min changed-inside "
          f"fraction {min(c.changed_inside for c in checks.values()):.4f} (need {MIN_INSIDE}); "
          f"{sum(c.empty_mask for c in checks.values())} empty masks, "
          f"{sum(c.unchanged for c in checks.values())} images identical to their source; "
          f"{len(failed)} fail; {'FAIL' if failed else 'PASS'}")
    for k in failed[: args.show]:
        print(f"  {k}: {'; '.join(checks[k].failures())}")
    return 1 if failed else 0
