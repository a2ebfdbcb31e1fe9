"""results.json: the per-category table every report, leaderboard and regression check reads.

    {"run": {id, time, versions, config_hash, precision, determinism, world_size, git_commit, git_dirty},
     "config": {...resolved}, "categories": {"<cat>":
     {"image": {auroc, ap, f1_max}, "pixel": {auroc, ap, f1_max, pro, iou, ...}, "miou", "acc", ...}},
     "mean": {same keys}, "timings": {stage: seconds},
     "evaluation": {metric_options, image_size: [H, W], categories: {"<cat>": {mode, image_sizes}}},
     "quality": {...}}   (with quality.enabled: the generation-quality report, docs/quality.md)

`run.precision` is the Lightning precision the run resolved and `run.determinism` its determinism
mode with the reason (unset in the configuration: per profile and device, benchmark/run/gpu_policy.py);
`run.world_size` the number of processes; `run.git_commit`/`git_dirty` are there when the code ran from a git
checkout. `evaluation` says how the numbers were computed: the resolved metric options, the map
size the metrics were computed at, and per category whether the pixel curves were `exact` or
`binned` (mode `auto` decides by the pixel count).

Metrics are fractions in [0, 1]. The mean of a metric skips categories where it is undefined (NaN,
e.g. AUROC of a category with no defect) and is NaN only if it is undefined everywhere; NaN is
written as null, so results.json is strict JSON.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone


def mean_table(categories: dict[str, dict]) -> dict:
    def mean_of(values):
        vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        return sum(vals) / len(vals) if vals else float("nan")

    first = next(iter(categories.values()))
    out = {}
    for key, value in first.items():
        if isinstance(value, dict):
            out[key] = mean_table({c: categories[c][key] for c in categories})
        elif isinstance(value, (int, float)):
            out[key] = mean_of(categories[c].get(key) for c in categories)
    return out


def build_results(*, run_id: str, config: dict, config_hash: str, versions: dict, categories: dict,
                  timings: dict, evaluation: dict | None = None, **extra) -> dict:
    categories = {k: categories[k] for k in sorted(categories)}
    results = {
        "run": {"id": run_id, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "versions": versions, "config_hash": config_hash, **extra},
        "config": config,
        "categories": categories,
        "mean": mean_table(categories) if categories else {},
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    if evaluation is not None:
        results["evaluation"] = evaluation
    return results


def flat_metrics(entry: dict, prefix: str = "") -> dict[str, float]:
    """{"image": {"auroc": x}} -> {"image_auroc": x}"""
    out = {}
    for k, v in entry.items():
        if isinstance(v, dict):
            out.update(flat_metrics(v, f"{prefix}{k}_"))
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = float(v)
    return out
