"""IC-LPIPS: intra-cluster pairwise LPIPS distance (Ojha et al., CVPR 2021, "Few-shot image
generation via cross-domain correspondence", Sec. 4), as AnomalyDiffusion (Sec. 4 "Metric";
supplement C.2) and SeaS (appendix A.3 "Metrics"; Tables 19-21 in A.6) use it for anomaly diversity:

1. the real few-shot training anomalies of a defect type are the k cluster centres;
2. each generated image joins the centre it is closest to under LPIPS (ties: the first centre);
3. per cluster, the mean LPIPS over all pairs of its generated members, a cluster with more than
   `cap` members represented by `cap` of them drawn at random (seeded);
4. IC-LPIPS = the mean over the k clusters, a cluster with fewer than two members scoring 0
   (`small_clusters="zero"`), or over the clusters with a pair only (`"skip"`).

The papers' text gives neither the cap nor the rule for small clusters. SeaS's public evaluation
code ([EXT], the script behind its Table 19, whose AnomalyDiffusion column matches AnomalyDiffusion's
own Table 1) caps clusters at 140 images and scores a cluster of at most one image as 0: those are
the defaults. The cost is quadratic in the cluster size: cap^2/2 LPIPS pairs per cluster at
most, whatever the set size.

The functions here take distances, not images, so the algorithm can be checked on a toy distance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from benchmark.quality.options import DEFAULT_CLUSTER_CAP


@dataclass
class ICLPIPSResult:
    value: float | None  # None: no cluster with two members
    cluster_sizes: list[int] = field(default_factory=list)  # members per centre, before the cap
    scored_clusters: int = 0


def assign_to_centres(distance_to_centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre per generated image (rows: images, columns: centres).

    NaN distances (an undefined region distance) never win; a row of NaNs joins no cluster (-1)."""
    d = np.where(np.isnan(distance_to_centres), np.inf, distance_to_centres)
    out = np.argmin(d, axis=1)
    out[np.all(np.isinf(d), axis=1)] = -1
    return out


def cluster_members(assignment: np.ndarray, n_centres: int, cap: int, seed: int = 0) -> list[list[int]]:
    """Members of each cluster (sorted), at most `cap` drawn at random without replacement,
    reproducibly per (seed, centre)."""
    clusters = []
    for centre in range(n_centres):
        members = np.flatnonzero(assignment == centre)
        if len(members) > cap:
            rng = np.random.default_rng([seed, centre])
            members = np.sort(rng.choice(members, size=cap, replace=False))
        clusters.append([int(m) for m in members])
    return clusters


def intra_cluster_lpips(distance_to_centres: np.ndarray,
                        pairwise: Callable[[Sequence[int]], np.ndarray],
                        cap: int = DEFAULT_CLUSTER_CAP, seed: int = 0,
                        small_clusters: Literal["zero", "skip"] = "zero") -> ICLPIPSResult:
    """IC-LPIPS from the generated-to-centre distances and a function giving the pairwise
    distance matrix of a list of generated images. small_clusters: a cluster with fewer than two
    members scores 0 and counts ("zero", SeaS's code) or is left out ("skip"). A cluster whose
    pairs all lack a distance (IC-LPIPS(a): both masks empty) is left out either way."""
    if cap < 2:
        raise ValueError("IC-LPIPS needs a cluster cap of at least 2")
    if small_clusters not in ("zero", "skip"):
        raise ValueError(f"small_clusters must be 'zero' or 'skip', not {small_clusters!r}")
    n_centres = distance_to_centres.shape[1]
    assignment = assign_to_centres(distance_to_centres)
    sizes = [int((assignment == c).sum()) for c in range(n_centres)]
    means = []
    for members in cluster_members(assignment, n_centres, cap, seed):
        if len(members) < 2:
            if small_clusters == "zero":
                means.append(0.0)
            continue
        d = pairwise(members)
        upper = d[np.triu_indices(len(members), k=1)]
        upper = upper[~np.isnan(upper)]
        if len(upper):
            means.append(float(upper.mean()))
    return ICLPIPSResult(float(np.mean(means)) if means else None, sizes, len(means))
