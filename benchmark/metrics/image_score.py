"""One anomaly score per image from its map (the rule is `MetricOptions.image_score`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def image_scores(maps: np.ndarray, rule: str, pool_kernel: int = 21) -> np.ndarray:
    """maps: float32 BxHxW in [0, 1] -> float64 (B,).

    max: SeaS / LFD (`pred.max()`). mean: the map average. pooled-max: DRAEM and AnomalyDiffusion,
    `avg_pool2d(map, K, stride=1, padding=K // 2).max()` with zero padding counted in the average
    (PyTorch's default `count_include_pad=True`), K = 21 in both.
    """
    flat = maps.reshape(maps.shape[0], -1)
    if rule == "max":
        return flat.max(axis=1).astype(np.float64)
    if rule == "mean":
        return flat.mean(axis=1, dtype=np.float64)
    if rule == "pooled-max":
        t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float64)).unsqueeze(1)
        pooled = F.avg_pool2d(t, pool_kernel, stride=1, padding=pool_kernel // 2, count_include_pad=True)
        return pooled.flatten(1).amax(dim=1).numpy()
    raise ValueError(f"unknown image score rule {rule!r}")
