"""`bench sweep`: arguments, the grid they describe, and the launch."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from benchmark.errors import BenchError

log = logging.getLogger(__name__)


# the dataset checks are `bench run`'s and name its flags; a grid sets the same values as keys
RUN_FLAGS_IN_A_GRID = (" (in a grid file, --data-root, --layout and --categories are the keys root:, layout: and "
                       "categories: of the cell's datasets entry, or of base: data:)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="grid file: base (a run configuration, the `bench run --config` format), generators, "
                             "segmenters, datasets, seeds, launcher (docs/sweep.md); flags replace its entries")
    parser.add_argument("--generators", help="comma-separated generator names (see `bench list`)")
    parser.add_argument("--segmenters", help="comma-separated segmenter names")
    parser.add_argument("--datasets", help="comma-separated: demo, a dataset folder, or <layout>:<folder> "
                                           "(e.g. mvtec:/data/mvtec_ad,visa:/data/visa); default: the base's data")
    parser.add_argument("--seeds", help="comma-separated seeds (default 0)")
    parser.add_argument("--profile", choices=["smoke", "paper"], help="the base configuration's profile")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the base run configuration, as `bench run --set` (repeatable)")
    parser.add_argument("--output", required=True, help="the sweep folder (run it again to resume: done cells are skipped)")
    parser.add_argument("--no-wandb", action="store_true", help="cells do not log to Weights & Biases")
    parser.add_argument("--cache-dir", default=None, help="demo data, tiny models and synthetic sets, shared by "
                        "every job (on SLURM: a folder every node sees)")
    launcher = parser.add_argument_group("launcher")
    launcher.add_argument("--launcher", choices=["local", "slurm"],
                          help="local (default): in turn here, or one job per visible GPU; slurm: submitit")
    launcher.add_argument("--partition", help="slurm: partition")
    launcher.add_argument("--gpus-per-job", type=int, help="slurm: GPUs per job (default 1)")
    launcher.add_argument("--cpus-per-job", type=int, help="slurm: CPUs per job")
    launcher.add_argument("--mem-gb", type=float, help="slurm: memory per job")
    launcher.add_argument("--time", dest="time_min", type=int, metavar="MINUTES",
                          help="time limit per job (slurm: default 240; local: none)")
    launcher.add_argument("--array-parallelism", type=int, metavar="N",
                          help="slurm: at most N jobs of one array at once (default 16)")
    launcher.add_argument("--account", help="slurm: account")
    launcher.add_argument("--qos", help="slurm: quality of service")
    launcher.add_argument("--wait", action="store_true", default=None,
                          help="slurm: stay until the jobs ended and print the summary (default: submit and exit)")


def grid_settings(args) -> tuple[dict, str]:
    """The grid as a raw mapping: the --config file (or the sweep folder's sweep.yaml when
    neither a file nor axes are given), with the flags on top. Returns it and its source name."""
    from benchmark.config import deep_merge, parse_override
    from benchmark.sweep.grid import GRID_FILE, load_grid_file

    stored = Path(args.output).expanduser() / GRID_FILE
    axes = {k: getattr(args, k) for k in ("generators", "segmenters", "datasets", "seeds")}
    if args.config:
        raw, source = load_grid_file(args.config), str(args.config)
    elif stored.exists() and not any(axes.values()):
        raw, source = load_grid_file(stored), str(stored)  # `bench sweep --output DIR` continues DIR
    else:
        raw, source = {}, "the command line"
    for key, value in axes.items():
        if value:
            items = [v.strip() for v in value.split(",") if v.strip()]
            if key == "seeds":
                try:
                    items = [int(v) for v in items]
                except ValueError:
                    raise BenchError(f"--seeds {value}: seeds are whole numbers, e.g. --seeds 0,1,2") from None
            raw[key] = items
    base = dict(raw.get("base") or {})
    if args.profile:
        base["profile"] = args.profile
    if args.no_wandb:
        base["wandb"] = False
    for text in args.overrides:
        base = deep_merge(base, parse_override(text))
    raw["base"] = base
    launcher = dict(raw.get("launcher") or {})
    for key in ("partition", "gpus_per_job", "cpus_per_job", "mem_gb", "time_min", "array_parallelism", "account",
                "qos", "wait"):
        if getattr(args, key) is not None:
            launcher[key] = getattr(args, key)
    if args.launcher:
        launcher["name"] = args.launcher
    raw["launcher"] = launcher
    for axis in ("generators", "segmenters"):
        if not raw.get(axis):
            raise BenchError(f"{source}: no {axis}; give --{axis} (comma-separated) or `{axis}:` in the grid file")
    return raw, source


def run(args) -> int:
    from benchmark.config import check_data
    from benchmark.storage import cache_root
    from benchmark.sweep.grid import expand, validate_grid

    raw, source = grid_settings(args)
    grid = validate_grid(raw, source)
    output = Path(args.output).expanduser().resolve()
    generations, cells = expand(grid, output, source)
    for cell in {c.config.data.model_dump_json(): c for c in cells}.values():  # before torch
        try:
            check_data(cell.config)
        except BenchError as e:
            raise BenchError(f"{source}, cell {cell.name}: {e}{RUN_FLAGS_IN_A_GRID}") from None
    cache = Path(args.cache_dir).expanduser().resolve() if args.cache_dir else cache_root().resolve()
    from benchmark.sweep.runner import Sweep

    sweep = Sweep(grid, output, generations, cells, cache)
    outcome = sweep.launch()
    return sweep.report(outcome, sys.stdout)
