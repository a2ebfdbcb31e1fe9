"""The options of the segmenters (a leaf: pydantic only, so the command line checks
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


# -- each segmenter's own options (the model modules import them from here; the command line
# checks them without loading the models). Redefined shared fields keep the shared constraints.
class SmpUNetOptions(SegmenterOptions):
    """`unet` (segmenters/unet.py)."""

    encoder: str = "resnet34"
    lr: float = Field(1e-3, gt=0)


class DraemUNetOptions(SegmenterOptions):
    """`unet-draem` (segmenters/unet_draem.py)."""

    base_width: int = Field(64, ge=1)
    focal_gamma: float = Field(2.0, ge=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adam"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["poly", "constant", "multistep"] = "multistep"


class LFDOptions(SegmenterOptions):
    """`lfd` (segmenters/lfd.py)."""

    scale_factor: int = Field(2, ge=1)  # context branch input: H/s x W/(2s) (LFD.yaml: scale_factor 2)
    loss: Literal["ohem_ce", "ce"] = "ohem_ce"  # LFD trains with OHEM CE
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100_000
    optimizer: Literal["adamw", "adam", "sgd"] = "sgd"
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    min_lr: float = Field(1e-5, ge=0)


class MMSegOptions(SegmenterOptions):
    """The MMSegmentation models (segmenters/mmseg_models.py)."""

    aux_heads: bool = True  # train with the config's auxiliary heads (SeaS keeps them)
    # SyncBN under multi-GPU DDP: None follows the packaged config (SyncBN there -> SyncBN here)
    sync_bn: Optional[bool] = None


class STDCOptions(MMSegOptions):
    variant: Literal["stdc1", "stdc2"] = "stdc1"


class SegFormerOptions(MMSegOptions):
    variant: Literal["b0", "b1", "b2", "b3", "b4", "b5"] = "b0"
    head_lr_mult: float = Field(10.0, gt=0)  # mmseg's paramwise_cfg: 'head' lr x10, no decay on norms / pos_block
