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
PixelScore = Literal["probability", "logit"]
ProCurve = Literal["exact", "quantile-100"]
PixelF1Max = Literal["exact", "grid-21"]
IMAGE_SCORE_RULES = ("max", "mean", "pooled-max")
MODES = ("auto", "exact", "binned")
PIXEL_SCORES = ("probability", "logit")
PRO_CURVES = ("exact", "quantile-100")
PIXEL_F1_MAX = ("exact", "grid-21")
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
    pixel_score: what the maps hold. `probability` (default): the anomaly-class softmax, in
        [0, 1]. `logit`: the raw anomaly-channel logit, any finite number (STAGE scored SegFormer's
        logits, which rank pixels differently from the softmax of two channels); curve metrics
        rank the logits, and a numeric `iou_threshold` still applies to the probabilities, given
        to `update(..., probabilities=)`. Exact state only: `binned` is refused, `auto` stays exact.
    pro_curve: `exact` (every distinct score, MVTec AD) or `quantile-100`: the MVTec 3D-AD
        `au_pro_util` curve that AnomalyDiffusion's and STAGE's code use (100 thresholds at
        quantile positions of the normal-pixel scores, overlap and FPR strictly above). Exact state only.
    pixel_f1_max: `exact` (every distinct score) or `grid-21`: AnomalyDiffusion's code, the best
        F1 over the 21 thresholds 0, 0.05, ..., 1 with score > threshold.
    """

    image_score: ImageScoreRule = "max"
    pool_kernel: int = 21
    iou_threshold: Union[float, Literal["f1"]] = 0.5
    mode: Mode = "auto"
    bins: int = MIN_BINS
    max_fpr: float = 0.3
    exact_max_pixels: int = EXACT_MAX_PIXELS
    pixel_score: PixelScore = "probability"
    pro_curve: ProCurve = "exact"
    pixel_f1_max: PixelF1Max = "exact"

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
        for name, allowed in (("pixel_score", PIXEL_SCORES), ("pro_curve", PRO_CURVES), ("pixel_f1_max", PIXEL_F1_MAX)):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.pixel_score == "logit" and self.pixel_f1_max == "grid-21":
            problems.append("pixel_f1_max='grid-21' thresholds probabilities at 0, 0.05, ..., 1; it cannot score raw logits")
        if self.mode == "binned" and self.needs_exact_state:
            problems.append("mode='binned' cannot rank raw logits or take quantiles of the normal-pixel scores"
                            " (pixel_score='logit' or pro_curve='quantile-100'); use mode 'exact' or 'auto'")
        if problems:
            raise BenchError("invalid metric options: " + "; ".join(problems))
        if thr != "f1":
            object.__setattr__(self, "iou_threshold", float(thr))
        object.__setattr__(self, "max_fpr", float(self.max_fpr))

    @property
    def needs_exact_state(self) -> bool:
        """Variants that need every pixel's score at compute: `auto` never switches to binned."""
        return self.pixel_score == "logit" or self.pro_curve == "quantile-100"

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


# Every number `AnomalyMetrics.compute` returns, as its results.json path (`threshold` is a setting).
RESULT_KEYS = (
    "image.auroc", "image.ap", "image.f1_max",
    "pixel.auroc", "pixel.ap", "pixel.f1_max", "pixel.pro", "pixel.iou", "pixel.iou_best_per_image", "pixel.f1",
    "miou", "acc", "acc_anomaly",
)
_IMAGE = ("pixel_score", "image_score", "pool_kernel")
_THRESHOLDED = ("pixel_score", "iou_threshold")
# The options each metric's value depends on: two numbers share a definition iff these agree.
DEPENDS_ON = {
    "image.auroc": _IMAGE, "image.ap": _IMAGE, "image.f1_max": _IMAGE,
    "pixel.auroc": ("pixel_score",), "pixel.ap": ("pixel_score",),
    "pixel.f1_max": ("pixel_score", "pixel_f1_max"),
    "pixel.pro": ("pixel_score", "pro_curve", "max_fpr"),
    "pixel.iou_best_per_image": ("pixel_score",),
    "pixel.iou": _THRESHOLDED, "pixel.f1": _THRESHOLDED, "miou": _THRESHOLDED, "acc": _THRESHOLDED,
    "acc_anomaly": _THRESHOLDED,
}

# The metric options of each paper's protocol, from the paper or its authors' code (docs/metrics.md).
# A preset fills the options it names; options the user sets win over it.
METRIC_PRESETS: dict[str, dict] = {
    "default": {},
    # test-localization.py: max of the 21x21 average-pooled softmax map per image, MVTec 3D-AD
    # au_pro_util (100 quantile thresholds), pixel F1-max on 21 thresholds
    "anomalydiffusion": {"image_score": "pooled-max", "pool_kernel": 21, "pro_curve": "quantile-100",
                         "pixel_f1_max": "grid-21"},
    # "anomaly maps are extracted from the SegFormer logits by selecting the channel corresponding
    # to anomalies" (Sec. IV-B 2); mIoU/Acc stay at the softmax argmax (0.5), as mmseg's IoUMetric
    "stage": {"pixel_score": "logit"},
    # the LFD evaluation code behind SeaS' tables: max of the map, exact sklearn curves
    "seas": {"image_score": "max"},
}


def metric_definition(key: str, options: dict) -> dict:
    """The options that `key`'s value depends on, defaults filled: equal dicts, same definition."""
    if key not in DEPENDS_ON:
        raise BenchError(f"unknown metric {key!r}; the engine computes {', '.join(RESULT_KEYS)}")
    defaults = MetricOptions().to_json()
    return {name: options.get(name, defaults[name]) for name in DEPENDS_ON[key]}
