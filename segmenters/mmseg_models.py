"""BiSeNet V2, STDC, UPerNet and SegFormer, built by mmsegmentation 1.2.2 from its packaged configs.

SeaS (NOTES 1.7) trains BiSeNet V2 and UPerNet-R50 "as the official implementation in MMSegmentation",
with mmseg's decode head and auxiliary heads; STAGE (NOTES 5.7) uses SegFormer, BiSeNet V2 and STDC
without naming a variant. We build each from `mmseg/.mim/configs/_base_/models/<config>.py`:

- `num_classes` -> 2 (normal, defect); the STDC boundary head stays binary as in its config.
- mmseg's heads and losses are kept for training: `training_loss` calls the EncoderDecoder's own
  `loss()` with `SegDataSample` targets (CE on the decode head + every auxiliary head, OHEM sampler
  and the detail/boundary loss for STDC), summed like mmengine's `parse_losses`.
- inference is `decode_head(backbone(x))`: the auxiliary heads are not part of the inference graph
  (nor of `inference_parameters()`).
- `SyncBN` -> `BN` at build time. Under multi-GPU DDP, `setup()` converts every BatchNorm back to
  `nn.SyncBatchNorm` for the models whose config uses SyncBN (the hook runs after Lightning has
  initialised the process group and before it wraps the model in DDP and builds the optimiser).
  CPU DDP keeps per-process BN: torch's SyncBatchNorm has no CPU kernel.
- no `pretrained` / `init_cfg: Pretrained` survives (those would download); `weights` loads a local
  checkpoint instead: a full mmseg checkpoint of the model (keys `backbone.*`, `decode_head.*`; heads
  whose class count differs are skipped) or an ImageNet backbone checkpoint (mmseg's pretrain files:
  ResNet-50 V1c, MiT, STDC).
- inputs: RGB in [0, 1] normalised by the ImageNet mean/std, which is the packaged configs'
  `SegDataPreProcessor` (mean 123.675/116.28/103.53, std 58.395/57.12/57.375 on 0-255 RGB).

mmseg imports lazily (5-10 s) in `build_model`, through `segmenters.mmseg_compat` so that it works
on mmcv-lite.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import BenchError, missing_extra
from segmenters.base import IMAGENET_MEAN, IMAGENET_STD, Segmenter
from segmenters.options import MMSegOptions, SegFormerOptions, STDCOptions, UPerNetOptions

log = logging.getLogger(__name__)


# -- config handling ----------------------------------------------------------------------------
def packaged_config(name: str) -> dict:
    """The `model` dict of `mmseg/.mim/configs/_base_/models/<name>.py`."""
    try:
        import mmseg
        from mmengine.config import Config
    except ImportError as err:
        raise missing_extra("mmseg", f"mmsegmentation's packaged config '{name}'", err) from None

    path = Path(mmseg.__file__).parent / ".mim" / "configs" / "_base_" / "models" / f"{name}.py"
    if not path.is_file():
        raise BenchError(f"{path}: mmsegmentation's packaged config is missing; reinstall mmsegmentation==1.2.2")
    return Config.fromfile(str(path)).model.to_dict()


def packaged_recipe(path: str) -> dict:
    """The training recipe of the packaged config `mmseg/.mim/configs/<path>` (the file a `paper`
    preset cites): iterations, total batch (GPUs x per-GPU batch, both read from the file name's
    `<g>xb<b>`), the optimizer, its `paramwise_cfg` and the LR schedulers, as mmengine reads them."""
    import re

    try:
        import mmseg
        from mmengine.config import Config
    except ImportError as err:
        raise missing_extra("mmseg", f"mmsegmentation's packaged config '{path}'", err) from None
    file = Path(mmseg.__file__).parent / ".mim" / "configs" / path
    if not file.is_file():
        raise BenchError(f"{file}: mmsegmentation's packaged config is missing; reinstall mmsegmentation==1.2.2")
    cfg = Config.fromfile(str(file))
    gpus, per_gpu = (int(n) for n in re.search(r"_(\d+)xb(\d+)-", file.name).groups())
    assert per_gpu == cfg.train_dataloader.batch_size, f"{file.name}: name and train_dataloader disagree"
    optim = cfg.optim_wrapper.to_dict()
    return {"max_iters": cfg.train_cfg.max_iters, "batch_size": gpus * per_gpu, "optimizer": optim["optimizer"],
            "paramwise_cfg": optim.get("paramwise_cfg"), "param_scheduler": [dict(s) for s in cfg.param_scheduler]}


def uses_sync_bn(cfg) -> bool:
    if isinstance(cfg, dict):
        return cfg.get("type") == "SyncBN" or any(uses_sync_bn(v) for v in cfg.values())
    if isinstance(cfg, (list, tuple)):
        return any(uses_sync_bn(v) for v in cfg)
    return False


def localise(cfg, num_classes: int = 2):
    """SyncBN -> BN, `num_classes` -> 2 on the segmentation heads, drop every download source."""
    if isinstance(cfg, list):
        return [localise(v, num_classes) for v in cfg]
    if not isinstance(cfg, dict):
        return cfg
    out = {}
    if "num_classes" in cfg and "out_channels" not in cfg:
        out["out_channels"] = num_classes  # 2-class softmax logits (mmseg would warn and suggest 1)
    for key, value in cfg.items():
        if key == "type" and value == "SyncBN":
            value = "BN"
        elif key == "num_classes":
            value = num_classes
        elif key == "pretrained":
            value = None
        elif key == "init_cfg" and isinstance(value, dict) and value.get("type") == "Pretrained":
            value = None
        out[key] = localise(value, num_classes)
    return out


@contextlib.contextmanager
def quiet_mmengine():
    """mmengine logs one INFO record per parameter in `init_weights`; keep the console readable."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_state(path: str) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise BenchError(f"{p}: segmenter weights not found; give a local checkpoint (segmenter.options.weights) "
                         "or segmenter.options.weights=none for random weights")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # mmseg checkpoints may pickle numpy metadata; the file is the user's own
        log.warning("%s: not loadable with weights_only=True; loading it as a trusted local file", p)
        state = torch.load(p, map_location="cpu", weights_only=False)
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))
    if not isinstance(state, dict):
        raise BenchError(f"{p}: not a state dict or checkpoint with a 'state_dict'")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_matching(module: nn.Module, state: dict[str, torch.Tensor]) -> tuple[int, list[str]]:
    """Copy every tensor whose name and shape fit; return (copied, skipped names)."""
    own = module.state_dict()
    fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(fit, strict=False)
    return len(fit), sorted(set(state) - set(fit))


