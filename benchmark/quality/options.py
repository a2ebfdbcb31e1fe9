"""Options of the quality metrics: the `quality` section of a run configuration and what
`bench quality` builds from its flags. A leaf (pydantic only), so the run configuration can embed
it without importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

WEIGHTS_ENV = "SIAS_BENCH_QUALITY_WEIGHTS"  # the weights folder when no option names one
# the metrics of a quality report (docs/quality.md), per defect type, category and mean
METRICS = ("is", "is_std", "fid", "kid_mean", "kid_std", "lpips_nearest_real", "ic_lpips", "ic_lpips_anomaly")
DEFAULT_CLUSTER_CAP = 140  # images per IC-LPIPS cluster, as SeaS's evaluation code: see benchmark/quality/ic_lpips.py


class QualityOptions(BaseModel):
    """How the quality metrics run; also the `quality` section of a run configuration."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False  # for `bench run`: compute after generation (on by default in the `paper` profile)
    features: Literal["inception", "random-test"] = "inception"
    weights: str | None = None  # folder of weight files; default $SIAS_BENCH_QUALITY_WEIGHTS
    lpips_net: Literal["alex", "vgg"] = "vgg"
    image_size: int = Field(256, ge=16)  # SeaS/AnomalyDiffusion resize to 256 x 256 before IS and LPIPS
    reference: Literal["all", "train", "holdout"] = "all"
    cluster_cap: int = Field(DEFAULT_CLUSTER_CAP, ge=2)
    # IC-LPIPS: a cluster with fewer than two images scores 0 (SeaS's code) or is left out
    small_clusters: Literal["zero", "skip"] = "zero"
    is_splits: int = Field(10, ge=1)
    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(1000, ge=2)
    batch_size: int = Field(16, ge=1)
    lpips_memory_mb: float = Field(512, gt=0)
    seed: int = 0
