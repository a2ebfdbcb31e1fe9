"""The spatial encoder E of Sec. 3.2: anomaly mask -> spatial embedding e_s (n text-space tokens).

"we input the anomaly mask into ResNet-50 to extract the image features in different layers and
fuse them together by Feature Pyramid Networks. Finally, several fully-connected networks are
employed to map the fused features into textual embedding space, with each network predicting
one text token" (Sec. 3.2; n = 4, Sec. 4.1). Built from torchvision's ResNet and FPN
(`BackboneWithFPN`) rather than by hand. Choices the paper leaves open (docs/anomalydiffusion.md):
- the binary mask enters as a grey 3-channel image, normalised with ImageNet's mean and std, so
  ImageNet weights see the input statistics they were trained on;
- "fuse" = every FPN level (already fused top-down by the FPN) average-pooled to a `grid` x
  `grid` map and averaged over levels; a spatial grid rather than a global pool, because the
  tokens exist to say *where* the anomaly is, and a global average of a mask keeps only its area;
- each "fully-connected network" is one linear layer from the flattened grid to a token.
The authors' public code uses a pSp GradualStyleEncoder (IR-50) instead; we follow the paper.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import BenchError
from generators.diffusion.conditioning import with_extra_tokens
from generators.diffusion.hub import cache_root

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision ResNet stages fed to the FPN and their widths
_STAGE_CHANNELS = {"resnet50": (256, 512, 1024, 2048), "resnet18": (64, 128, 256, 512)}


IMAGENET_RESNET50 = "resnet50-0676ba61.pth"  # torchvision's IMAGENET1K_V1 file name (the `paper` preset's)


def weights_file(path: str | Path) -> Path:
    """An absolute path as given; a relative one under `<cache root>/weights/` (SIAS_BENCH_CACHE)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else cache_root() / "weights" / path


def load_imagenet_weights(body: nn.Module, path: str | Path | None) -> None:
    """ImageNet weights for the ResNet from a local torchvision state dict (e.g. resnet50-0676ba61.pth).
    No download here: a missing file is one clear error naming what to put where."""
    if path is None:
        return
    path = weights_file(path)
    if not path.is_file():
        raise BenchError(f"AnomalyDiffusion's spatial encoder needs ImageNet ResNet weights at {path}: put "
                         "torchvision's ResNet state dict there (e.g. resnet50-0676ba61.pth), or set "
                         "spatial_encoder_weights: null for a random initialisation")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the classifier is not used
    missing, unexpected = body.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise BenchError(f"{path} is not a torchvision ResNet state dict for this encoder: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")


class SpatialEncoder(nn.Module):
    """E: (B,1,H,W) binary masks -> (B, n_tokens, token_dim) spatial embedding e_s.

    `arch` "resnet50" is the paper's; "resnet18" with a narrow FPN is a small config for tests and
    smoke runs. `weights_path`: a local torchvision ImageNet state dict for the ResNet (None:
    random initialisation)."""

    def __init__(self, token_dim: int, n_tokens: int = 4, arch: str = "resnet50", fpn_channels: int = 256,
                 grid: int = 4, weights_path: str | Path | None = None):
        super().__init__()
        from torchvision import models
        from torchvision.models.detection.backbone_utils import BackboneWithFPN

        if arch not in _STAGE_CHANNELS:
            raise BenchError(f"unknown spatial-encoder backbone '{arch}'; known: {', '.join(_STAGE_CHANNELS)}")
        body = getattr(models, arch)(weights=None)
        load_imagenet_weights(body, weights_path)
        self.fpn = BackboneWithFPN(body, return_layers={f"layer{i}": str(i - 1) for i in range(1, 5)},
                                   in_channels_list=list(_STAGE_CHANNELS[arch]), out_channels=fpn_channels)
        self.grid = grid
        features = fpn_channels * grid * grid
        self.heads = nn.ModuleList(nn.Linear(features, token_dim) for _ in range(n_tokens))  # one per token
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def fused_features(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, fpn_channels * grid^2): FPN levels pooled to the grid and averaged (the fusion)."""
        x = (masks.float().expand(-1, 3, -1, -1) - self.mean) / self.std
        levels = [v for k, v in self.fpn(x).items() if k != "pool"]  # 'pool' is a max-pool copy of the top level
        fused = torch.stack([F.adaptive_avg_pool2d(v, self.grid) for v in levels]).mean(0)
        return fused.flatten(1)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        f = self.fused_features(masks)
        return torch.stack([head(f) for head in self.heads], dim=1)


def spatial_anomaly_context(prompt_context: torch.Tensor, e_s: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """e = {e_a, e_s} (Sec. 3.2): the text-encoder states of a prompt that holds the anomaly
    embedding e_a, (B,L,D), with the spatial tokens e_s (B,n,D) appended through the base's
    per-sample token extension. Returns the context and the positions of the e_s tokens."""
    context = with_extra_tokens(prompt_context, e_s)
    start = prompt_context.shape[1]
    return context, list(range(start, start + e_s.shape[1]))