# -- the segmenters -----------------------------------------------------------------------------
class MMSegSegmenter(Segmenter):
    """Shared glue: config -> EncoderDecoder, mmseg losses, SyncBN policy, local weights."""

    Options = MMSegOptions
    mean, std = IMAGENET_MEAN, IMAGENET_STD  # the configs' SegDataPreProcessor, on RGB in [0, 1]
    config: ClassVar[str]  # file stem under mmseg/.mim/configs/_base_/models/
    recipe: ClassVar[str]  # the config under mmseg/.mim/configs/ whose schedule `paper` uses
    backbone_path: ClassVar[str] = "backbone"  # submodule an ImageNet backbone checkpoint fits

    def model_config(self) -> dict:
        """The packaged config with this segmenter's variant applied (subclasses override)."""
        return packaged_config(self.config)

    def build_model(self) -> nn.Module:
        from segmenters.mmseg_compat import import_mmseg_models

        try:
            import_mmseg_models()
        except ImportError as err:
            raise missing_extra("mmseg", f"segmenter '{self.name}'", err) from None
        from mmseg.registry import MODELS

        cfg = self.model_config()
        self.config_sync_bn = uses_sync_bn(cfg)
        cfg = localise(cfg)
        cfg.pop("data_preprocessor", None)  # normalisation happens in Segmenter.forward
        if not self.options.aux_heads:
            cfg.pop("auxiliary_head", None)
        with quiet_mmengine(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*build_(loss|pixel_sampler).*deprecated.*")
            warnings.filterwarnings("ignore", message=".*avg_non_ignore.*")  # our masks have no ignore label
            model = MODELS.build(cfg)
            model.init_weights()  # mmseg's own initialisation (no Pretrained init_cfg is left)
        if self.options.weights_file:
            self.load_weights(model, self.options.weights_file)
        else:
            log.info("%s: randomly initialised (segmenter.options.weights unset or none)", self.name)
        return model

    def load_weights(self, model: nn.Module, path: str) -> None:
        state = load_state(path)
        if any(k.startswith(("backbone.", "decode_head.")) for k in state):
            target, what = model, "full model"
        else:
            target, what = model.get_submodule(self.backbone_path), f"{self.backbone_path} (ImageNet)"
        copied, skipped = load_matching(target, state)
        if copied == 0:
            raise BenchError(f"{path}: no tensor fits {self.name}'s {what}; is it a checkpoint of this model?")
        log.info("%s: loaded %d tensors from %s into the %s%s", self.name, copied, path, what,
                 f", skipped {len(skipped)} (e.g. {skipped[0]})" if skipped else "")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.decode_head(self.model.extract_feat(x))

    @torch.no_grad()
    def class_logits(self, images: torch.Tensor) -> torch.Tensor:
        # resize as mmseg's predict_by_feat does: with the decode head's align_corners
        logits = self(images).float()
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear",
                             align_corners=self.model.decode_head.align_corners)

    def inference_parameters(self) -> int:
        aux = self.model.auxiliary_head if self.model.with_auxiliary_head else None
        skip = {id(p) for p in aux.parameters()} if aux is not None else set()
        return sum(p.numel() for p in self.model.parameters() if id(p) not in skip)

    # -- training: mmengine's optimizer constructor and LR schedulers --------------------------
    def paramwise_cfg(self) -> dict | None:
        """Per-parameter lr / decay multipliers (mmengine's DefaultOptimWrapperConstructor); none here."""
        return None

    def build_optimizer(self) -> torch.optim.Optimizer:
        from mmengine.optim import build_optim_wrapper

        o = self.options
        optimizer = {"sgd": {"type": "SGD", "momentum": 0.9}, "adam": {"type": "Adam"},
                     "adamw": {"type": "AdamW"}}[o.optimizer] | {"lr": o.lr, "weight_decay": o.weight_decay}
        cfg = {"type": "OptimWrapper", "optimizer": optimizer}
        paramwise = self.paramwise_cfg()
        if paramwise:
            cfg["paramwise_cfg"] = paramwise
        with quiet_mmengine():  # the constructor logs one line per parameter it changes
            return build_optim_wrapper(self.model, cfg).optimizer

    def lr_schedulers(self, optimizer) -> list[dict]:
        """poly: the configs' mmengine LinearLR warm-up over [0, warmup) and PolyLR (eta_min =
        `min_lr`) over [warmup, steps), stepped every iteration as mmengine's runner does."""
        o = self.options
        if o.schedule != "poly":
            return super().lr_schedulers(optimizer)
        from mmengine.optim.scheduler import LinearLR, PolyLR

        steps = self.schedule_steps()
        warmup = min(o.warmup_steps, steps - 1)
        schedulers = [LinearLR(optimizer, start_factor=o.warmup_ratio, by_epoch=False, begin=0, end=warmup)] if warmup else []
        schedulers.append(PolyLR(optimizer, eta_min=o.min_lr, power=o.poly_power, by_epoch=False,
                                 begin=warmup, end=steps))
        return [{"scheduler": s, "interval": "step"} for s in schedulers]

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step()  # mmengine's schedulers are not torch LRScheduler subclasses

    # -- training: mmseg's own losses ---------------------------------------------------------
    def training_loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample

        shape = tuple(masks.shape[-2:])
        meta = {"img_shape": shape, "pad_shape": shape, "ori_shape": shape}
        samples = [SegDataSample(gt_sem_seg=PixelData(data=m[None].long()), metainfo=meta) for m in masks]
        losses = self.model.loss((images - self.pixel_mean) / self.pixel_std, samples)
        # mmengine's parse_losses: the total is the sum of every entry whose key contains "loss"
        parts = {k: (sum(v) if isinstance(v, (list, tuple)) else v) for k, v in losses.items() if "loss" in k}
        if self._trainer is not None:
            self.log_dict({f"train/{k}": v.detach() for k, v in parts.items()}, batch_size=len(masks))
        return sum(parts.values())

    def setup(self, stage: str) -> None:
        """SyncBN under multi-GPU DDP (see the module docstring)."""
        want = self.options.sync_bn if self.options.sync_bn is not None else self.config_sync_bn
        if not want or stage != "fit" or not torch.distributed.is_available():
            return
        if not torch.distributed.is_initialized() or torch.distributed.get_world_size() < 2:
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        if device.type == "cpu":
            log.info("%s: DDP on CPU keeps per-process BatchNorm (SyncBatchNorm needs GPUs)", self.name)
            return
        self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)


