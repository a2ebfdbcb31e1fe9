"""The `bench` command. Heavy libraries are imported inside each command, so `bench list` and
`--help` answer at once."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from benchmark.errors import BenchError

# Before torch is imported: with the default (spinning) OpenMP wait policy, torch's threads stall
# each other on a busy 2-core machine and small ops run 4-25x slower; PASSIVE costs little when idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

LAYOUT_CHOICES = ["mvtec", "visa", "btad", "mvtec3d", "loco", "folder"]


# -- bench run -----------------------------------------------------------------------------------
def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML file with config.json's schema (any subset of its keys); flags and --set apply on top")
    p.add_argument("--print-config", action="store_true",
                   help="write the resolved configuration as YAML (a --config file) to stdout and exit")
    p.add_argument("--generator", default=None, help="generator name (default cutpaste; see `bench list`)")
    p.add_argument("--segmenter", default=None, help="segmenter name (default unet; see `bench list`)")
    p.add_argument("--profile", default=None, choices=["smoke", "paper"],
                   help="smoke (default): tiny models, few steps, CPU-friendly; paper: each method's published settings")
    p.add_argument("--data-root", default=None, help="dataset folder (default: the built-in demo dataset)")
    # no argparse choices: the config check answers a misspelt layout with "did you mean"
    p.add_argument("--layout", default=None, metavar="LAYOUT",
                   help=f"dataset layout: {', '.join(LAYOUT_CHOICES)} (default mvtec)")
    p.add_argument("--categories", default=None, help="comma-separated categories (default: all)")
    p.add_argument("--image-size", type=int, default=None, help="square resolution of every stage")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--training", choices=["unified", "per-category"], default=None,
                   help="one segmenter for all categories (default) or one per category")
    p.add_argument("--output", default=None, help="run folder (default runs/<generator>-<segmenter>-<profile>-<hash>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output with the configuration stored there, from the last "
                        "checkpoint of the stage it was in (other flags must agree with that configuration)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --output")
    p.add_argument("--no-wandb", action="store_true", help="do not log to Weights & Biases")
    p.add_argument("--cache-dir", default=None, help="demo data, tiny models and synthetic sets "
                   "(default $SIAS_BENCH_CACHE or ~/.cache/sias-bench)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set segmenter.options.max_steps=50 (repeatable)")


def config_from_args(args):
    from benchmark.config import build_config

    settings = given_settings(args)
    profile = args.profile or deep_merge_all(settings).get("profile") or "smoke"
    return build_config(profile, settings)


def given_settings(args) -> list[dict]:
    """The settings the command line states explicitly (the --config file, flags, then --set
    overrides), as nested dicts."""
    from benchmark.config import load_config_file, parse_override

    if getattr(args, "config", None) and not hasattr(args, "config_settings"):
        args.config_settings = load_config_file(args.config)  # read once: resume asks again

    overrides = [parse_override(o) for o in args.overrides]
    flags: dict = {}
    if args.profile:
        flags["profile"] = args.profile
    if args.generator:
        flags.setdefault("generator", {})["name"] = args.generator
    if args.segmenter:
        flags.setdefault("segmenter", {})["name"] = args.segmenter
    data = {k: v for k, v in {"root": args.data_root, "layout": args.layout, "image_size": args.image_size,
                               "categories": args.categories.split(",") if args.categories else None}.items()
            if v is not None}
    if data:
        flags["data"] = data
    if args.seed is not None:
        flags["seed"] = args.seed
    if args.training:
        flags["training"] = args.training
    if args.no_wandb:
        flags["wandb"] = False
    return [*([args.config_settings] if getattr(args, "config", None) else []), flags, *overrides]


def resumed_config(args, output: Path):
    """`--resume`: the configuration stored in the run folder. A setting given on the command line
    must equal the stored one (after the same resolution a new run would apply), else it is refused
    naming the field. None when the folder holds no run yet (then the flags start one)."""
    from benchmark.config import config_from_resolved, resolve_components
    from benchmark.formatting import flatten_config

    path = output / "config.json"
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
    except ValueError as e:
        raise BenchError(f"{path}: unreadable ({e}); the folder cannot be resumed, use --overwrite") from None
    given = flatten_config(deep_merge_all(given_settings(args)))
    if not given:
        return config_from_resolved(stored, path)
    new = config_from_args(args)
    resolved = new.model_dump(mode="json")
    for kind, (_, options) in resolve_components(new).items():
        resolved[kind]["options"] = options.model_dump(mode="json")
    now, before = flatten_config(resolved), flatten_config(stored)
    for key in sorted(given):
        matches = [k for k in now if k == key or k.startswith(key + ".")]
        for k in matches:
            if now[k] != before.get(k):
                raise BenchError(f"{output}: --resume with {k}={now[k]}, but the run was started with "
                                 f"{k}={before.get(k, '(unset)')}; drop the flag to continue it, or start "
                                 "a new run with another --output (or --overwrite)")
    return config_from_resolved(stored, path)


def deep_merge_all(dicts: list[dict]) -> dict:
    from benchmark.config import deep_merge

    out: dict = {}
    for d in dicts:
        out = deep_merge(out, d)
    return out


def run_output(args, cfg, kind: str | None) -> Path:
    if args.output:
        return Path(args.output).expanduser()
    return Path("runs") / f"{cfg.generator.name}-{kind or cfg.segmenter.name}-{cfg.profile}-{cfg.config_hash()[:8]}"


def make_run(args, kind: str | None, **kwargs):
    """The Run of `bench run` (kind None: the folder is named after the segmenter) or `bench generate`.

    Everything that can be checked without torch is checked first (names, with "did you mean";
    values; the dataset's folder and category names), so a mistake answers in about a second and
    leaves no run folder; then the methods' modules load and check their own options."""
    from benchmark.config import check_data, check_generator_checkpoint, resolve_components

    check_generator_checkpoint(kwargs.get("generator_checkpoint"))
    cfg = None
    if args.resume and args.output:
        cfg = resumed_config(args, Path(args.output).expanduser())
    cfg = cfg or config_from_args(args)
    check_data(cfg)
    resolve_components(cfg)
    from benchmark.run import Run  # torch and Lightning: only for a configuration that is valid

    output = run_output(args, cfg, kind)
    args.resolved_output = output  # for the resume command printed on an interrupt
    run = Run(cfg, output, quiet=args.quiet, cache=Path(args.cache_dir) if args.cache_dir else None, **kwargs)
    return run, output


def print_config(args) -> int:
    """`--print-config`: the configuration a run would use, before torch loads (names and values
    are checked; the dataset folder is not, so a file can be written for another machine)."""
    from benchmark.config import config_yaml

    cfg = None
    if args.resume and args.output:
        cfg = resumed_config(args, Path(args.output).expanduser())
    sys.stdout.write(config_yaml(cfg or config_from_args(args)))
    return 0


def cmd_run(args) -> int:
    if args.print_config:
        return print_config(args)
    run, output = make_run(args, None, save_predictions=args.save_predictions)
    results = run.execute(resume=args.resume, overwrite=args.overwrite)
    if not run.is_global_zero:  # a multi-device run's other ranks: rank zero prints the table
        return 0
    print_results(results, args.format, quiet=args.quiet)
    print(f"results: {output / 'results.json'}", file=sys.stdout if args.format == "table" else sys.stderr)
    return 0


def print_results(results: dict, fmt: str, quiet: bool = False, console=None) -> None:
    """The final table: rich tables that fit the terminal, or md / csv / json on stdout."""
    from benchmark.report import json_safe, results_table

    quality = results.get("quality")  # a second table: generation quality (quality.enabled)
    if fmt == "json":
        sys.stdout.write(json.dumps(json_safe(results), indent=2) + "\n")
    elif fmt in ("md", "csv"):  # csv: the segmentation table only (one header per file)
        table = results_table(results)
        sys.stdout.write(table.markdown() if fmt == "md" else table.csv())
        if fmt == "md" and quality:
            from benchmark.quality.evaluate import quality_metric_table, quality_title

            sys.stdout.write(f"\n**{quality_title(quality)}**\n\n{quality_metric_table(quality).markdown()}")
    elif not quiet:
        from benchmark.tables import output_console, print_tables

        console = console or output_console()
        print_tables(results_table(results), console)
        if quality:
            from benchmark.quality.evaluate import quality_metric_table

            print_tables(quality_metric_table(quality), console)


def cmd_generate(args) -> int:
    if args.print_config:
        return print_config(args)
    run, output = make_run(args, "generate", generator_checkpoint=Path(args.checkpoint) if args.checkpoint else None)
    run.execute(resume=args.resume, overwrite=args.overwrite, until="generate")
    if run.is_global_zero:
        for link in sorted(output.glob("fold-*/synthetic")) or [output / "synthetic"]:  # split.folds=2: one per fold
            print(f"synthetic set: {link}")
    return 0


# -- bench list ----------------------------------------------------------------------------------
def cmd_list(args) -> int:
    from benchmark.registry import GENERATORS, SEGMENTERS

    rows = {"generators": [vars_of(e) for e in GENERATORS], "segmenters": [vars_of(e) for e in SEGMENTERS]}
    if args.json:
        if args.params:
            for row in rows["segmenters"]:
                row["inference_parameters"] = segmenter_parameters(row["name"]) if row["status"] != "planned" else None
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for kind, entries in rows.items():
        table = Table(title=kind, show_lines=False)
        for col in ("name", "status", "description"):
            table.add_column(col)
        for e in entries:
            style = None if e["status"] == "implemented" else "dim"
            table.add_row(e["name"], e["status"], e["description"], style=style)
        console.print(table)
    return 0


def vars_of(entry) -> dict:
    return {"name": entry.name, "status": entry.status, "description": entry.description}


def segmenter_parameters(name: str) -> int | None:
    from benchmark.registry import SEGMENTERS

    cls = SEGMENTERS.load(name)
    logging.getLogger("segmenters").setLevel(logging.WARNING)
    return cls(cls.Options()).inference_parameters()


# -- bench data ----------------------------------------------------------------------------------
def cmd_data_check(args) -> int:
    from rich.console import Console

    from benchmark.data.check import check_dataset

    problems = check_dataset(Path(args.data_root), args.layout, args.categories.split(",") if args.categories else None)
    console = Console()
    for p in problems:
        console.print(f"[red]x[/red] {p}", highlight=False, soft_wrap=True)
    if problems:
        console.print(f"{len(problems)} problem(s) in {args.data_root}")
        return 1
    console.print(f"[green]ok[/green] {args.data_root} ({args.layout})")
    return 0


def cmd_data_demo(args) -> int:
    from benchmark.data.demo import write_demo_dataset

    out = write_demo_dataset(Path(args.output), seed=args.seed, size=args.size)
    print(f"demo dataset written to {out}")
    return 0


# -- commands owned by their modules -------------------------------------------------------------
DELEGATED = {  # name -> (module with add_arguments(parser) and run(args), help)
    "score": ("benchmark.score", "score anomaly maps of any method against ground-truth masks"),
    "compare": ("benchmark.compare", "diff two results.json per category; non-zero exit on regression"),
    "leaderboard": ("benchmark.leaderboard", "render leaderboards from reported and reproduced results"),
    "predict": ("benchmark.predict", "apply a run's trained segmenter to new images: maps, masks, overlays"),
    "combine-folds": ("benchmark.combine_folds", "average the results of folds that ran as separate runs (split.fold=k)"),
    "sweep": ("benchmark.sweep", "a grid of runs (generators x segmenters x datasets x seeds), local or on SLURM"),
    "check-pairs": ("benchmark.pair_checks", "are a synthetic set's labels true? background / mask checks per pair"),
    "quality": ("benchmark.quality.cli", "generation quality of a synthetic set: IS, FID, KID, LPIPS, IC-LPIPS"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="SIAS-Bench: benchmark of industrial anomaly synthesis")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress display or logs")
    # the same flags after the subcommand (`bench run --quiet`); SUPPRESS keeps the global value
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress display or logs")
    sub = parser.add_subparsers(dest="command", parser_class=lambda **kw: argparse.ArgumentParser(parents=[common], **kw))

    run = sub.add_parser("run", help="generate, train a segmenter, evaluate, report")
    add_run_arguments(run)
    run.add_argument("--no-predictions", dest="save_predictions", action="store_false",
                     help="do not write each evaluated image's map, mask and overlay under <run>/predictions")
    run.add_argument("--format", default="table", choices=["table", "md", "csv", "json"],
                     help="final results: table (fits the terminal; default), md, csv (percent) or json "
                          "(results.json) on stdout for scripts")
    run.set_defaults(func=cmd_run)

    gen = sub.add_parser("generate", help="only the split and the synthetic set (reuses a trained generator)")
    add_run_arguments(gen)
    gen.add_argument("--checkpoint", default=None,
                     help="trained generator (generator.pt of an earlier synthetic set): skip training")
    gen.set_defaults(func=cmd_generate)

    lst = sub.add_parser("list", help="registered generators and segmenters")
    lst.add_argument("--json", action="store_true")
    lst.add_argument("--no-params", dest="params", action="store_false",
                     help="with --json: skip building segmenters to count their parameters")
    lst.set_defaults(func=cmd_list)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="validate a dataset folder and list every problem")
    check.add_argument("--data-root", required=True)
    check.add_argument("--layout", required=True, choices=LAYOUT_CHOICES)
    check.add_argument("--categories", default=None)
    check.set_defaults(func=cmd_data_check)
    demo = data.add_parser("demo", help="write the built-in demo dataset (MVTec AD layout)")
    demo.add_argument("--output", required=True)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--size", type=int, default=128)
    demo.set_defaults(func=cmd_data_demo)

    for name, (module, help_text) in DELEGATED.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=_delegate(module))
        _add_delegated_arguments(p, module)
    return parser


