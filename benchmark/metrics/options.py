"""`MetricOptions`: every choice on which the papers' metric definitions differ, named and recorded.

The one schema for these choices: the run configuration's `metrics` section, `bench score`'s flags
and the engine all use this model, and a run's results.json stores `to_json()` next to the numbers
(with the mode each category was actually computed in), so a table always says which image score
rule, IoU threshold, FPR limit and evaluation mode produced it. A pydantic model, so the config
loader reports a bad value with its full key (`metrics.bins`); `checked(...)` turns every problem
into one `BenchError` line for other user input. Imports nothing heavy (the config loader needs it
before torch is loaded).
"""

from __future__ import annotations

import math
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from benchmark.errors import BenchError, describe_errors

ImageScoreRule = Literal["max", "mean", "pooled-max"]
Mode = Literal["auto", "exact", "binned"]
IMAGE_SCORE_RULES = ("max", "mean", "pooled-max")
MODES = ("auto", "exact", "binned")
MIN_BINS = 1000
# Above this many pixels `mode="auto"` evaluates on the histogram grid: exact state is 8 bytes per
# pixel (5e7 pixels = 400 MB, about 50 MVTec categories' worth of 256x256 test images).
EXACT_MAX_PIXELS = 50_000_000


class MetricOptions(BaseModel):
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

    # strict numbers: a bool or a numeric string in a config file is a mistake, not a value
    model_config = ConfigDict(extra="forbid", frozen=True)

    image_score: ImageScoreRule = "max"
    pool_kernel: int = Field(21, ge=1, strict=True)
    iou_threshold: Union[Literal["f1"], float] = Field(0.5, union_mode="left_to_right")
    mode: Mode = "auto"
    bins: int = Field(MIN_BINS, ge=MIN_BINS, strict=True)
    max_fpr: float = Field(0.3, gt=0.0, le=1.0, allow_inf_nan=False)
    exact_max_pixels: int = Field(EXACT_MAX_PIXELS, ge=0, strict=True)

    @classmethod
    def checked(cls, **values) -> "MetricOptions":
        """Options from user input (flags, a results file): the problem in one `BenchError` line.
        (Built directly, a bad value raises pydantic's ValidationError, which the config loader
        reports with its full key.)"""
        try:
            return cls(**values)
        except ValidationError as e:
            raise BenchError(f"invalid metric options: {describe_errors(e, cls)}") from None

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

    def to_json(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, d: dict) -> "MetricOptions":
        unknown = set(d) - set(cls.model_fields)
        if unknown:
            raise BenchError(f"unknown metric option(s) {sorted(unknown)}; known: {sorted(cls.model_fields)}")
        return cls.checked(**d)

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

