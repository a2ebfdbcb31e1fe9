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

A two-fold run (`split.folds=2`, benchmark/run/folds.py) adds `"folds": [{fold, folder, categories,
mean, timings, evaluation, synthetic_set, synthetic_pairs}, ...]`, each fold's own table as its
`<folder>/results.json` has it; its top-level `categories` are then the mean over the folds of each
category's metrics (`fold_mean`), `mean` the mean of those over categories, and `timings` each
stage's seconds summed over the folds. `bench compare`, the leaderboard and the printed table read
the top-level (averaged) tables.

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


def fold_mean(folds: list[dict[str, dict]]) -> dict[str, dict]:
    """Per-category tables of the folds -> per category, the mean over folds of every metric (BADG
    Sec. 4.3.1: "we report the average performance of each split fold"); a metric undefined (NaN) in
    one fold is the other fold's value, as `mean_table` skips NaN."""
    names = sorted({c for fold in folds for c in fold})
    return {c: mean_table({str(k): _nulls_as_nan(fold[c]) for k, fold in enumerate(folds) if c in fold})
            for c in names}


def _nulls_as_nan(entry: dict) -> dict:
    """A table read back from results.json (NaN written as null) with its NaN again, so a metric
    undefined in the first fold keeps its key (`mean_table` takes the keys of the first entry)."""
    return {k: _nulls_as_nan(v) if isinstance(v, dict) else float("nan") if v is None else v
            for k, v in entry.items()}


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
