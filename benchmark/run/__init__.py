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

    def execute(self, resume: bool = False, overwrite: bool = False, until: str = "report") -> dict | None:
        import lightning as L

        from benchmark.run.stages import STAGES

        ctx = self.ctx
        if ctx.cfg.split.folds > 1 and ctx.cfg.split.fold is None:  # every fold in its sub-folder, then the mean
            from benchmark.run.folds import execute_folds

            return execute_folds(self, resume, overwrite, until)
        ctx.folder.claim(ctx.resolved_config(), resume, overwrite)
        stages = [cls() for cls in STAGES]
        stages = stages[: [s.name for s in stages].index(until) + 1]
        try:
            with ctx.stop, ctx.progress:
                for stage in stages:
                    ctx.stop.check(f"before {stage.name}")
                    # Re-seed per stage: a stage's randomness (segmenter init, flips) must not depend
                    # on whether earlier stages ran here or were reused from the cache / a resumed run.
                    L.seed_everything(ctx.cfg.seed, workers=True, verbose=False)
                    if stage.is_done(ctx):
                        stage.load(ctx)
                        continue
                    self._run_stage(stage)
        except BenchError:
            if not ctx.folder.is_done("data"):
                ctx.folder.remove_if_created()
            raise
        if until == "generate":
            ctx.progress.log(f"synthetic set: {ctx.synthetic.root} ({len(ctx.synthetic)} pairs)")
            return None
        return ctx.results

    def _run_stage(self, stage) -> None:
        ctx = self.ctx
        start = time.perf_counter()
        try:
            stage.run(ctx)
        except RunInterrupted as e:
            ctx.folder.record(stage.name, time.perf_counter() - start, done=False)
            raise RunInterrupted(ctx.progress.where() or f"{stage.name} {e.where}".strip(), e.signal_name) from None
        except (KeyboardInterrupt, SystemExit) as e:
            # Lightning turns a KeyboardInterrupt inside fit/predict into SystemExit(1)
            ctx.folder.record(stage.name, time.perf_counter() - start, done=False)
            if isinstance(e, SystemExit) and not ctx.stop.requested and e.code not in (1, None):
                raise
            raise RunInterrupted(ctx.progress.where() or stage.name, ctx.stop.signal_name or "SIGINT") from None
        except BaseException:
            ctx.folder.record(stage.name, time.perf_counter() - start, done=False)
            raise
        ctx.folder.record(stage.name, time.perf_counter() - start, done=True)
