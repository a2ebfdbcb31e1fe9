"""One rich progress display for a run: a line per stage with its category and a bar.

Lightning work reports into it through `ProgressCallback`, so training and generation loops need
no progress code of their own. `quiet=True` gives the same object with no output.
"""

from __future__ import annotations

from contextlib import contextmanager

from lightning.pytorch.callbacks import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def quiet_lightning() -> None:
    """Lightning sets its loggers to INFO when imported (device banners, tips); keep warnings only.
    Call after `import lightning`."""
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)


class RunProgress:
    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self._progress = None if quiet else Progress(
            TextColumn("[bold]{task.fields[stage]:<9}"), TextColumn("{task.fields[category]:<14}"),
            BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"), console=self.console, transient=False,
        )
        self._task = None
        self.current: dict | None = None  # stage, category, completed, total: where an interrupt stopped

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()

    @contextmanager
    def stage(self, stage: str, total: int | None, category: str = "all"):
        """A bar for one piece of work. It is filled only when the work finished: an interrupted or
        failed stage keeps its real count and says so."""
        self.current = {"stage": stage, "category": category, "completed": 0, "total": total}
        if self._progress is not None:
            self._task = self._progress.add_task("", total=total, stage=stage, category=category, info="")
        try:
            yield self
        except BaseException as e:
            if self._progress is not None and self._task is not None:
                failed = type(e).__name__ in ("RunInterrupted", "KeyboardInterrupt", "SystemExit")
                self._progress.update(self._task, info="[yellow]interrupted" if failed else "[red]failed")
            raise
        else:
            if self._progress is not None and self._task is not None:
                task = self._progress.tasks[self._task]
                if task.total is not None:
                    self._progress.update(self._task, completed=task.total)
            self.current = None
        finally:
            self._task = None

    def start_at(self, completed: int) -> None:
        """A resumed fit starts its bar at the checkpoint's step."""
        if self.current is not None:
            self.current["completed"] = completed
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=completed)

    def advance(self, n: int = 1, info: str | None = None) -> None:
        if self.current is not None:
            self.current["completed"] += n
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=n, **({"info": info} if info is not None else {}))

    def where(self) -> str:
        """'train (unified) at 40/150': the piece of work in progress, for the interrupt message."""
        c = self.current
        if c is None:
            return ""
        total = f"/{c['total']}" if c["total"] else ""
        return f"{c['stage']} ({c['category']}) at {c['completed']}{total}"

    def log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message)


class ProgressCallback(Callback):
    """Advances the current stage's bar on every train/predict batch."""

    def __init__(self, progress: RunProgress):
        self.progress = progress

    def on_train_start(self, trainer, pl_module):
        self.progress.start_at(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = trainer.callback_metrics.get("train/loss")
        self.progress.advance(1, info=f"loss {float(loss):.4f}" if loss is not None else None)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.progress.advance(len(batch) if isinstance(batch, list) else 1)
