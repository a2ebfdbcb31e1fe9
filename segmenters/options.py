"""The options of the segmenters (a leaf: pydantic only, so the command line checks
a value such as `segmenter.options.max_steps=-5` before torch is imported)."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# `segmenter.options.weights=none`: random initial weights chosen on purpose. Unset weights also
# mean random weights, but the `paper` profile refuses them where the published setup starts from
# ImageNet weights (`published_weights`, checked by benchmark.config.check_options_early).
RANDOM_INIT = "none"


def weights_file(weights: str | None) -> str | None:
    """The checkpoint a `weights` value names; None for random initial weights (unset or "none")."""
    return None if weights is None or weights == RANDOM_INIT else weights


class SegmenterOptions(BaseModel):
    """Training options every segmenter shares; models subclass this with their own fields."""

    model_config = ConfigDict(extra="forbid")
    # Training length, as Lightning counts it: optimizer steps, epochs, or both (whichever ends
    # first). A paper that counts epochs gets `max_epochs` (and `max_steps: null`), one that
    # counts iterations `max_steps`, so a training set of another size keeps the paper's count.
    max_steps: Optional[int] = Field(2000, gt=0)
    max_epochs: Optional[int] = Field(None, gt=0)
    # Samples per epoch, drawn without replacement (whole passes, then part of one; torch's
    # RandomSampler(num_samples=...)). None: an epoch is one pass over the training set.
    # AnomalyDiffusion's epoch is a fixed 500 draws (unet_utils/data_loader.py, length=500).
    epoch_samples: Optional[int] = Field(None, gt=0)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    schedule: Literal["poly", "constant", "multistep", "cosine"] = "poly"
    # poly: lr falls as (1 - t/T)^poly_power after a linear warm-up of `warmup_steps` from
    # warmup_ratio * lr (torch's LinearLR + PolynomialLR; mmseg models: mmengine's LinearLR +
    # PolyLR, which also floor it at `min_lr`). cosine: torch's CosineAnnealingLR down to `min_lr`.
    # multistep: x0.2 at 80 % and 90 % of training (of the epochs when counting epochs).
    poly_power: float = 0.9
    min_lr: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weights: Optional[str] = None  # a local checkpoint (never downloaded), or RANDOM_INIT; None = random init

    poly_floor: ClassVar[bool] = False  # torch's PolynomialLR decays to 0; mmengine's PolyLR has eta_min

    @field_validator("weights")
    @classmethod
    def _random_init_in_any_case(cls, weights: str | None) -> str | None:
        return RANDOM_INIT if weights is not None and weights.strip().lower() == RANDOM_INIT else weights

    @property
    def weights_file(self) -> str | None:
        return weights_file(self.weights)

    def published_weights(self) -> str | None:
        """The local file the model's published setup starts from (ImageNet weights), which the
        `paper` profile asks for; None: the published setup trains from random weights."""
        return None

    @model_validator(mode="after")
    def _length_and_floor(self, info: ValidationInfo):
        if (info.context or {}).get("partial"):  # the early check sees the user's keys without the preset
            return self
        if self.max_steps is None and self.max_epochs is None:
            raise ValueError("give max_steps or max_epochs (both null: training would never end)")
        if self.schedule == "poly" and self.min_lr > 0 and not self.poly_floor:
            raise ValueError(f"min_lr={self.min_lr} with schedule=poly: torch's PolynomialLR decays to 0; "
                             "use schedule=cosine for a floor, or min_lr=0")
        return self


# -- each segmenter's own options (the model modules import them from here; the command line
# checks them without loading the models). Redefined shared fields keep the shared constraints.

# torchvision's ImageNet (IMAGENET1K_V1) files of the ResNets smp's U-Net takes as encoders
TORCHVISION_RESNETS = {"resnet18": "resnet18-f37072fd.pth", "resnet34": "resnet34-b627a593.pth",
                       "resnet50": "resnet50-0676ba61.pth", "resnet101": "resnet101-63fe2227.pth",
                       "resnet152": "resnet152-394f9c45.pth"}


class SmpUNetOptions(SegmenterOptions):
    """`unet` (segmenters/unet.py)."""

    encoder: str = "resnet34"
    lr: float = Field(1e-3, gt=0)

    def published_weights(self) -> str | None:
        # smp's default encoder_weights="imagenet"; for ResNets torchvision's ImageNet file fits
        # (segmenters/unet.py, encoder_checkpoint_hint; tests/test_paper_weights.py compares them)
        known = TORCHVISION_RESNETS.get(self.encoder)
        return f"torchvision's {known}" if known else f"an ImageNet checkpoint of the {self.encoder} encoder"


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
    # LFD's LR_Scheduler (models/scheduler/lr_scheduler.py): per-iteration cosine from lr to 1e-5
    schedule: Literal["poly", "constant", "multistep", "cosine"] = "cosine"
    min_lr: float = Field(1e-5, ge=0)
    # epochs the LR schedule spans when training stops before (max_epochs < this): SeaS keeps
    # LFD's 150-epoch cosine but evaluates the epoch-100 checkpoint. None: the schedule ends with training
    schedule_epochs: Optional[int] = Field(None, gt=0)

    def published_weights(self) -> str | None:
        return f"torchvision's {TORCHVISION_RESNETS['resnet18']} (LFD initialises both branches from ImageNet ResNet-18)"


class MMSegOptions(SegmenterOptions):
    """The MMSegmentation models (segmenters/mmseg_models.py)."""

    aux_heads: bool = True  # train with the config's auxiliary heads (SeaS keeps them)
    # SyncBN under multi-GPU DDP: None follows the packaged config (SyncBN there -> SyncBN here)
    sync_bn: Optional[bool] = None

    poly_floor: ClassVar[bool] = True  # mmengine's PolyLR (eta_min = min_lr), as the configs use it


# The ImageNet files mmseg's configs load (init_cfg Pretrained / pretrained=), named here so the
# early check needs no mmseg; tests/test_paper_weights.py reads them from the packaged configs.
MMSEG_IMAGENET = {"upernet": "resnet50_v1c-2cccc1ad.pth",  # upernet_r50.py: open-mmlab://resnet50_v1c
                  "stdc1": "stdc1_20220308-5368626c.pth", "stdc2": "stdc2_20220308-7dbd9127.pth",  # stdc*_in1k-pre
                  "b0": "mit_b0_20220624-7e0fe6dd.pth", "b1": "mit_b1_20220624-02e5a6a1.pth",
                  "b2": "mit_b2_20220624-66e8bf70.pth", "b3": "mit_b3_20220624-13b1141c.pth",
                  "b4": "mit_b4_20220624-d588d980.pth", "b5": "mit_b5_20220624-658746d9.pth"}


class UPerNetOptions(MMSegOptions):
    def published_weights(self) -> str | None:
        return f"mmseg's ResNet-50 V1c ImageNet checkpoint {MMSEG_IMAGENET['upernet']}"


class STDCOptions(MMSegOptions):
    variant: Literal["stdc1", "stdc2"] = "stdc1"

    def published_weights(self) -> str | None:
        # the STDC paper pretrains its backbone on ImageNet (mmseg: stdc*_in1k-pre, same schedule)
        return f"mmseg's {self.variant.upper()} ImageNet checkpoint {MMSEG_IMAGENET[self.variant]}"


class SegFormerOptions(MMSegOptions):
    variant: Literal["b0", "b1", "b2", "b3", "b4", "b5"] = "b0"
    # the config's paramwise_cfg 'head' lr_mult (10); its other custom keys come from the config
    head_lr_mult: float = Field(10.0, gt=0)

    def published_weights(self) -> str | None:
        return f"mmseg's MiT-{self.variant.upper()} ImageNet checkpoint {MMSEG_IMAGENET[self.variant]}"
