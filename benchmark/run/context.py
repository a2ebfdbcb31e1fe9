"""What the stages of a run share: the configuration, the run folder, the cache, the progress
display, the stop request, the Lightning Trainer factory and what earlier stages produced."""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmark.config import RunConfig
from benchmark.progress import RunProgress
from benchmark.run.folder import RunFolder
from benchmark.run.interrupt import StopRequest
from benchmark.run.ranks import RunRanks

log = logging.getLogger(__name__)

VERSIONED = ("sias-bench", "torch", "torchvision", "lightning", "torchmetrics", "diffusers", "transformers",
             "segmentation-models-pytorch", "mmsegmentation", "numpy")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def source_revision(root: Path | None = None) -> dict:
    """`{"git_commit": sha, "git_dirty": bool}` of the checkout the project's code runs from (dirty:
    a tracked file differs from the commit; untracked files do not count). Empty when git is
    missing or the code is not its own git work tree (a wheel install, or a site-packages that
    happens to sit inside some other repository)."""
    import shutil
    import subprocess

    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    git = shutil.which("git")
    if git is None:
        return {}

    def git_out(*args: str) -> str:
        return subprocess.run([git, "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        if Path(git_out("rev-parse", "--show-toplevel")).resolve() != root.resolve():
            return {}
        commit = git_out("rev-parse", "HEAD")
        dirty = bool(git_out("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": dirty}


def checkpoint_every(max_steps: int | None) -> int:
    """Steps between periodic Lightning checkpoints: ~10 per fit, at least 25 steps apart."""
    return max(25, (max_steps or 0) // 10)


@dataclass
class RunContext:
    cfg: RunConfig
    folder: RunFolder
    cache: Path
    progress: RunProgress
    stop: StopRequest
    generator_cls: Any
    segmenter_cls: Any
    generator_options: Any
    segmenter_options: Any
    generator_checkpoint: Path | None = None
    save_predictions: bool = True  # <run>/predictions: not part of the config (it changes no number)
    ranks: RunRanks = field(default_factory=RunRanks)  # set by Run.execute once the processes are up
    # produced by the stages
    split: Any = None
    synthetic: Any = None
    quality: dict | None = None  # the generation-quality report (quality.enabled)
    models: dict = field(default_factory=dict)
    per_category: dict = field(default_factory=dict)
    results: dict | None = None
    _wandb: Any = None

    def resolved_config(self) -> dict:
        d = self.cfg.model_dump(mode="json")
        d["generator"]["options"] = self.generator_options.model_dump(mode="json")
        d["segmenter"]["options"] = self.segmenter_options.model_dump(mode="json")
        d["data"]["name"] = self.cfg.data.name
        return d

    def resolved_precision(self) -> str:
        from benchmark.run.gpu_policy import resolved_precision

        return resolved_precision(self.cfg)

    def resolved_determinism(self) -> dict:
        from benchmark.run.gpu_policy import resolved_determinism

        return resolved_determinism(self.cfg)

    # -- Lightning plumbing --------------------------------------------------------------------
    def trainer(self, max_steps=None, callbacks=(), logger=False, max_epochs=None):
        """A Trainer with the run's settings. On N devices every stage uses all of them: fit is
        data-parallel, generation and evaluation each predict a shard (docs/scale.md)."""
        import lightning as L

        from benchmark.progress import ProgressCallback

        t = self.cfg.trainer
        return L.Trainer(
            accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
            # one process: no DDP wrapper (a 1-process DDP would still shard and wrap for nothing)
            strategy=t.strategy if self.ranks.distributed else "auto",
            precision=self.resolved_precision(), max_steps=max_steps if max_steps is not None else -1,
            # epochs and steps both given: Lightning stops at whichever comes first
            max_epochs=max_epochs if max_epochs is not None else (-1 if max_steps is not None else None),
            deterministic=self.resolved_determinism()["lightning"], logger=logger, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=any(
                type(c).__name__ == "ModelCheckpoint" for c in callbacks),
            # progress first: a stop requested during a batch is reported with that batch counted
            callbacks=[ProgressCallback(self.progress), *callbacks], default_root_dir=str(self.folder.root),
            log_every_n_steps=10,
        )

    def fit(self, module, checkpoint_dir: Path, max_steps: int | None, progress: tuple, logger=False,
            max_epochs: int | None = None, total_steps: int | None = None, **fit_kwargs):
        """`trainer.fit` for `max_steps` and/or `max_epochs` (`total_steps`: the steps that makes,
        when counting epochs) with one checkpoint system: Lightning's `last.ckpt` in
        `checkpoint_dir`, saved every `checkpoint_every(total_steps)` steps and when a stop is
        requested; a fit that finds one continues from it. Returns the trainer."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        from benchmark.run.interrupt import StopAtBatchEnd

        last = checkpoint_dir / "last.ckpt"
        periodic = ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=0,
                                   every_n_train_steps=checkpoint_every(total_steps or max_steps))
        trainer = self.trainer(max_steps=max_steps, callbacks=[StopAtBatchEnd(self.stop, last), periodic],
                               logger=logger, max_epochs=max_epochs)
        with self.progress.stage(*progress):
            trainer.fit(module, ckpt_path=str(last) if last.exists() else None, weights_only=True, **fit_kwargs)
        return trainer

    def drop_fit_checkpoints(self, checkpoint_dir: Path) -> None:
        """After a fit's final weights are saved (`segmenter/<group>.pt`, `generator.pt`): its
        Lightning checkpoints only serve to resume the fit mid-way, so they go; the run folder
        keeps one copy of each model's weights (issue 18: two copies made a smoke folder ~220 MB)."""
        import shutil

        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        parent = checkpoint_dir.parent
        if parent.name == "checkpoints" and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()

    def wandb_logger(self):
        if not self.cfg.wandb:
            return False
        if self._wandb is None:
            from benchmark.tracking import make_wandb_logger

            self._wandb = make_wandb_logger(self.cfg, self.folder.root, self.resolved_config(),
                                            quiet=self.progress.quiet)
        return self._wandb
