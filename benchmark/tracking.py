"""Weights & Biases: offline unless the user configured W&B, so runs never block on a login.

Online when WANDB_MODE is set to online or an API key is configured (WANDB_API_KEY or ~/.netrc);
offline otherwise (the run folder can be synced later with `wandb sync`).
"""

from __future__ import annotations

import os
from pathlib import Path

from benchmark.report import TABLE_COLUMNS
from benchmark.results import flat_metrics


def wandb_configured() -> bool:
    netrc = Path.home() / ".netrc"
    return bool(os.environ.get("WANDB_API_KEY")) or (netrc.exists() and "api.wandb.ai" in netrc.read_text())


def make_wandb_logger(cfg, run_dir: Path, resolved: dict):
    from lightning.pytorch.loggers import WandbLogger

    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_configured() else "offline")
    save_dir = run_dir / "wandb-logs"
    save_dir.mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(project=cfg.wandb_project, name=run_dir.name, save_dir=str(save_dir),
                         offline=mode == "offline", config=resolved, mode=mode)
    return logger


def leaderboard_row(results: dict) -> dict:
    cfg = results["config"]
    return {"generator": cfg["generator"]["name"], "segmenter": cfg["segmenter"]["name"],
            "dataset": cfg["data"]["name"], "config_hash": results["run"]["config_hash"],
            **{k: v for k, v in flat_metrics(results["mean"]).items()}}


def log_results(logger, results: dict, run_dir: Path) -> None:
    import wandb

    experiment = logger.experiment
    keys = [k for k, _ in TABLE_COLUMNS]
    table = wandb.Table(columns=["category", *keys])
    for name, entry in [*results["categories"].items(), ("mean", results["mean"])]:
        flat = flat_metrics(entry)
        table.add_data(name, *(flat.get(k) for k in keys))
    row = leaderboard_row(results)
    payload = {"results/per_category": table,
               "results/leaderboard_row": wandb.Table(columns=list(row), data=[list(row.values())]),
               **{f"mean/{k}": v for k, v in flat_metrics(results["mean"]).items()}}
    for name, file in (("samples", "samples.png"), ("per_category", "per_category.png")):
        if (run_dir / file).exists():
            payload[f"results/{name}"] = wandb.Image(str(run_dir / file))
    experiment.log(payload)
    experiment.summary.update({"results": results["mean"], "config_hash": results["run"]["config_hash"]})
    experiment.finish()
