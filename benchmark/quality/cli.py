"""`bench quality`: generation-quality metrics of a synthetic set (see docs/quality.md).

    bench quality --synthetic runs/x --json quality.json
    bench quality --synthetic <set folder> --real /data/mvtec --layout mvtec --weights /models/quality
    bench quality --synthetic runs/x --features random-test      # tests/smoke: NOT comparable

Exit codes: 0 done, 2 bad input or missing weights (one line on stderr naming the file; no JSON
is written in that case).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

LAYOUT_CHOICES = ["mvtec", "visa", "btad", "mvtec3d", "loco", "folder"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from benchmark.quality.options import DEFAULT_CLUSTER_CAP, WEIGHTS_ENV  # a leaf: no torch at parser build

    p.add_argument("--synthetic", required=True, help="a synthetic set folder, or a run folder (uses its synthetic/ and split.json)")
    p.add_argument("--real", default=None, help="real dataset root (default: the run folder's split, else the demo dataset)")
    p.add_argument("--layout", default="mvtec", choices=LAYOUT_CHOICES, help="layout of --real (default mvtec)")
    p.add_argument("--split-fraction", type=float, default=1 / 3,
                   help="with --real: share of each defect type's real images that are training anomalies (default 1/3)")
    p.add_argument("--json", dest="json_path", default=None, help="write the report here (atomically)")
    # the quality options default to a run folder's own settings (so the report is the run's), else
    # to QualityOptions' defaults: None here means "not given"
    p.add_argument("--features", default=None, choices=["inception", "random-test"],
                   help="inception: real weights (comparable, the default); random-test: random networks for tests, NOT comparable")
    p.add_argument("--weights", default=None, help=f"folder of weight files (default ${WEIGHTS_ENV}); see docs/quality.md")
    p.add_argument("--lpips-net", default=None, choices=["vgg", "alex"], help="LPIPS trunk (default vgg, as the IC-LPIPS protocol)")
    p.add_argument("--image-size", type=int, default=None, help="every image is resized to this square size (default 256)")
    p.add_argument("--reference", default=None, choices=["all", "train", "holdout"],
                   help="real anomalies for FID/KID/nearest LPIPS (default all; IC-LPIPS centres are always the training ones)")
    p.add_argument("--cluster-cap", type=int, default=None,
                   help=f"images per IC-LPIPS cluster (random sample; default {DEFAULT_CLUSTER_CAP}, as SeaS's code)")
    p.add_argument("--small-clusters", default=None, choices=["zero", "skip"],
                   help="IC-LPIPS: a cluster of fewer than two images scores 0 (default, SeaS's code) or is left out")
    p.add_argument("--batch-size", type=int, default=None, help="default 16")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.epilog = ("With a run folder as --synthetic, every option not given takes the run's own `quality` "
                "settings (config.json), so the report is the one the run computed.")


_OPTION_FLAGS = ("features", "weights", "lpips_net", "image_size", "reference", "cluster_cap", "small_clusters",
                 "batch_size", "seed")


def options_from_args(args):
    """QualityOptions from the flags given, over the run's own `quality` settings when --synthetic
    is a run folder (its config.json), over the defaults otherwise."""
    from benchmark.quality.options import QualityOptions

    given = {name: getattr(args, name) for name in _OPTION_FLAGS if getattr(args, name) is not None}
    return QualityOptions.model_validate({**_run_quality_settings(Path(args.synthetic)), **given})


def _run_quality_settings(folder: Path) -> dict:
    import json

    from benchmark.errors import BenchError

    config = folder / "config.json"
    if not config.is_file():
        return {}
    try:
        settings = json.loads(config.read_text()).get("quality", {})
    except (OSError, ValueError, AttributeError) as e:
        raise BenchError(f"{config}: not a run configuration ({e}); pass the options as flags or fix the file") from e
    return {k: v for k, v in settings.items() if k != "enabled"}


def main(args) -> int:
    """Run `bench quality`; BenchError (bad input, missing weights) -> one line on stderr, exit 2."""
    from benchmark.errors import BenchError

    try:
        from benchmark.quality.evaluate import evaluate_synthetic_set, write_report

        report = evaluate_synthetic_set(Path(args.synthetic), Path(args.real) if args.real else None,
                                        options_from_args(args), layout=args.layout,
                                        split_fraction=args.split_fraction)
    except BenchError as e:
        if getattr(args, "debug", False):
            raise
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    if args.json_path:
        write_report(report, Path(args.json_path))
    if not getattr(args, "quiet", False):
        from benchmark.quality.evaluate import quality_metric_table
        from benchmark.tables import output_console, print_tables

        console = output_console()
        print_tables(quality_metric_table(report), console)
        if not report["comparable"]:
            console.print(f"warning: {report['warning']}")
    if args.json_path:
        print(f"quality: {args.json_path}")
    return 0


run = main  # benchmark.cli's DELEGATED table calls `run(args)` next to `add_arguments(parser)`


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench quality")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
