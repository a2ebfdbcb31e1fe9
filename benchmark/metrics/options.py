"""`MetricOptions`: every choice on which the papers' metric definitions differ, named and recorded.

The one schema for these choices: the run configuration's `metrics` section, `bench score`'s flags
and the engine all use this model, and a run's results.json stores `to_json()` next to the numbers
(with the mode each category was actually computed in), so a table always says which image score
rule, IoU threshold, FPR limit, evaluation mode and paper variant produced it. A pydantic model:
a bad value raises `BenchError` in one line; inside the run configuration the same problem is
reported under its full key (`metrics.bins=10: ...`). Imports nothing heavy (the config loader
needs it before torch is loaded).
"""

from __future__ import annotations

import math
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from benchmark.errors import BenchError, InvalidOptions

ImageScoreRule = Literal["max", "mean", "pooled-max"]
Mode = Literal["auto", "exact", "binned"]
PixelScore = Literal["probability", "logit"]
ProCurve = Literal["exact", "quantile-100"]
PixelF1Max = Literal["exact", "grid-21"]
PresetName = Literal["default", "anomalydiffusion", "stage", "seas"]  # the keys of METRIC_PRESETS
IMAGE_SCORE_RULES = ("max", "mean", "pooled-max")
MODES = ("auto", "exact", "binned")
PIXEL_SCORES = ("probability", "logit")
PRO_CURVES = ("exact", "quantile-100")
PIXEL_F1_MAX = ("exact", "grid-21")
MIN_BINS = 1000
# 2^16 bins: binned pixel AP within 1e-5 of exact on the benchmark's maps (1000 bins: 3e-4), a
# power of two so that `score * bins` is exact in float32 and bin edges are exact; the state is
# 3 x 2^16 numbers, 1.5 MB, whatever the number of pixels (docs/metrics.md "Modes")
DEFAULT_BINS = 1 << 16
# Above this many pixels `mode="auto"` evaluates on the histogram grid: exact state is 8 bytes per
# pixel (5e7 pixels = 400 MB, about 50 MVTec categories' worth of 256x256 test images).
EXACT_MAX_PIXELS = 50_000_000


class MetricOptions(BaseModel):
    """How the engine turns anomaly maps into numbers.

    preset: the paper protocol (`METRIC_PRESETS`) whose options the run configuration filled in
        under the ones set explicitly; recorded with the numbers, the engine reads only the options.
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

    # strict numbers: a bool or a numeric string in a config file is a mistake, not a value
    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: PresetName = "default"
    image_score: ImageScoreRule = "max"
    pool_kernel: int = Field(21, ge=1, strict=True)
    iou_threshold: Union[Literal["f1"], float] = Field(0.5, union_mode="left_to_right")
    mode: Mode = "auto"
    bins: int = Field(DEFAULT_BINS, ge=MIN_BINS, strict=True)
    max_fpr: float = Field(0.3, gt=0.0, le=1.0, allow_inf_nan=False)
    exact_max_pixels: int = Field(EXACT_MAX_PIXELS, ge=0, strict=True)
    pixel_score: PixelScore = "probability"
    pro_curve: ProCurve = "exact"
    pixel_f1_max: PixelF1Max = "exact"

    def __init__(self, **values) -> None:
        # one BenchError line when built directly; also a ValueError, so inside the run
        # configuration pydantic reports the same problem under `metrics.`
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise InvalidOptions("invalid metric options", e, type(self)) from None

    @field_validator("iou_threshold", mode="before")
    @classmethod
    def _threshold(cls, value):
        # one message for both branches (pydantic would report the literal and the float apart)
        if value == "f1":
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                and 0.0 <= value <= 1.0:
            return float(value)
        raise ValueError("should be a number in [0, 1] or 'f1'")

    @model_validator(mode="after")
    def _compatible(self) -> "MetricOptions":
        if self.pixel_score == "logit" and self.pixel_f1_max == "grid-21":
            raise ValueError("pixel_f1_max='grid-21' thresholds probabilities at 0, 0.05, ..., 1; it cannot "
                             "score raw logits")
        if self.mode == "binned" and self.needs_exact_state:
            raise ValueError("mode='binned' cannot rank raw logits or take quantiles of the normal-pixel scores"
                             " (pixel_score='logit' or pro_curve='quantile-100'); use mode 'exact' or 'auto'")
        return self

    @property
    def needs_exact_state(self) -> bool:
        """Variants that need every pixel's score at compute: `auto` never switches to binned."""
        return self.pixel_score == "logit" or self.pro_curve == "quantile-100"

    def to_json(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, d: dict) -> "MetricOptions":
        unknown = set(d) - set(cls.model_fields)
        if unknown:
            raise BenchError(f"unknown metric option(s) {sorted(unknown)}; known: {sorted(cls.model_fields)}")
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
