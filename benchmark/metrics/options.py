"""`MetricOptions`: every choice on which the papers' metric definitions differ, named and recorded.

The runner stores `MetricOptions.to_json()` next to the numbers, so a table always says which image
score rule, IoU threshold, FPR limit and evaluation mode produced it (NOTES.md B.7).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Union

from benchmark.errors import BenchError

ImageScoreRule = Literal["max", "mean", "pooled-max"]
Mode = Literal["auto", "exact", "binned"]
IMAGE_SCORE_RULES = ("max", "mean", "pooled-max")
MODES = ("auto", "exact", "binned")
MIN_BINS = 1000
# Above this many pixels `mode="auto"` evaluates on the histogram grid: exact state is 8 bytes per
# pixel (5e7 pixels = 400 MB, about 50 MVTec categories' worth of 256x256 test images).
EXACT_MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class MetricOptions:
    """How the engine turns anomaly maps into numbers.

    image_score: one score per image = `max` of the map (default; SeaS/LFD), `mean`, or
        `pooled-max` = max of the `pool_kernel` x `pool_kernel` average-pooled map (AnomalyDiffusion
        and DRAEM: 21, zero padding counted; ADer uses 16).
    iou_threshold: a pixel is predicted anomalous iff its score >= the threshold. A number in
        [0, 1] (0.5 = the argmax of a 2-class softmax, up to exact ties), or `"f1"` = the
        threshold where pixel F1 is maximal.
    mode: `exact` (every distinct score is a threshold; sklearn / MVTec values), `binned`
        (`bins` uniform bins over [0, 1]; memory independent of the pixel count), or `auto`
        (exact up to `exact_max_pixels` pixels in total, binned above).
    max_fpr: PRO integration limit; the area is divided by it (MVTec AD's 0.3).
    """

    image_score: ImageScoreRule = "max"
    pool_kernel: int = 21
    iou_threshold: Union[float, Literal["f1"]] = 0.5
    mode: Mode = "auto"
    bins: int = MIN_BINS
    max_fpr: float = 0.3
    exact_max_pixels: int = EXACT_MAX_PIXELS

    def __post_init__(self) -> None:
        problems = []
        if self.image_score not in IMAGE_SCORE_RULES:
            problems.append(f"image_score must be one of {IMAGE_SCORE_RULES}, got {self.image_score!r}")
        if not _is_int(self.pool_kernel) or self.pool_kernel < 1:
            problems.append(f"pool_kernel must be a positive integer, got {self.pool_kernel!r}")
        thr = self.iou_threshold
        if thr != "f1" and not (_is_number(thr) and 0.0 <= float(thr) <= 1.0):
            problems.append(f"iou_threshold must be a number in [0, 1] or 'f1', got {thr!r}")
        if self.mode not in MODES:
            problems.append(f"mode must be one of {MODES}, got {self.mode!r}")
        if not _is_int(self.bins) or self.bins < MIN_BINS:
            problems.append(f"bins must be an integer >= {MIN_BINS}, got {self.bins!r}")
        if not (_is_number(self.max_fpr) and 0.0 < float(self.max_fpr) <= 1.0):
            problems.append(f"max_fpr must be in (0, 1], got {self.max_fpr!r}")
        if not _is_int(self.exact_max_pixels) or self.exact_max_pixels < 0:
            problems.append(f"exact_max_pixels must be a non-negative integer, got {self.exact_max_pixels!r}")
        if problems:
            raise BenchError("invalid metric options: " + "; ".join(problems))
        if thr != "f1":
            object.__setattr__(self, "iou_threshold", float(thr))
        object.__setattr__(self, "max_fpr", float(self.max_fpr))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "MetricOptions":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise BenchError(f"unknown metric option(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)

    @staticmethod
    def parse_image_score(text: str) -> dict:
        """`"max"`, `"mean"`, `"pooled-max"` or `"pooled-max:K"` -> keyword arguments."""
        rule, _, kernel = text.partition(":")
        if rule not in IMAGE_SCORE_RULES or (kernel and rule != "pooled-max"):
            raise BenchError(f"image score rule {text!r}: expected max, mean, pooled-max or pooled-max:K")
        if not kernel:
            return {"image_score": rule}
        if not kernel.isdigit() or int(kernel) < 1:
            raise BenchError(f"image score rule {text!r}: K must be a positive integer (e.g. pooled-max:21)")
        return {"image_score": rule, "pool_kernel": int(kernel)}

    @staticmethod
    def parse_iou_threshold(text: str) -> Union[float, str]:
        """`"f1"` or a number in [0, 1]."""
        if text == "f1":
            return text
        try:
            return float(text)
        except ValueError:
            raise BenchError(f"IoU threshold {text!r}: expected a number in [0, 1] or 'f1'") from None


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
