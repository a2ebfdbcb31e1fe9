"""The DRAEM discriminative U-Net (Zavrtanik et al., ICCV 2021), the "U-Net" AnomalyDiffusion and
BADG train downstream (NOTES 2.7, 3.7, appendix A.2: sjtuplayer/anomalydiffusion
`train-localization.py`, which uses DRAEM's `DiscriminativeSubNetwork(in_channels=3, out_channels=2)`).

Encoder: six blocks of two (conv3x3 + BN + ReLU), widths w, 2w, 4w, 8w, 8w, 8w (w = 64), with a 2x2
max-pool between blocks (input side divisible by 32). Decoder: five steps of bilinear x2 upsampling
(align_corners=True) + conv3x3 + BN + ReLU, concatenation with the encoder block of that
resolution, then two (conv3x3 + BN + ReLU); a final conv3x3 gives 2-class logits at full size.

Training as in AnomalyDiffusion: focal loss (gamma 2) on the softmax output, Adam lr 1e-4, batch 8,
200 epochs of 500 samples, LR x0.2 at 80 % and 90 % of the epochs, weights initialised N(0, 0.02) (convs) / N(1, 0.02) (BN scale).
Inputs are RGB in [0, 1] without mean/std normalisation (DRAEM's loaders divide by 255 only).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from segmenters.base import Segmenter, read_state_dict, run_padded
from segmenters.options import DraemUNetOptions

log = logging.getLogger(__name__)

ENCODER_MULTIPLIERS = (1, 2, 4, 8, 8, 8)


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UpStep(nn.Module):
    """Upsample x2, conv to the skip's width, concatenate the skip, two convs."""

    def __init__(self, cin: int, cout: int, skip: int):
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.fuse = double_conv(cout + skip, cout)

    def forward(self, x, skip):
        return self.fuse(torch.cat([self.up(x), skip], dim=1))


class DiscriminativeUNet(nn.Module):
    """DRAEM's discriminative sub-network: image -> logits (same spatial size, side % 32 == 0)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 2, base_width: int = 64):
        super().__init__()
        widths = [base_width * m for m in ENCODER_MULTIPLIERS]
        self.encoder = nn.ModuleList(double_conv(cin, cout) for cin, cout in zip([in_channels, *widths[:-1]], widths))
        # decoder, deepest first: (8w -> 8w, skip 8w), (8w -> 4w, skip 8w), (4w -> 2w, skip 4w),
        # (2w -> w, skip 2w), (w -> w, skip w)
        outs = [widths[4], widths[2], widths[1], widths[0], widths[0]]
        ins = [widths[5], *outs[:-1]]
        skips = widths[4::-1]
        self.decoder = nn.ModuleList(UpStep(i, o, s) for i, o, s in zip(ins, outs, skips))
        self.out = nn.Conv2d(base_width, out_channels, 3, padding=1)

    def forward(self, x):
        features = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            features.append(x)
        x = features.pop()
        for step in self.decoder:
            x = step(x, features.pop())
        return self.out(x)


def draem_init(module: nn.Module) -> None:
    """`weights_init` of AnomalyDiffusion's train-localization.py (DCGAN-style)."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) on the softmax output, averaged over pixels, as DRAEM's
    `FocalLoss(alpha=None, gamma=2)`; computed from log-softmax (stable under mixed precision)
    rather than DRAEM's 1e-5-smoothed probabilities."""
    logp = F.log_softmax(logits.float(), dim=1).gather(1, target.long().unsqueeze(1)).squeeze(1)
    return (-(1.0 - logp.exp()).pow(gamma) * logp).mean()


class DraemUNet(Segmenter):
    name = "unet-draem"
    Options = DraemUNetOptions
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)
    presets = {
        # tiny: base width 16 (1.8M parameters instead of 28.4M), higher LR for few steps
        "smoke": {"max_steps": 150, "batch_size": 8, "base_width": 16, "lr": 1e-3},
        # Epochs, as the sources count them: BADG Sec. 4.3.1 trains the U-Net "for 200 epochs followed
        # by the framework of Anomalydiffusion"; AnomalyDiffusion's train-localization.py (NOTES 2.3,
        # A.2): 200 epochs, each of a fixed 500 draws (unet_utils/data_loader.py, length=500), batch 8
        # with the last batch kept (63 steps), Adam lr 1e-4, MultiStepLR x0.2 at epochs 160 and 180
        # (stepped per epoch), 256 px, per category. 200 x 63 = 12,600 steps whatever the set's size.
        "paper": {"max_steps": None, "max_epochs": 200, "epoch_samples": 500, "batch_size": 8, "base_width": 64,
                  "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "schedule": "multistep"},
    }

    def build_model(self) -> nn.Module:
        model = DiscriminativeUNet(3, 2, self.options.base_width)
        model.apply(draem_init)
        if self.options.weights_file:
            model.load_state_dict(read_state_dict(
                self.options.weights_file, "unet-draem weights",
                "give a saved DRAEM discriminative U-Net state dict or unset segmenter.options.weights"))
            log.info("%s: loaded %s", self.name, self.options.weights_file)
        else:
            log.info("%s: randomly initialised, DRAEM's N(0, 0.02) (segmenter.options.weights unset or none)", self.name)
        return model

    def logits(self, x):
        return run_padded(self.model, x)

    def training_loss(self, images, masks):
        logits = self(images)
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        return focal_loss(logits, masks, self.options.focal_gamma)
