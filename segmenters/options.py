"""The training options every segmenter shares (a leaf: pydantic only, so the command line checks
a value such as `segmenter.options.max_steps=-5` before torch is imported)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class SegmenterOptions(BaseModel):
    """Training options every segmenter shares; models subclass this with their own fields."""

    model_config = ConfigDict(extra="forbid")
    max_steps: int = Field(2000, gt=0)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    schedule: Literal["poly", "constant", "multistep"] = "poly"
    # poly schedule as in mmseg's PolyLR (+ optional LinearLR warm-up): lr falls from `lr` to
    # `min_lr` as (1 - t/T)^poly_power; the first `warmup_steps` ramp up from warmup_ratio * lr
    poly_power: float = 0.9
    min_lr: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weights: Optional[str] = None  # local pretrained weights; None = random init (never downloads)