# Paper presets. SeaS and STAGE state no training schedule for these models (NOTES 1.7, 5.7), so
# `paper` is the schedule of the mmseg packaged config named by `recipe`, which counts iterations
# (IterBasedTrainLoop: max_steps; total batch = GPUs x per-GPU batch, optimiser, warm-up, poly power
# and floor). The numbers are written here so `bench list` and the config check need no mmseg;
# tests/test_segmenter_schedules.py reads each config and fails if they drift apart. `batch_size` is per process: the
# totals below are right on one device; on N DDP devices pass batch_size / N. The paper profile trains at
# 256 px as SeaS's downstream code does (LFD repo, configs/LFD.yaml: img_resize 256), not at the
# Cityscapes/ADE20K crop noted beside each preset.
# smoke: 150 steps at 128 px in well under a minute on 2 idle CPU cores (issue-4 report)
MMSEG_SMOKE = {"max_steps": 150, "batch_size": 4, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4}


class BiSeNetV2(MMSegSegmenter):
    name = "bisenetv2"
    config = "bisenetv2"
    recipe = "bisenetv2/bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py"
    presets = {
        "smoke": dict(MMSEG_SMOKE),
        # bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py (crop 1024x1024)
        "paper": {"max_steps": 160_000, "batch_size": 16, "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4,
                  "schedule": "poly", "poly_power": 0.9, "min_lr": 1e-4, "warmup_steps": 1000, "warmup_ratio": 0.1},
    }


