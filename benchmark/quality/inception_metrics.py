"""IS, FID and KID from features already extracted, computed by torchmetrics.

The torchmetrics metrics take a feature module; giving them `PrecomputedFeatures` (the identity)
lets the Inception network run once per image for all three metrics (pool features for FID/KID,
logits for IS) while the formulas stay torchmetrics':

* IS = exp(E_x KL(p(y|x) || p(y))) over `splits` random splits, mean and std (Salimans et al.
  2016; AnomalyDiffusion supplement C.2, SeaS appendix A.3 "Metrics");
* FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) (Heusel et al. 2017; BADG Sec. 4.2,
  DefectDiffu Sec. 4.1), features in float64;
* KID = unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, mean and std
  over `subsets` random subsets of `subset_size` (Binkowski et al. 2018; SeaS appendix A.3 "Metrics").

Random permutations use a seeded generator, so the numbers are reproducible.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

CHUNK = 256  # features per update call; FID keeps only sums, so memory does not grow with N
MIN_PER_SPLIT = 10  # an IS split of one image is exp(0) = 1 whatever the image: small sets use fewer splits


def _quiet(metric_cls, **kwargs):
    """Build a torchmetrics metric without its "saves all features" warning: the features are
    what this module keeps anyway (2048 floats per image)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        return metric_cls(**kwargs)


class PrecomputedFeatures(nn.Module):
    """Identity feature module: the metric is updated with features, not images."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else x


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> dict:
    from torchmetrics.image.inception import InceptionScore

    n = len(logits)
    if n < 1:
        return {"is": None, "is_std": None, "is_splits": 0}
    used = max(1, min(splits, n // MIN_PER_SPLIT))
    metric = _quiet(InceptionScore, feature=PrecomputedFeatures(logits.shape[1]), splits=used)
    metric.update(logits.double())
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*degrees of freedom.*")  # one split: no std, reported as None
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"is": float(mean), "is_std": _none_if_nan(float(std)) if used > 1 else None, "is_splits": used}


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float | None:
    """FID between two feature sets (None with fewer than two features on either side)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        return None
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1]))
    for start in range(0, len(real), CHUNK):
        metric.update(real[start:start + CHUNK].double(), real=True)
    for start in range(0, len(fake), CHUNK):
        metric.update(fake[start:start + CHUNK].double(), real=False)
    return float(metric.compute())


def kernel_inception_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100,
                              max_subset_size: int = 1000, seed: int = 0) -> dict:
    """KID mean and std; subsets of min(max_subset_size, N_real, N_fake) features."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(max_subset_size, len(real), len(fake))
    if size < 2:
        return {"kid_mean": None, "kid_std": None, "kid_subset_size": size}
    metric = _quiet(KernelInceptionDistance, feature=PrecomputedFeatures(real.shape[1]), subsets=subsets,
                    subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"kid_mean": float(mean), "kid_std": _none_if_nan(float(std)), "kid_subset_size": size}
