"""The two-fold protocol (`split.folds=2`; BADG App. A.1): each fold is a complete run, and the
run's results are the mean over the folds.

Layout: the run folder holds `config.json` (the run's configuration, `split.fold` unset), and one
sub-folder per fold, `fold-1/` and `fold-2/`, each an ordinary run folder (its `config.json` has
`split.fold` set, its own `split.json`, synthetic set, checkpoints, segmenter, `evaluation.json`,
predictions, `results.json`, plots). Fold 1 trains on the first half of each defect type's images
and evaluates the second, fold 2 the other way round (`benchmark.data.split`); each fold's
generator is fitted on, and draws its few-shot masks from, its own training half only. The folds
run one after the other through the ordinary stages, so `--resume` continues the fold that was
stopped and reuses the finished one. One process only: on several devices, run each fold alone
(`split.fold=k`, an ordinary run) and average them with `bench combine-folds`
(`combine_fold_runs`). The run folder's `results.json` then holds the averaged table
(`benchmark.results.fold_mean`) and, under `folds`, each fold's; `metrics.csv` and
`per_category.png` show the averaged table.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from benchmark.errors import BenchError
from benchmark.run.interrupt import RunInterrupted
from benchmark.storage import config_digest

REPORT = "report"  # the top folder's state.json records only its own report (each fold has its own state)


def fold_folder(root: Path, fold: int) -> Path:
    return Path(root) / f"fold-{fold}"


def execute_folds(run, resume: bool, overwrite: bool, until: str) -> dict | None:
    """`Run.execute` for `split.folds=2`, `split.fold` unset: every fold in its sub-folder, then
    the averaged report. A stop inside a fold names the fold; `--resume` on the run folder goes on."""
    from benchmark.run import Run

    ctx = run.ctx
    root = ctx.folder.root
    if ctx.generator_checkpoint is not None:
        raise BenchError(f"{ctx.generator_checkpoint}: a given trained generator with split.folds=2 would serve "
                         "both folds, but each fold trains its own on its half; give it to one fold "
                         "(--set split.fold=1 or 2)")
    refuse_several_processes(ctx.cfg.trainer)
    ctx.folder.claim(ctx.resolved_config(), resume, overwrite)
    if until == REPORT and ctx.folder.is_done(REPORT) and (root / "results.json").exists():
        ctx.results = json.loads((root / "results.json").read_text())
        return ctx.results
    n = ctx.cfg.split.folds
    outcomes = []
    try:
        for k in range(1, n + 1):
            cfg = ctx.cfg.model_copy(update={"split": ctx.cfg.split.model_copy(update={"fold": k})})
            fold_run = Run(cfg, fold_folder(root, k), quiet=ctx.progress.quiet, cache=ctx.cache,
                           save_predictions=ctx.save_predictions)
            ctx.progress.log(f"fold {k}/{n}: {fold_run.folder.root}")
            try:
                # resume=True: a fold folder exists only if this run made it (the run folder was claimed above)
                outcomes.append(fold_run.execute(resume=True, until=until))
            except RunInterrupted as e:
                raise RunInterrupted(f"fold {k}/{n}, {e.where}".rstrip(", "), e.signal_name) from None
    except BenchError:
        if not any(fold_folder(root, k).exists() for k in range(1, n + 1)):
            ctx.folder.discard_after_bad_input()
        raise
    if until != REPORT:
        return None
    start = time.perf_counter()
    ctx.results = write_fold_report(ctx, outcomes)
    ctx.folder.record(REPORT, time.perf_counter() - start, done=True)
    return ctx.results


def refuse_several_processes(trainer) -> None:
    """The fold loop, its run folder and its averaged report are written by one process; a run on
    several devices starts the command once per rank (benchmark/run/ranks.py), which this loop
    does not coordinate yet. Each fold alone (`split.fold=k`) is an ordinary run and can use them."""
    from lightning.fabric import Fabric

    strategy = str(trainer.strategy)
    try:
        world_size = Fabric(accelerator=trainer.accelerator, devices=trainer.devices, num_nodes=trainer.num_nodes,
                            strategy="ddp" if strategy.startswith("ddp") else strategy).world_size
    except (ValueError, RuntimeError, TypeError):
        return  # bad trainer settings: the fold's own launch names them
    if world_size > 1:
        raise BenchError(f"split.folds=2 on {world_size} processes (trainer.devices={trainer.devices}, "
                         f"num_nodes={trainer.num_nodes}) is not supported yet; run each fold on its own with "
                         "--set split.fold=1 and --set split.fold=2 (each can use the devices), then average them with "
                         "`bench combine-folds <fold-1 run> <fold-2 run> --output <folder>`; or use one device "
                         "(--set trainer.devices=1)")


def fold_summary(fold: int, results: dict, folder: str | None = None) -> dict:
    """One fold's entry under `folds` in the run's results.json; `folder` relative to the run folder
    (default its `fold-<k>/`)."""
    run = results.get("run", {})
    return {"fold": fold, "folder": folder or fold_folder(Path("."), fold).name, "categories": results["categories"],
            "mean": results["mean"], "timings": results.get("timings", {}), "evaluation": results.get("evaluation"),
            "synthetic_set": run.get("synthetic_set"), "synthetic_pairs": run.get("synthetic_pairs")}


def summed_timings(folds: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for fold in folds:
        for stage, seconds in fold.get("timings", {}).items():
            out[stage] = out.get(stage, 0.0) + seconds
    return out


def fold_provenance(folds: list[dict]) -> dict | None:
    """The run's `evaluation`: the metric options (the same in every fold), the map size when every
    fold has the same one, and per category the curve mode when every fold used the same (null
    otherwise; each fold's entry under `folds` keeps its own)."""
    seen = [f["evaluation"] for f in folds if f.get("evaluation")]
    if len(seen) != len(folds):
        return None
    sizes = {json.dumps(e.get("image_size")) for e in seen}
    categories = {}
    for name in sorted({c for e in seen for c in e.get("categories", {})}):
        entries = [e["categories"].get(name, {}) for e in seen]
        modes = {c.get("mode") for c in entries}
        image_sizes = sorted({tuple(s) for c in entries for s in c.get("image_sizes", [])})
        categories[name] = {"mode": modes.pop() if len(modes) == 1 else None, "image_sizes": [list(s) for s in image_sizes]}
    return {"metric_options": seen[0].get("metric_options"),
            "image_size": seen[0].get("image_size") if len(sizes) == 1 else None, "categories": categories}


def write_fold_report(ctx, outcomes: list[dict]) -> dict:
    """The run folder's results.json (averaged table + per-fold tables), metrics.csv,
    per_category.png, and the W&B run of the average (each fold logs its own)."""
    from benchmark.run.context import package_versions, source_revision

    root = ctx.folder.root
    folds = [fold_summary(k, r) for k, r in enumerate(outcomes, 1)]
    results = averaged_results(root, ctx.resolved_config(), folds, precision=ctx.resolved_precision(),
                               versions=package_versions(), **source_revision())
    if ctx.cfg.wandb:
        from benchmark.tracking import log_results

        log_results(ctx.wandb_logger(), results, root)
    return results


def averaged_results(root: Path, config: dict, folds: list[dict], versions: dict, **run_extra) -> dict:
    """results.json of the mean over `folds` (entries of `fold_summary`), written to `root` with
    its metrics.csv and per_category.png; `run_extra` goes under `run` (precision, git revision)."""
    from benchmark import report
    from benchmark.results import build_results, fold_mean

    results = build_results(
        run_id=root.name, config=config, config_hash=config_digest(config), versions=versions,
        categories=fold_mean([f["categories"] for f in folds]), timings=summed_timings(folds),
        evaluation=fold_provenance(folds), synthetic_pairs=sum(f["synthetic_pairs"] or 0 for f in folds),
        **run_extra,
    )
    results["folds"] = folds
    report.write_results(results, root)
    report.category_bars(results, root / "per_category.png")
    return results


AGREED_RUN_FIELDS = ("precision", "git_commit", "git_dirty", "determinism")  # kept when every fold has the same


def combine_fold_runs(folders: list[Path], output: Path, overwrite: bool = False) -> dict:
    """The averaged results of folds that ran as separate runs (`--set split.fold=k`, e.g. one job
    per device, which the fold loop cannot use): the same files as a `split.folds=2` run folder's
    report, written to `output`. Each fold folder must hold a finished run of one fold, all with one
    configuration apart from `split.fold`, together covering folds 1..split.folds once."""
    from benchmark.run.folder import config_differences

    folders = [Path(f) for f in folders]
    output = Path(output)
    fold_results = []
    for folder in folders:
        path = folder / "results.json"
        if not path.exists():
            raise BenchError(f"{path}: missing; the fold's run has not finished (finish it with "
                             f"`bench run --output {folder} --resume`)")
        results = json.loads(path.read_text())
        split = results.get("config", {}).get("split", {})
        if split.get("fold") is None or split.get("folds", 1) < 2:
            raise BenchError(f"{path}: not a run of one fold (its split is {split}); run each fold with "
                             "--set split.folds=2 --set split.fold=<k>")
        fold_results.append(results)
    n = fold_results[0]["config"]["split"]["folds"]
    numbers = [r["config"]["split"]["fold"] for r in fold_results]
    if sorted(numbers) != list(range(1, n + 1)):
        raise BenchError(f"the folders hold folds {numbers} of split.folds={n}; give each fold 1..{n} exactly once")
    config = _without_fold(fold_results[0]["config"])
    for folder, results in zip(folders[1:], fold_results[1:]):
        differences = config_differences(config, _without_fold(results["config"]))
        if differences:
            raise BenchError(f"{folder / 'results.json'}: configured differently from {folders[0]} "
                             f"({'; '.join(differences)}); the folds of one protocol run share every setting but split.fold")
    resolved = {f.resolve() for f in folders}
    if output.resolve() in resolved:
        raise BenchError(f"{output}: is one of the fold folders; give another --output")
    if (output / "results.json").exists() and not overwrite:
        raise BenchError(f"{output / 'results.json'}: exists; pass --overwrite to replace it")
    output.mkdir(parents=True, exist_ok=True)
    order = sorted(range(len(folders)), key=lambda i: numbers[i])
    folds = [fold_summary(numbers[i], fold_results[i], os.path.relpath(folders[i].resolve(), output.resolve()))
             for i in order]
    runs = [r.get("run", {}) for r in fold_results]
    agreed = {k: runs[0][k] for k in AGREED_RUN_FIELDS
              if k in runs[0] and all(r.get(k) == runs[0][k] for r in runs)}
    return averaged_results(output, config, folds, versions=runs[order[0]].get("versions", {}), **agreed)


def _without_fold(config: dict) -> dict:
    return {**config, "split": {**config.get("split", {}), "fold": None}}
