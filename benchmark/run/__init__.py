"""`bench run`: dataset -> few-shot split -> generation -> segmenter training -> evaluation -> report.

The run is a sequence of stages (`benchmark.run.stages`), each with `is_done` and `run`. Every
stage writes its output to the run folder (the synthetic set to a cache keyed by what determines
it), and every fit checkpoints through Lightning, so a killed run started again with `--resume`
continues from the last checkpoint of the stage it was in. With `split.folds=2` each fold is such
a run in a sub-folder and the run reports their mean (`benchmark.run.folds`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from benchmark.config import RunConfig, check_generator_checkpoint, resolve_components
from benchmark.errors import BenchError
from benchmark.progress import RunProgress
from benchmark.run.context import RunContext
from benchmark.run.folder import RunFolder
from benchmark.run.interrupt import RunInterrupted, StopRequest
from benchmark.storage import cache_root

__all__ = ["Run", "RunInterrupted", "RunFolder"]

log = logging.getLogger(__name__)


class Run:
    def __init__(self, cfg: RunConfig, output: Path, quiet: bool = False, cache: Path | None = None,
                 generator_checkpoint: Path | None = None, save_predictions: bool = True):
        import lightning  # noqa: F401  (before quiet_lightning: lightning sets its log levels on import)

        from benchmark.progress import quiet_lightning

        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            quiet_lightning()
        components = resolve_components(cfg)
        (generator_cls, generator_options), (segmenter_cls, segmenter_options) = \
            components["generator"], components["segmenter"]
        checkpoint = check_generator_checkpoint(generator_checkpoint)
        self.ctx = RunContext(
            cfg=cfg, folder=RunFolder(output), cache=Path(cache).expanduser() if cache else cache_root(),
            progress=RunProgress(quiet=quiet), stop=StopRequest(),
            generator_cls=generator_cls, segmenter_cls=segmenter_cls,
            generator_options=generator_options, segmenter_options=segmenter_options,
            generator_checkpoint=checkpoint, save_predictions=save_predictions,
        )

    @property
    def folder(self) -> RunFolder:
        return self.ctx.folder

    def resolved_config(self) -> dict:
        return self.ctx.resolved_config()

    @property
    def is_global_zero(self) -> bool:
        """False in the processes of ranks > 0 of a multi-device run (they print nothing)."""
        return self.ctx.ranks.is_zero

    def execute(self, resume: bool = False, overwrite: bool = False, until: str = "report") -> dict | None:
        import lightning as L

        from benchmark.run.ranks import launch_ranks
        from benchmark.run.stages import STAGES

        ctx = self.ctx
        if ctx.cfg.split.folds > 1 and ctx.cfg.split.fold is None:  # every fold in its sub-folder, then the mean
            from benchmark.run.folds import execute_folds

            return execute_folds(self, resume, overwrite, until)
        # first: on N devices this starts the other N-1 processes, which run this command too
        ctx.ranks = launch_ranks(ctx.cfg.trainer)
        if not ctx.ranks.is_zero:  # one display and one log: rank zero's (warnings still show)
            ctx.progress = RunProgress(quiet=True)
            logging.disable(logging.INFO)
        ctx.ranks.on_zero(lambda: self._claim(resume, overwrite))
        stages = [cls() for cls in STAGES]
        stages = [s for s in stages[: [s.name for s in stages].index(until) + 1] if s.enabled(ctx)]
        try:
            for stage in stages:  # before any work: a missing weight file must not cost hours of training
                if not stage.is_done(ctx):
                    stage.preflight(ctx)
            with ctx.stop, ctx.progress:
                for stage in stages:
                    ctx.stop.check(f"before {stage.name}")
                    # Re-seed per stage: a stage's randomness (segmenter init, flips) must not depend
                    # on whether earlier stages ran here or were reused from the cache / a resumed run.
                    L.seed_everything(ctx.cfg.seed, workers=True, verbose=False)
                    # rank zero decides, so all ranks take the same path through the collectives
                    if ctx.ranks.broadcast(stage.is_done(ctx) if ctx.ranks.is_zero else None):
                        stage.load(ctx)
                        continue
                    self._run_stage(stage)
                    ctx.ranks.barrier()  # what the stage wrote is complete before anyone reads it
        except BenchError:
            if ctx.ranks.is_zero:
                ctx.folder.discard_after_bad_input()
            raise
        ctx.ranks.close()
        if until == "generate":
            ctx.progress.log(f"synthetic set: {ctx.synthetic.root} ({len(ctx.synthetic)} pairs)")
            return None
        return ctx.results

    def _claim(self, resume: bool, overwrite: bool) -> None:
        ctx = self.ctx
        ctx.folder.claim(ctx.resolved_config(), resume, overwrite)
        if ctx.cfg.wandb:  # the W&B run id, made once here: other ranks read it, never race to write it
            from benchmark.tracking import wandb_run_id

            wandb_run_id(ctx.folder.root)

    def _run_stage(self, stage) -> None:
        ctx = self.ctx
        start = time.perf_counter()
        try:
            stage.run(ctx)
        except RunInterrupted as e:
            self._record(stage.name, time.perf_counter() - start, done=False)
            raise RunInterrupted(ctx.progress.where() or f"{stage.name} {e.where}".strip(), e.signal_name) from None
        except (KeyboardInterrupt, SystemExit) as e:
            # Lightning turns a KeyboardInterrupt inside fit/predict into SystemExit(1)
            self._record(stage.name, time.perf_counter() - start, done=False)
            if isinstance(e, SystemExit) and not ctx.stop.requested and e.code not in (1, None):
                raise
            raise RunInterrupted(ctx.progress.where() or stage.name, ctx.stop.signal_name or "SIGINT") from None
        except BaseException:
            self._record(stage.name, time.perf_counter() - start, done=False)
            raise
        self._record(stage.name, time.perf_counter() - start, done=True)

    def _record(self, stage: str, seconds: float, done: bool) -> None:
        if self.ctx.ranks.is_zero:  # state.json has one writer
            self.ctx.folder.record(stage, seconds, done)
