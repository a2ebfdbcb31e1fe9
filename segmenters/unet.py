"""U-Net from segmentation-models-pytorch (ResNet-34 encoder by default).

`weights` is a local encoder checkpoint (a torchvision/timm ResNet state dict); none means random
init: smp's own `encoder_weights="imagenet"` would try the model hub, which this project never does.
"""

from __future__ import annotations

import logging

import torch

from benchmark.errors import BenchError
from segmenters.base import Segmenter, SegmenterOptions, read_state_dict, run_padded

log = logging.getLogger(__name__)


class SmpUNetOptions(SegmenterOptions):
    encoder: str = "resnet34"
    lr: float = 1e-3


def load_encoder_weights(encoder: torch.nn.Module, path: str) -> None:
    state = read_state_dict(path, "encoder weights", "give a local ImageNet checkpoint (e.g. torchvision's "
                            "resnet34-b627a593.pth) or unset segmenter.options.weights")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    # smp's ResNetEncoder.load_state_dict returns None; call nn.Module's to get the key report
    missing, unexpected = torch.nn.Module.load_state_dict(encoder, state, strict=False)
    if unexpected or len(missing) > 0:
        raise BenchError(f"{path}: does not fit the encoder (missing {len(missing)}, unexpected {len(unexpected)} keys)")


class SmpUNet(Segmenter):
    name = "unet"
    Options = SmpUNetOptions
    presets = {
        # 400 steps: at 150 no pixel crossed 0.5 in any smoke run (IoU 0, anomaly accuracy 0) and the
        # table moved by up to 4x with the thread count; measurements in leaderboards/ci/README.md
        "smoke": {"encoder": "resnet18", "max_steps": 400, "batch_size": 8, "lr": 1e-3},
        # No paper trains this exact network: DefectDiffu gives no U-Net configuration (NOTES 4.7) and
        # AnomalyDiffusion / BADG use DRAEM's U-Net (`unet-draem`). `paper` applies their U-Net
        # schedule (NOTES 2.7, 3.2, A.2): 256 px, 200 epochs x 63 steps = 12,600 steps, batch 8,
        # Adam lr 1e-4, LR x0.2 at 80 % / 90 %.
        "paper": {"max_steps": 12_600, "batch_size": 8, "lr": 1e-4, "optimizer": "adam", "weight_decay": 0.0,
                  "schedule": "multistep"},
    }

    def build_model(self):
        import segmentation_models_pytorch as smp

        model = smp.Unet(self.options.encoder, encoder_weights=None, classes=2)
        if self.options.weights:
            load_encoder_weights(model.encoder, self.options.weights)
        else:
            log.info("%s: no segmenter.weights given, encoder randomly initialised", self.name)
        return model

    def logits(self, x):
        return run_padded(self.model, x)