class STDC(MMSegSegmenter):
    name = "stdc"
    config = "stdc"
    Options = STDCOptions
    backbone_path = "backbone.backbone"  # mmseg's STDC ImageNet files fit the STDCNet inside the context path
    recipe = "stdc/stdc1_4xb12-80k_cityscapes-512x1024.py"
    presets = {
        "smoke": dict(MMSEG_SMOKE),
        # stdc1_4xb12-80k_cityscapes-512x1024.py (crop 512x1024; stdc2 uses the same schedule)
        "paper": {"max_steps": 80_000, "batch_size": 48, "optimizer": "sgd", "lr": 0.01, "weight_decay": 5e-4,
                  "schedule": "poly", "poly_power": 0.9, "min_lr": 1e-4, "warmup_steps": 1000, "warmup_ratio": 0.1},
    }

    def model_config(self) -> dict:
        cfg = packaged_config(self.config)
        cfg["backbone"]["backbone_cfg"]["stdc_type"] = {"stdc1": "STDCNet1", "stdc2": "STDCNet2"}[self.options.variant]
        return cfg


class UPerNet(MMSegSegmenter):
    name = "upernet"
    config = "upernet_r50"
    Options = UPerNetOptions
    recipe = "upernet/upernet_r50_4xb4-160k_ade20k-512x512.py"
    presets = {
        # ResNet-50 costs ~10x the small models on CPU: a shorter smoke run
        "smoke": {**MMSEG_SMOKE, "max_steps": 40, "batch_size": 2},
        # upernet_r50_4xb4-160k_ade20k-512x512.py (crop 512x512)
        "paper": {"max_steps": 160_000, "batch_size": 16, "optimizer": "sgd", "lr": 0.01, "weight_decay": 5e-4,
                  "schedule": "poly", "poly_power": 0.9, "min_lr": 1e-4},
    }


SEGFORMER_VARIANTS = {  # segformer_mit-b{1..5}_8xb2-160k_ade20k-512x512.py
    "b0": {"embed_dims": 32, "num_layers": [2, 2, 2, 2]},
    "b1": {"embed_dims": 64, "num_layers": [2, 2, 2, 2]},
    "b2": {"embed_dims": 64, "num_layers": [3, 4, 6, 3]},
    "b3": {"embed_dims": 64, "num_layers": [3, 4, 18, 3]},
    "b4": {"embed_dims": 64, "num_layers": [3, 8, 27, 3]},
    "b5": {"embed_dims": 64, "num_layers": [3, 6, 40, 3]},
}


class SegFormer(MMSegSegmenter):
    name = "segformer"
    config = "segformer_mit-b0"
    recipe = "segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py"
    Options = SegFormerOptions
    presets = {
        "smoke": dict(MMSEG_SMOKE),
        # segformer_mit-b0_8xb2-160k_ade20k-512x512.py (crop 512x512)
        "paper": {"max_steps": 160_000, "batch_size": 16, "optimizer": "adamw", "lr": 6e-5, "weight_decay": 0.01,
                  "schedule": "poly", "poly_power": 1.0, "min_lr": 0.0, "warmup_steps": 1500,
                  "warmup_ratio": 1e-6},
    }

    def model_config(self) -> dict:
        cfg = copy.deepcopy(packaged_config(self.config))
        v = SEGFORMER_VARIANTS[self.options.variant]
        cfg["backbone"].update(embed_dims=v["embed_dims"], num_layers=v["num_layers"])
        cfg["decode_head"]["in_channels"] = [v["embed_dims"] * m for m in (1, 2, 5, 8)]
        return cfg

    def paramwise_cfg(self) -> dict:
        """The recipe's paramwise_cfg (no decay on 'pos_block' and 'norm', 'head' lr x10), read from
        the packaged config, with the head multiplier from `head_lr_mult`."""
        cfg = copy.deepcopy(packaged_recipe(self.recipe)["paramwise_cfg"])
        cfg["custom_keys"]["head"]["lr_mult"] = self.options.head_lr_mult
        return cfg
