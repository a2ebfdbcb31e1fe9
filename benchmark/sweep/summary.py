"""The end of a sweep: one row per (dataset, generator, segmenter) with each metric's mean and
spread over the seeds, and a leaderboard of the seed means.

Written into the sweep folder:
  summary.json   per row: the cells behind it (seeds, results.json paths), and per metric of the
                 results' `mean` block: mean, std (sample standard deviation over seeds, n - 1 in
                 the denominator; null for one seed) and n
  summary.csv    the same, one line per row and metric
  summary.md     the table in percent, `mean ± std`
  results/<dataset>-<generator>-<segmenter>.json   a results.json of the seed mean (per category
                 and overall), so `bench leaderboard --results <sweep>/results` and `bench compare`
                 read it like any run
  leaderboard.md the leaderboard of those rows (reproduced rows only, one protocol group per
                 dataset x segmenter), as `bench leaderboard --results <sweep>/results --no-reported`
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

from benchmark.formatting import is_missing, json_safe, percent
from benchmark.leaderboard.reproduced import flatten, unflatten
from benchmark.results import mean_table
from benchmark.storage import atomic_write_text

SUMMARY_COLUMNS = [  # (metric path in results.json, header, group), as the run's table shows them
    ("image.auroc", "I-AUROC", "image"), ("image.ap", "I-AP", "image"), ("pixel.auroc", "P-AUROC", "pixel"),
    ("pixel.ap", "P-AP", "pixel"), ("pixel.f1_max", "P-F1", "pixel"), ("pixel.pro", "PRO", "pixel"),
    ("pixel.iou", "IoU", "pixel"), ("miou", "mIoU", "segmentation"),
]


def seed_statistics(values: list[float]) -> dict:
    """Mean and sample standard deviation (n - 1) of one metric over seeds; undefined seeds
    (NaN, a metric a run could not compute) are left out and counted in n only when defined."""
    kept = [v for v in values if not is_missing(v)]
    return {"mean": statistics.fmean(kept) if kept else None,
            "std": statistics.stdev(kept) if len(kept) > 1 else None,
            "n": len(kept)}


def seed_mean_results(runs: list[dict], seeds: list[int]) -> dict:
    """A results.json of the mean over seeds: each category's metrics averaged over the runs,
    the overall mean recomputed from those; config and provenance of the first run, plus the
    seeds and run ids behind it."""
    first = runs[0]
    categories = {}
    for name in sorted(first["categories"]):
        per_run = [flatten(r["categories"].get(name) or {}) for r in runs]
        keys = sorted({k for p in per_run for k in p})
        categories[name] = unflatten({k: seed_statistics([p.get(k, math.nan) for p in per_run])["mean"]
                                      for k in keys})
        categories[name] = _none_to_nan(categories[name])
    config = json.loads(json.dumps(first["config"]))
    config["seed"] = None  # a mean over seeds, not one seed
    return {"run": {**first["run"], "id": f"{first['run'].get('id', 'run')}-mean-of-{len(runs)}-seeds",
                    "seeds": seeds, "runs": [r["run"].get("id") for r in runs]},
            "config": config, "categories": categories,
            "mean": mean_table(categories) if categories else {}, "timings": {}}


def _none_to_nan(entry: dict) -> dict:
    return {k: _none_to_nan(v) if isinstance(v, dict) else (math.nan if v is None else v) for k, v in entry.items()}


def write_summary(sweep_folder: str, cells: list[dict]) -> str:
    """The summary files of a sweep from its cells ({dataset, generator, segmenter, seed, folder});
    cells without results.json are listed as missing. Returns summary.md's path. Runs as the
    sweep's last job (on SLURM after every cell ended), or in `bench sweep` itself."""
    folder = Path(sweep_folder)
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for cell in cells:
        groups.setdefault((cell["dataset"], cell["generator"], cell["segmenter"]), []).append(cell)
    rows, missing = [], []
    results_dir = folder / "results"
    for (dataset, generator, segmenter), members in groups.items():
        found = []
        for cell in sorted(members, key=lambda c: c["seed"]):
            path = Path(cell["folder"]) / "results.json"
            if path.exists():
                found.append((cell, json.loads(path.read_text())))
            else:
                missing.append(cell)
        if not found:
            continue
        metrics = sorted({k for _, r in found for k in flatten(r.get("mean") or {})})
        row = {"dataset": dataset, "generator": generator, "segmenter": segmenter,
               "seeds": [c["seed"] for c, _ in found], "runs": [str(Path(c["folder"]) / "results.json") for c, _ in found],
               "metrics": {m: seed_statistics([flatten(r.get("mean") or {}).get(m, math.nan) for _, r in found])
                           for m in metrics}}
        rows.append(row)
        mean_results = seed_mean_results([r for _, r in found], row["seeds"])
        atomic_write_text(results_dir / f"{dataset}-{generator}-{segmenter}.json",
                          json.dumps(json_safe(mean_results), indent=2, allow_nan=False))
    written = {f"{r['dataset']}-{r['generator']}-{r['segmenter']}.json" for r in rows}
    for stale in results_dir.glob("*.json") if results_dir.exists() else []:
        if stale.name not in written:  # a row of an earlier grid: not in this summary nor its leaderboard
            stale.unlink()
    summary = {"rows": rows, "missing": [c["folder"] for c in missing]}
    atomic_write_text(folder / "summary.json", json.dumps(json_safe(summary), indent=2))
    atomic_write_text(folder / "summary.csv", summary_csv(rows))
    table = summary_table(rows)
    note = f"\n{len(missing)} cell(s) without results (not finished or failed).\n" if missing else ""
    atomic_write_text(folder / "summary.md", f"# Sweep summary\n\n{table.markdown()}{note}")
    if rows:
        write_leaderboard(results_dir, folder / "leaderboard.md")
    return str(folder / "summary.md")


