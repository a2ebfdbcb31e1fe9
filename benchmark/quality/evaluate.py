"""Generation quality of a synthetic set: IS, FID, KID, LPIPS to the nearest real anomaly,
IC-LPIPS and IC-LPIPS on the anomaly region, per defect type, per category and mean.

Aggregation follows the papers: AnomalyDiffusion (Sec. 4) and SeaS (appendix A.3 "Metrics", Tables 19-21)
compute IS and IC-LPIPS per anomaly type and report per product, so a category's IS / IC-LPIPS
/ IC-LPIPS(a) is the mean over its defect types; BADG (Sec. 4.2, Tables 1 and 3) and DefectDiffu
(Sec. 4.1-4.2, Table 1) report FID / LPIPS per category, so a category's FID and KID pool all its
generated images against all its real anomalies, and its nearest-real LPIPS is the mean over all
its generated images. The mean row averages the categories (the papers' "Average" rows).

Memory: images are streamed in batches; what is kept is one category's Inception features
(2048 floats per image) and LPIPS features within the `LPIPSDistance` memory budget.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmark.quality.ic_lpips import intra_cluster_lpips
from benchmark.quality.image_sets import (DefectGroup, check_files, defect_groups, image_loader, load_split,
                                          resolve_synthetic_root, uint8_batches)
from benchmark.quality.inception_metrics import frechet_distance, inception_score, kernel_inception_distance
from benchmark.quality.lpips_distance import LPIPSDistance
from benchmark.quality.networks import NOT_COMPARABLE, FeatureNetworks, load_feature_networks
from benchmark.quality.options import METRICS, QualityOptions

log = logging.getLogger(__name__)

MEAN_OVER_TYPES = ("is", "is_std", "ic_lpips", "ic_lpips_anomaly")


def evaluate_synthetic_set(synthetic_root, split_or_real_root=None, options: QualityOptions | dict | None = None,
                           layout: str = "mvtec", split_fraction: float = 1 / 3,
                           networks: FeatureNetworks | None = None, on_defect=None) -> dict:
    """The quality report of a synthetic set (a set folder or a run folder) as a dict.

    split_or_real_root: a FewShotSplit (the runner passes its own), a real dataset folder (read
    with `layout`, split with `split_fraction`), or None (the run folder's split.json, else the
    demo dataset). Raises BenchError before computing anything when the input is unusable, and
    MissingWeightsError (exit code 2) when weight files are missing. on_defect(category, defect):
    called after each defect type (the runner's progress bar)."""
    from benchmark.data.split import FewShotSplit

    opts = QualityOptions.model_validate(options or {})
    root, run_folder = resolve_synthetic_root(Path(synthetic_root))
    if isinstance(split_or_real_root, FewShotSplit):
        split, real_source = split_or_real_root, "run split"
    else:
        real_root = Path(split_or_real_root) if split_or_real_root is not None else None
        cache = Path(os.environ["SIAS_BENCH_CACHE"]) if os.environ.get("SIAS_BENCH_CACHE") else None
        split, real_source = load_split(run_folder, real_root, layout, split_fraction, cache)
    groups = defect_groups(root, split, opts.reference)
    check_files(groups)
    nets = networks or load_feature_networks(opts.features, opts.lpips_net, opts.weights)
    start = time.perf_counter()
    distance = LPIPSDistance(nets.lpips, opts.lpips_memory_mb, opts.batch_size)

    categories: dict[str, dict] = {}
    for category in sorted({g.category for g in groups}):
        members = [g for g in groups if g.category == category]
        categories[category] = _category(members, nets, distance, opts, on_defect)
    report = {
        "comparable": nets.comparable,
        "features": nets.backend,
        "protocol": {**opts.model_dump(exclude={"enabled", "weights"}), "lpips_net": nets.lpips_net,
                     "centres": "real few-shot training anomalies of the defect type",
                     "category_aggregation": {"mean_over_defect_types": list(MEAN_OVER_TYPES),
                                              "pooled_over_category": ["fid", "kid_mean", "kid_std",
                                                                       "lpips_nearest_real"]}},
        "synthetic_set": str(root),
        "real": real_source,
        "weights": nets.files,
        "categories": categories,
        "mean": _mean([c["metrics"] for c in categories.values()]),
        "seconds": round(time.perf_counter() - start, 3),
    }
    if not nets.comparable:
        report["warning"] = NOT_COMPARABLE
    return report


def _features(items, nets: FeatureNetworks, opts: QualityOptions) -> tuple[torch.Tensor, torch.Tensor]:
    pools, logits = [], []
    for batch in uint8_batches(items, opts.image_size, opts.batch_size):
        pool, logit = nets.inception(batch)
        pools.append(pool.float())
        logits.append(logit.float())
    return torch.cat(pools), torch.cat(logits)


def _defect(group: DefectGroup, nets, distance: LPIPSDistance, opts) -> tuple[dict, dict]:
    """Metrics of one defect type, and what the category pools (features, nearest distances)."""
    gen_pool, gen_logits = _features(group.generated, nets, opts)
    # reference and centres overlap (centres are training anomalies): one column set for both
    columns = list(dict.fromkeys(group.reference + group.centres))
    ref_cols = [columns.index(i) for i in group.reference]
    centre_cols = [columns.index(i) for i in group.centres]
    ref_pool, _ = _features(group.reference, nets, opts) if group.reference else (torch.zeros(0, gen_pool.shape[1]), None)

    gen_load = image_loader(group.generated, opts.image_size)
    glob, region = distance.cross(gen_load, len(group.generated), image_loader(columns, opts.image_size), len(columns))
    nearest = glob[:, ref_cols].min(axis=1) if ref_cols else np.full(len(group.generated), np.nan)

    cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def pairwise(members, which):
        key = tuple(members)
        if key not in cache:
            sub = [group.generated[m] for m in members]
            cache[key] = distance.pairwise(image_loader(sub, opts.image_size), len(sub))
        return cache[key][which]

    ic = intra_cluster_lpips(glob[:, centre_cols], lambda m: pairwise(m, 0), opts.cluster_cap, opts.seed,
                             opts.small_clusters)
    ic_a = intra_cluster_lpips(region[:, centre_cols], lambda m: pairwise(m, 1), opts.cluster_cap, opts.seed,
                               opts.small_clusters)
    is_ = inception_score(gen_logits, opts.is_splits, opts.seed)
    kid = kernel_inception_distance(ref_pool, gen_pool, opts.kid_subsets, opts.kid_subset_size, opts.seed)
    metrics = {
        "is": is_["is"], "is_std": is_["is_std"],
        "fid": frechet_distance(ref_pool, gen_pool),
        "kid_mean": kid["kid_mean"], "kid_std": kid["kid_std"],
        "lpips_nearest_real": _nanmean(nearest),
        "ic_lpips": ic.value,
        "ic_lpips_anomaly": ic_a.value,
    }
    counts = {"is_splits": is_["is_splits"], "kid_subset_size": kid["kid_subset_size"],
              "n_generated": len(group.generated), "n_reference": len(group.reference),
              "n_centres": len(group.centres), "cluster_sizes": ic.cluster_sizes,
              "cluster_sizes_anomaly": ic_a.cluster_sizes}
    return {"metrics": metrics, **counts}, {"pool": gen_pool, "ref_pool": ref_pool, "nearest": nearest}


def _category(groups: list[DefectGroup], nets, distance, opts, on_defect=None) -> dict:
    defects, pooled = {}, []
    for group in groups:
        log.debug("quality: %s/%s (%d generated)", group.category, group.defect, len(group.generated))
        defects[group.defect], keep = _defect(group, nets, distance, opts)
        pooled.append(keep)
        if on_defect is not None:
            on_defect(group.category, group.defect)
    per_type = [d["metrics"] for d in defects.values()]
    metrics = {k: _mean_of([m[k] for m in per_type]) for k in MEAN_OVER_TYPES}
    gen = torch.cat([p["pool"] for p in pooled])
    ref = torch.cat([p["ref_pool"] for p in pooled])
    kid = kernel_inception_distance(ref, gen, opts.kid_subsets, opts.kid_subset_size, opts.seed)
    metrics.update({"fid": frechet_distance(ref, gen), "kid_mean": kid["kid_mean"], "kid_std": kid["kid_std"],
                    "lpips_nearest_real": _nanmean(np.concatenate([p["nearest"] for p in pooled]))})
    return {"metrics": {k: metrics[k] for k in METRICS}, "defects": defects}


def _nanmean(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    return float(x.mean()) if len(x) else None


def _mean_of(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _mean(rows: list[dict]) -> dict:
    return {k: _mean_of([r.get(k) for r in rows]) for k in METRICS}


# -- outputs -------------------------------------------------------------------------------------
def write_report(report: dict, path: Path) -> None:
    """Atomically: a reader (or a crash) never sees half a JSON file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True))
    tmp.replace(path)


def wandb_metrics(report: dict) -> dict[str, float]:
    """Flat scalars for W&B. Random-test numbers go under `quality_random_test/` (never
    `quality/`), so they cannot be mixed with comparable ones in a chart."""
    prefix = "quality" if report["comparable"] else "quality_random_test"
    out = {}
    for name, entry in [*report["categories"].items(), ("mean", {"metrics": report["mean"]})]:
        for key, value in entry["metrics"].items():
            if value is not None:
                out[f"{prefix}/{name}/{key}"] = value
    return out


QUALITY_COLUMNS = {"is": "IS", "fid": "FID", "kid_mean": "KID", "lpips_nearest_real": "LPIPS-real",
                   "ic_lpips": "IC-LPIPS", "ic_lpips_anomaly": "IC-LPIPS(a)"}


def quality_title(report: dict) -> str:
    """The table title; says when the numbers are not comparable."""
    return "generation quality" + ("" if report["comparable"] else " (random-test features: NOT COMPARABLE)")


def quality_metric_table(report: dict):
    """Categories (each followed by its defect types) and the mean x metrics, as a MetricTable
    (fits the terminal; also Markdown)."""
    from benchmark.tables import Column, MetricTable

    def cells(m):
        return {k: "-" if m.get(k) is None else f"{m[k]:.4g}" for k in QUALITY_COLUMNS}

    rows = []
    for name, cat in report["categories"].items():
        rows.append((name, cells(cat["metrics"])))
        rows.extend((f"  {defect}", cells(entry["metrics"])) for defect, entry in cat["defects"].items())
    rows.append(("mean", cells(report["mean"])))
    columns = [Column(k, h, "quality") for k, h in QUALITY_COLUMNS.items()]
    return MetricTable(quality_title(report), "category / defect", columns, rows,
                       bold={*report["categories"], "mean"})
