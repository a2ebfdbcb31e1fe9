"""U-Net from segmentation-models-pytorch (ResNet-34 encoder by default; the smoke preset uses
ResNet-18, see `SmpUNet.presets`).

`weights` is a local encoder checkpoint (a torchvision/timm ResNet state dict); none means random
init: smp's own `encoder_weights="imagenet"` would try the model hub, which this project never does.
"""

from __future__ import annotations

import logging

import torch

from benchmark.errors import BenchError
from segmenters.base import Segmenter, read_state_dict, run_padded
from segmenters.options import SmpUNetOptions

log = logging.getLogger(__name__)


def encoder_checkpoint_hint(encoder: str) -> str:
    """Which local file fits `encoder`: for ResNets torchvision's ImageNet checkpoint of the same
    depth (its keys are smp's ResNetEncoder's plus `fc.`, which is dropped), else the smp hub
    entry that `encoder_weights="imagenet"` would download."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(encoder)
        return f"torchvision's {getattr(weights, 'IMAGENET1K_V1', weights.DEFAULT).url.rsplit('/', 1)[-1]}"
    except ValueError:  # not a torchvision model name
        pass
    import segmentation_models_pytorch as smp

    settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {}).get("imagenet", {})
    source = settings.get("repo_id") or settings.get("url")
    return f"the ImageNet weights of {encoder}" + (f" ({source}, downloaded elsewhere)" if source else "")


def load_encoder_weights(encoder: torch.nn.Module, path: str, name: str) -> None:
    hint = f"a local ImageNet checkpoint of the {name} encoder, e.g. {encoder_checkpoint_hint(name)}"
    state = read_state_dict(path, "encoder weights", f"give {hint}, or segmenter.options.weights=none for random weights")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    # smp's ResNetEncoder.load_state_dict returns None; call nn.Module's to get the key report
    try:
        missing, unexpected = torch.nn.Module.load_state_dict(encoder, state, strict=False)
    except RuntimeError:  # same keys, other shapes: another depth or width of the same family
        missing, unexpected = ["(shape mismatch)"], []
    if unexpected or len(missing) > 0:
        raise BenchError(f"{path}: does not fit the {name} encoder (missing {len(missing)}, unexpected "
                         f"{len(unexpected)} keys); expected {hint} (segmenter.options.encoder={name})")


class SmpUNet(Segmenter):
    name = "unet"
    Options = SmpUNetOptions
    presets = {
        # 400 steps: at 150 no pixel crossed 0.5 in any smoke run (IoU 0, anomaly accuracy 0) and the
        # table moved by up to 4x with the thread count; measurements in leaderboards/ci/README.md
        "smoke": {"encoder": "resnet18", "max_steps": 400, "batch_size": 8, "lr": 1e-3},
        # No paper trains this exact network: DefectDiffu gives no U-Net configuration (NOTES 4.7) and
        # AnomalyDiffusion / BADG use DRAEM's U-Net (`unet-draem`). `paper` applies their U-Net
        # schedule (BADG Sec. 4.3.1; AnomalyDiffusion train-localization.py, NOTES 2.3, A.2): 256 px,
        # 200 epochs of 500 samples (63 steps each), batch 8, Adam lr 1e-4, LR x0.2 at epochs 160, 180.
        "paper": {"max_steps": None, "max_epochs": 200, "epoch_samples": 500, "batch_size": 8, "lr": 1e-4,
                  "optimizer": "adam", "weight_decay": 0.0, "schedule": "multistep"},
    }

    def build_model(self):
        import segmentation_models_pytorch as smp

        model = smp.Unet(self.options.encoder, encoder_weights=None, classes=2)
        if self.options.weights_file:
            load_encoder_weights(model.encoder, self.options.weights_file, self.options.encoder)
        else:
            log.info("%s: %s encoder randomly initialised (segmenter.options.weights unset or none)", self.name,
                     self.options.encoder)
        return model

    def logits(self, x):
        return run_padded(self.model, x)
