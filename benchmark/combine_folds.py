"""`bench combine-folds`: the averaged table of a two-fold protocol whose folds ran as separate
runs, e.g. one job per device or per cluster node:

    bench run --generator badg --segmenter unet --profile paper --set split.fold=1 --output runs/badg-f1
    bench run --generator badg --segmenter unet --profile paper --set split.fold=2 --output runs/badg-f2
    bench combine-folds runs/badg-f1 runs/badg-f2 --output runs/badg

writes to `--output` what a one-process `split.folds=2` run writes to its folder: results.json (the
per-category mean over the folds, each fold's table under `folds`), metrics.csv, per_category.png
(benchmark/run/folds.py). The leaderboard reads it as one run. Each fold logged its own W&B run; the
average is not logged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folds", nargs="+", help="finished run folders, one per fold (each ran with --set split.fold=k)")
    parser.add_argument("--output", required=True, help="folder for the averaged results.json, metrics.csv, per_category.png")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing results.json in --output")
    parser.add_argument("--format", default="table", choices=["table", "md", "csv", "json"],
                        help="how to print the averaged table (as bench run)")


def run(args) -> int:
    from benchmark.cli import print_results
    from benchmark.run.folds import combine_fold_runs

    output = Path(args.output)
    results = combine_fold_runs([Path(f) for f in args.folds], output, overwrite=args.overwrite)
    print_results(results, args.format, quiet=getattr(args, "quiet", False))
    print(f"results: {output / 'results.json'}", file=sys.stdout if args.format == "table" else sys.stderr)
    return 0
