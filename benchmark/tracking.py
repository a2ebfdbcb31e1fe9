"""Weights & Biases: offline unless the user configured W&B, so runs never block on a login.

Online when WANDB_MODE is set to online or an API key is configured (WANDB_API_KEY or ~/.netrc);
offline otherwise (the run folder can be synced later with `wandb sync`).
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from benchmark.errors import missing_extra
from benchmark.report import TABLE_COLUMNS
from benchmark.results import flat_metrics
from benchmark.storage import atomic_write_text

log = logging.getLogger(__name__)
RUN_ID_FILE = "wandb-run-id"  # in the run folder: a resumed run logs into the same W&B run


def wandb_configured() -> bool:
    netrc = Path.home() / ".netrc"
    return bool(os.environ.get("WANDB_API_KEY")) or (netrc.exists() and "api.wandb.ai" in netrc.read_text())


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of this run folder, made once and kept in the folder."""
    path = run_dir / RUN_ID_FILE
    if path.exists():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:8]  # W&B ids: short, [a-z0-9]
    atomic_write_text(path, run_id)
    return run_id


def make_wandb_logger(cfg, run_dir: Path, resolved: dict, quiet: bool = False):
    """A Lightning WandbLogger for the run folder: the same W&B run id on every resume; with
    `quiet`, wandb prints nothing (no banners, no console capture). False (no logger) when wandb
    is not installed: the run goes on without W&B and says so once."""
    try:
        import wandb
    except ImportError as err:
        log.warning("%s; this run is not logged to W&B (or pass --no-wandb)",
                    missing_extra("wandb", "W&B logging", err))
        return False
    from lightning.pytorch.loggers import WandbLogger

    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_configured() else "offline")
    save_dir = run_dir / "wandb-logs"
    save_dir.mkdir(parents=True, exist_ok=True)
    if quiet:
        os.environ["WANDB_SILENT"] = "true"  # also read by wandb's service process
    settings = wandb.Settings(silent=quiet, console="off" if quiet else "auto")
    # a two-fold run (benchmark/run/folds.py): its average and its folds in one W&B group, the folds
    # named after the run
    fold_of = run_dir.parent.name if cfg.split.fold is not None else None
    group = fold_of or (run_dir.name if cfg.split.folds > 1 else None)
    logger = WandbLogger(project=cfg.wandb_project, name=f"{fold_of}-{run_dir.name}" if fold_of else run_dir.name,
                         group=group, save_dir=str(save_dir),
                         offline=mode == "offline", config=resolved, mode=mode, id=wandb_run_id(run_dir),
                         resume="allow", settings=settings)
    # Lightning passes anonymous=None to wandb.init, which wandb 0.31 answers with a deprecation
    # line on the terminal even when silent; leaving the key out means the same to both
    if getattr(logger, "_wandb_init", {}).get("anonymous", 0) is None:
        del logger._wandb_init["anonymous"]
    return logger


def leaderboard_row(results: dict) -> dict:
    cfg = results["config"]
    return {"generator": cfg["generator"]["name"], "segmenter": cfg["segmenter"]["name"],
            "dataset": cfg["data"]["name"], "config_hash": results["run"]["config_hash"],
            **{k: v for k, v in flat_metrics(results["mean"]).items()}}


def log_results(logger, results: dict, run_dir: Path) -> None:
    if not logger:  # W&B off, or wandb not installed
        return
    import wandb

    experiment = logger.experiment
    keys = [k for k, _, _ in TABLE_COLUMNS]
    table = wandb.Table(columns=["category", *keys])
    for name, entry in [*results["categories"].items(), ("mean", results["mean"])]:
        flat = flat_metrics(entry)
        table.add_data(name, *(flat.get(k) for k in keys))
    row = leaderboard_row(results)
    payload = {"results/per_category": table,
               "results/leaderboard_row": wandb.Table(columns=list(row), data=[list(row.values())]),
               **{f"mean/{k}": v for k, v in flat_metrics(results["mean"]).items()}}
    if results.get("quality"):  # under quality_random_test/ when the numbers are not comparable
        from benchmark.quality.evaluate import wandb_metrics

        payload.update(wandb_metrics(results["quality"]))
    # plots under their own keys: an image logged as results/per_category would replace the table
    pages = sorted(run_dir.glob("samples*.png"), key=lambda f: (len(f.name), f.name))  # samples.png, -2, -3, ...
    for file in [*pages, run_dir / "per_category.png"]:
        if file.exists():
            payload[f"plots/{file.stem}"] = wandb.Image(str(file))
    experiment.log(payload)
    summary = {"results": results["mean"], "config_hash": results["run"]["config_hash"]}
    if results.get("quality"):  # means and per-category numbers, for the W&B runs table
        quality = results["quality"]
        summary["quality"] = {"comparable": quality["comparable"], "features": quality["features"],
                              "mean": quality["mean"],
                              "categories": {c: e["metrics"] for c, e in quality["categories"].items()}}
    experiment.summary.update(summary)
    experiment.finish()
