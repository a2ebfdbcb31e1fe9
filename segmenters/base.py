"""The segmenter contract.

A segmenter is a LightningModule that maps images in [0, 1] (B x 3 x H x W; each model applies its
own normalisation) to 2-class logits (B x 2 x h x w, any h x w). Batches are dicts:
`{"image": float B3HW in [0,1], "mask": long BHW in {0,1}, "category": [str], "id": [str]}`.
`predict_step` returns the anomaly probability (softmax channel 1) at the input size.
"""

from __future__ import annotations

from typing import ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from segmenters.options import SegmenterOptions

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def torch_lr_schedulers(optimizer: torch.optim.Optimizer, o: SegmenterOptions, total_steps: int) -> list[dict]:
    """Lightning scheduler configs for `o.schedule`, made of torch's schedulers (no formula here):

    - poly: LinearLR from `warmup_ratio` over `warmup_steps`, then PolynomialLR(power) over the
      remaining steps (SequentialLR): mmseg's LinearLR + PolyLR chain with eta_min 0;
    - cosine: CosineAnnealingLR(T_max = total steps, eta_min = min_lr), stepped per iteration (LFD);
    - multistep: MultiStepLR x0.2 at 80 % and 90 %: of the epochs, stepped per epoch, when training
      counts epochs (AnomalyDiffusion's train-localization.py), else of the steps;
    - constant: none."""
    sched = torch.optim.lr_scheduler
    steps = max(1, total_steps)
    if o.schedule == "poly":
        warmup = min(o.warmup_steps, steps - 1)
        poly = sched.PolynomialLR(optimizer, total_iters=steps - warmup, power=o.poly_power)
        if warmup:
            ramp = sched.LinearLR(optimizer, start_factor=o.warmup_ratio, end_factor=1.0, total_iters=warmup)
            poly = sched.SequentialLR(optimizer, [ramp, poly], milestones=[warmup])
        return [{"scheduler": poly, "interval": "step"}]
    if o.schedule == "cosine":
        return [{"scheduler": sched.CosineAnnealingLR(optimizer, T_max=steps, eta_min=o.min_lr), "interval": "step"}]
    if o.schedule == "multistep":
        by_epoch = o.max_epochs is not None and o.max_steps is None
        length = o.max_epochs if by_epoch else steps
        milestones = [int(0.8 * length), int(0.9 * length)]
        return [{"scheduler": sched.MultiStepLR(optimizer, milestones, gamma=0.2),
                 "interval": "epoch" if by_epoch else "step"}]
    return []


def read_state_dict(path: str, what: str, hint: str) -> dict:
    """A local checkpoint's tensors: the file must exist (never a download), `state_dict` is
    unwrapped and DDP/Lightning prefixes (`module.`, `model.`) are dropped."""
    from pathlib import Path

    from benchmark.errors import BenchError

    p = Path(path)
    if not p.is_file():
        raise BenchError(f"{p}: {what} not found; {hint}")
    state = torch.load(p, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    return {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}


def run_padded(model: nn.Module, x: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    """Run an encoder-decoder that needs sides divisible by `multiple` (five 2x poolings) on any
    size: pad (reflect, or replicate when the pad exceeds the image) and crop the output back."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
    return model(x)[..., :h, :w]


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - Dice of the anomaly-class probability, over the whole batch (so all-normal batches
    contribute through their false positives)."""
    prob = logits.float().softmax(1)[:, 1]
    target = masks.float()
    intersection = (prob * target).sum()
    return 1 - (2 * intersection + eps) / (prob.sum() + target.sum() + eps)


class Segmenter(L.LightningModule):
    name: ClassVar[str]
    Options: ClassVar[type[SegmenterOptions]] = SegmenterOptions
    presets: ClassVar[dict[str, dict]] = {}
    mean: ClassVar[tuple[float, float, float]] = IMAGENET_MEAN
    std: ClassVar[tuple[float, float, float]] = IMAGENET_STD

    def __init__(self, options: SegmenterOptions):
        super().__init__()
        self.options = options
        self.register_buffer("pixel_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.model = self.build_model()

    # -- the model ------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError  # every concrete segmenter overrides this

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input -> 2-class logits (inference graph, no auxiliary heads)."""
        return self.model(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits((images - self.pixel_mean) / self.pixel_std)

    def inference_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # -- training -------------------------------------------------------------------------------
    def training_loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Default: cross-entropy + soft Dice of the anomaly class, at the mask's resolution.
        Defects cover ~1% of pixels; CE alone learns to stay below 0.5 everywhere for a long time,
        which zeroes IoU at the 0.5 threshold. Models whose paper states a loss (focal for
        unet-draem, CE + auxiliary heads for mmseg) override this."""
        logits = self(images)
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, masks.long()) + soft_dice_loss(logits, masks)

    def training_step(self, batch, batch_idx):
        loss = self.training_loss(batch["image"], batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups; models with per-module lr/decay multipliers override this."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def build_optimizer(self) -> torch.optim.Optimizer:
        o = self.options
        params = self.param_groups()
        if o.optimizer == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=0.9, weight_decay=o.weight_decay)
        if o.optimizer == "adam":
            return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)

    def schedule_steps(self) -> int:
        """Optimizer steps the LR schedule spans: `max_steps`, or what Lightning works out from
        `max_epochs` and the loader's length when training counts epochs."""
        o = self.options
        if o.max_epochs is None:
            return o.max_steps
        if self._trainer is None:
            raise RuntimeError("a schedule over max_epochs needs the Trainer (it knows the loader's length)")
        return int(self.trainer.estimated_stepping_batches)

    def lr_schedulers(self, optimizer) -> list[dict]:
        return torch_lr_schedulers(optimizer, self.options, self.schedule_steps())

    def configure_optimizers(self):
        optimizer = self.build_optimizer()
        schedulers = self.lr_schedulers(optimizer)
        return ([optimizer], schedulers) if schedulers else optimizer

    # -- prediction -----------------------------------------------------------------------------
    @torch.no_grad()
    def class_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Bx2xHxW logits at the input size."""
        logits = self(images).float()
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def anomaly_probability(self, images: torch.Tensor) -> torch.Tensor:
        return self.class_logits(images).softmax(1)[:, 1]

    def predict_step(self, batch, batch_idx=0, dataloader_idx=0):
        # the anomaly channel's raw logit too: STAGE's protocol scores it (metrics.pixel_score=logit)
        logits = self.class_logits(batch["image"])
        return {"prob": logits.softmax(1)[:, 1], "logit": logits[:, 1], "mask": batch["mask"],
                "category": batch["category"], "id": batch["id"]}