def summary_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "generator", "segmenter", "metric", "mean", "std", "n", "seeds"])
    for row in rows:
        for metric, s in row["metrics"].items():
            writer.writerow([row["dataset"], row["generator"], row["segmenter"], metric,
                             "" if s["mean"] is None else s["mean"], "" if s["std"] is None else s["std"], s["n"],
                             " ".join(str(seed) for seed in row["seeds"])])
    return buf.getvalue()


def summary_table(rows: list[dict]):
    """The summary as a MetricTable (percent, `mean ± std`): fits the terminal, or Markdown."""
    from benchmark.tables import Column, MetricTable

    def cell(stats: dict | None) -> str:
        if not stats or stats["mean"] is None:
            return "-"
        return percent(stats["mean"]) + ("" if stats["std"] is None else f" ± {percent(stats['std'])}")

    table_rows = [(f"{r['dataset']} · {r['generator']} · {r['segmenter']} (n={len(r['seeds'])})",
                   {key: cell(r["metrics"].get(key)) for key, _, _ in SUMMARY_COLUMNS}) for r in rows]
    return MetricTable("sweep: mean ± std over seeds (%)", "dataset · generator · segmenter",
                       [Column(*c) for c in SUMMARY_COLUMNS], table_rows)


def write_leaderboard(results_dir: Path, out: Path) -> None:
    """`bench leaderboard --results <results_dir> --no-reported --out <out>`, the seed means as rows."""
    from benchmark.leaderboard.layout import build
    from benchmark.leaderboard.reproduced import load_reproduced
    from benchmark.leaderboard.render import render_markdown

    board = build(load_reproduced([results_dir]))
    if board.sections:
        atomic_write_text(out, render_markdown(board, link_dir=out.parent, title="Sweep leaderboard",
                                               preamble="Each row: the mean over the sweep's seeds "
                                                        "(summary.md has the spread)."))
