"""LFD-RoadSeg: Low-level Feature Dominated segmentation (Zhou, Xue, Li, Gong, Li, Zhou, "Exploiting
Low-level Representations for Ultra-Fast Road Segmentation", IEEE T-ITS 2024, arXiv 2402.02430).

SeaS recommends it as its downstream segmenter (0.936M parameters, NOTES 1.7); SeaS's downstream
code is the authors' repository HUST-SLOW/LFD. Written here from the paper's description, with the
layer sizes, resampling factors and training recipe of that repository (read, not copied):

- Spatial detail branch (paper III-A): the first stage of ResNet-18 (stem conv 7x7/2, max-pool/2,
  two 64-channel basic blocks) on the full image -> 64 ch at 1/4, then a 1x1 conv + BN + ReLU to 128.
- Context semantic branch (III-B): the image is *asymmetrically* downsampled to H/s x W/(2s)
  (s = `scale_factor`, 2 in the repository) and fed to ResNet-18 stages 1-2 (its own weights):
  128 ch at 1/8 of that, i.e. 1/16 x 1/32 of the input.
- Aggregation module (III-B): two residual units, each a depthwise 1x5 conv (dilation 2 in the first
  unit, 1 in the second), a depthwise 5x1 conv, a pointwise conv and BN + ReLU, added to its input.
  Cheap large horizontal/vertical receptive field instead of ResNet-18's third stage.
- Selective fusion module (III-C): the context feature is bilinearly upsampled to the detail
  feature's size; a pixel-wise attention map a = sigmoid(conv1x1(ReLU(BN(conv1x1([context, detail])))))
  gates the low-level feature: fused = a * detail + context.
- Head: conv1x1 + BN + ReLU + conv1x1 -> 2-class logits at 1/4, bilinearly upsampled to the input.

This gives 936,067 parameters with 2 classes (the paper's "936k"). Training as in the repository
(configs/LFD.yaml, models/_LFD.py): ImageNet mean/std, 256 px, SGD (momentum 0.9, weight decay 1e-4)
lr 0.01 cosine-annealed per iteration to 1e-5, batch 8, 150 epochs, OHEM cross-entropy (`ohem_ce`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from benchmark.errors import BenchError
from segmenters.base import Segmenter, read_state_dict
from segmenters.options import LFDOptions

log = logging.getLogger(__name__)


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResNet18Stages(nn.Module):
    """The first `stages` stages of a torchvision ResNet-18, keeping torchvision's parameter names
    (conv1, bn1, layer1, layer2) so an ImageNet checkpoint loads by name."""

    def __init__(self, stages: int):
        super().__init__()
        net = resnet18(weights=None)  # never downloads
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2 if stages >= 2 else None

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        return self.layer2(x) if self.layer2 is not None else x


class AggregationUnit(nn.Module):
    """Depthwise 1xk (dilated) + depthwise kx1 + pointwise conv, BN, ReLU, residual (paper III-B)."""

    def __init__(self, channels: int, kernel: int = 5, dilation: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, (1, kernel), padding=(0, dilation * (kernel // 2)),
                      dilation=dilation, groups=channels),
            nn.Conv2d(channels, channels, (kernel, 1), padding=(kernel // 2, 0), groups=channels),
            conv_bn_relu(channels, channels),
        )

    def forward(self, x):
        return x + self.body(x)


class SelectiveFusion(nn.Module):
    """Pixel-wise attention from [context, detail] gating the low-level feature (paper III-C)."""

    def __init__(self, channels: int):
        super().__init__()
        self.attention = nn.Sequential(conv_bn_relu(2 * channels, channels), nn.Conv2d(channels, 1, 1))

    def forward(self, detail, context):
        context = F.interpolate(context, size=detail.shape[-2:], mode="bilinear", align_corners=False)
        a = torch.sigmoid(self.attention(torch.cat([context, detail], dim=1)))
        return a * detail + context


class LFDNet(nn.Module):
    """The LFD-RoadSeg network: normalised image -> 2-class logits at the input size."""

    def __init__(self, num_classes: int = 2, scale_factor: int = 2, channels: int = 128):
        super().__init__()
        self.scale_factor = scale_factor
        self.detail = ResNet18Stages(stages=1)
        self.detail_proj = conv_bn_relu(64, channels)
        self.context = ResNet18Stages(stages=2)
        self.aggregation = nn.Sequential(AggregationUnit(channels, dilation=2), AggregationUnit(channels, dilation=1))
        self.fusion = SelectiveFusion(channels)
        self.head = nn.Sequential(conv_bn_relu(channels, channels), nn.Conv2d(channels, num_classes, 1))

    def forward(self, x):
        h, w = x.shape[-2:]
        s = self.scale_factor
        # asymmetric downsampling: the width is halved once more than the height (paper III-B)
        small = F.interpolate(x, size=(max(1, h // s), max(1, w // (2 * s))), mode="bilinear", align_corners=False)
        context = self.aggregation(self.context(small))
        detail = self.detail_proj(self.detail(x))
        logits = self.head(self.fusion(detail, context))
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7,
                       min_kept: int = 100_000, ignore_index: int = 255) -> torch.Tensor:
    """Online hard-example-mined CE (the `FSOhemCELoss` LFD trains with): average the CE over the
    pixels whose true-class probability is below max(thresh, the min_kept-th lowest probability)."""
    logits = logits.float()
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
    valid = target.flatten() != ignore_index
    with torch.no_grad():
        prob = torch.exp(-ce)  # softmax probability of the true class
        kept_prob = prob[valid]
        if kept_prob.numel() == 0:
            return ce.sum() * 0.0
        k = min(min_kept, kept_prob.numel() - 1)
        threshold = max(torch.kthvalue(kept_prob, k + 1).values.item(), thresh)
        hard = valid & (prob < threshold)
    if not hard.any():
        return ce[valid].mean()
    return ce[hard].mean()


class LFDRoadSeg(Segmenter):
    name = "lfd"
    Options = LFDOptions
    presets = {
        "smoke": {"max_steps": 150, "batch_size": 8, "optimizer": "sgd", "lr": 0.01},
        # SeaS's downstream recipe (NOTES 1.7, A.3; HUST-SLOW/LFD configs/LFD.yaml, models/_LFD.py,
        # models/scheduler/lr_scheduler.py), in epochs as LFD.yaml counts them: a cosine per iteration
        # from 0.01 to 1e-5 over 150 epochs of the training set (training.max_epochs: 150, no warm-up),
        # evaluated at the epoch-100 checkpoint as SeaS does for MVTec AD (testing.test_epoch: 100;
        # 10 for VisA), so training stops after epoch 100; batch 8, 256 px, SGD (momentum 0.9, wd 1e-4), OHEM CE.
        "paper": {"max_steps": None, "max_epochs": 100, "schedule_epochs": 150, "batch_size": 8, "optimizer": "sgd",
                  "lr": 0.01, "weight_decay": 1e-4, "schedule": "cosine", "min_lr": 1e-5, "loss": "ohem_ce"},
    }

    def build_model(self) -> nn.Module:
        model = LFDNet(num_classes=2, scale_factor=self.options.scale_factor)
        if self.options.weights_file:
            load_lfd_weights(model, self.options.weights_file)
        else:
            log.info("%s: randomly initialised (segmenter.options.weights unset or none)", self.name)
        return model

    def schedule_steps(self) -> int:
        """The cosine spans `schedule_epochs` epochs when training stops earlier (SeaS: 100 of 150)."""
        o = self.options
        steps = super().schedule_steps()
        if o.schedule_epochs is None or o.max_epochs is None or o.max_steps is not None:
            return steps
        return steps // o.max_epochs * o.schedule_epochs

    def training_loss(self, images, masks):
        logits = self(images)  # already at the input size
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        if self.options.loss == "ce":
            return F.cross_entropy(logits.float(), masks.long())
        return ohem_cross_entropy(logits, masks.long(), self.options.ohem_thresh, self.options.ohem_min_kept)


def load_lfd_weights(model: LFDNet, path: str) -> None:
    """A state dict of this network (e.g. a previous run), or an ImageNet ResNet-18 checkpoint
    (torchvision's resnet18-f37072fd.pth) that initialises both branches, as the paper does."""
    p = Path(path)
    state = read_state_dict(path, "LFD weights", "give a local ImageNet ResNet-18 checkpoint (torchvision's "
                            "resnet18-f37072fd.pth) or a saved LFD state dict, or segmenter.options.weights=none "
                            "for random weights")
    if any(k.startswith(("detail.", "context.")) for k in state):
        model.load_state_dict(state, strict=True)
        log.info("lfd: loaded the full network from %s", p)
        return
    for branch in (model.detail, model.context):
        own = branch.state_dict()
        fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if len(fit) != len(own):
            raise BenchError(f"{p}: not a ResNet-18 checkpoint ({len(own) - len(fit)} of {len(own)} tensors "
                             "of the ResNet-18 stages missing)")
        branch.load_state_dict(fit)
    log.info("lfd: both branches initialised from the ResNet-18 checkpoint %s", p)