def _add_delegated_arguments(parser, module: str) -> None:
    import importlib

    try:
        importlib.import_module(module).add_arguments(parser)
    except ModuleNotFoundError as e:  # the command then says so when called (`_delegate`)
        parser.description = f"(not available in this install: {e.name} is missing)"


def _delegate(module: str):
    def run(args) -> int:
        import importlib

        try:
            command = importlib.import_module(module)
        except ModuleNotFoundError as e:
            raise BenchError(f"bench {args.command} needs {e.name}, which is not installed; "
                             "fix: pip install -e '.[all]' (README, Install)") from e
        return command.run(args)

    return run


def configure_logging(quiet: bool, debug: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(show_path=False, show_time=False, console=Console(stderr=True))],  # stdout: results only
                        force=True)
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "wandb",
                  "urllib3", "matplotlib", "PIL", "h5py", "mmengine"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    if not debug:
        warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.command is None:  # `bench` alone (or with global flags) runs the default benchmark
        args = build_parser().parse_args([*argv, "run"])
    configure_logging(args.quiet, args.debug)
    if getattr(args, "cache_dir", None):  # one cache for everything: demo data, tiny models, synthetic sets
        os.environ["SIAS_BENCH_CACHE"] = str(Path(args.cache_dir).resolve())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from local folders; never the hub
    try:
        return int(args.func(args) or 0)
    except BenchError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; continue with --resume", file=sys.stderr)
        return 130
    except Exception as e:
        if type(e).__name__ != "RunInterrupted":
            raise
        from benchmark.run.ranks import started_as_rank_zero

        if started_as_rank_zero():  # every rank stops; one of them says how to continue
            print(f"{e.signal_name.lower().removeprefix('sig')}: stopped during {e.where}; checkpoints and finished "
                  f"stages are kept; resume with: {resume_command(args)}", file=sys.stderr)
        return 130


def resume_command(args) -> str:
    import shlex

    output = getattr(args, "resolved_output", None) or getattr(args, "output", None) or "<run folder>"
    if args.command == "sweep":  # a sweep always continues what its folder holds
        return f"bench sweep --output {shlex.quote(str(output))}"
    return f"bench {args.command} --output {shlex.quote(str(output))} --resume"


if __name__ == "__main__":
    sys.exit(main())
