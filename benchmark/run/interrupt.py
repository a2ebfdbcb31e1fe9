"""Ctrl-C and SIGTERM: stop at the next batch boundary with a checkpoint, then say where the run
stopped and how to continue it.

The first signal only sets a flag; `StopAtBatchEnd` (a Lightning callback) sees it after the
current batch, saves the Lightning checkpoint of a fit and raises `RunInterrupted`, so the saved
state is consistent (never half an optimizer step). A second signal stops at once."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class RunInterrupted(Exception):
    """A run stopped by the user or the scheduler; its folder can be resumed."""

    def __init__(self, where: str = "", signal_name: str = "interrupt"):
        super().__init__(where)
        self.where = where
        self.signal_name = signal_name


class StopRequest:
    """Turns SIGINT/SIGTERM into a request the run honours at the next batch boundary."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def check(self, where: str) -> None:
        if self.requested:
            raise RunInterrupted(where, self.signal_name)


class StopAtBatchEnd(Callback):
    """Raises `RunInterrupted` after the batch during which a stop was requested; in a fit, first
    saves the Lightning checkpoint `checkpoint` (the file `ModelCheckpoint(save_last=True)` keeps),
    so the resumed fit starts exactly after that batch."""

    def __init__(self, stop: StopRequest, checkpoint: Path | None = None):
        self.stop = stop
        self.checkpoint = checkpoint

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # under DDP every rank stops after the same step (saving a checkpoint is collective): a
        # stop requested on any rank stops all of them
        if trainer.strategy.reduce_boolean_decision(self.stop.requested, all=False):
            if self.checkpoint is not None:
                trainer.save_checkpoint(self.checkpoint)
            raise RunInterrupted(f"step {trainer.global_step}", self.stop.signal_name or "SIGTERM")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.stop.requested:  # pairs and metrics written so far are kept
            raise RunInterrupted(f"batch {batch_idx + 1}", self.stop.signal_name)
