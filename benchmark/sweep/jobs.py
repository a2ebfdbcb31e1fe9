"""What one job of a sweep does, and how the sweep tells a finished job from an unfinished one.

The job functions take plain JSON-able arguments (a run configuration as a dict, paths as
strings), so submitit can pickle them into a SLURM job or a local subprocess; each one is an
ordinary `bench generate` / `bench run --resume` on a run folder, so a job killed half-way (time
limit, pre-emption) continues from the run's own checkpoints when the sweep is started again.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.run.folder import RunFolder

RESULTS = "results.json"


def generation_is_done(folder: Path) -> bool:
    """A generation job is done when its run folder's state.json marks the `generate` stage
    finished (the stage does that only once every requested pair is in the synthetic set)."""
    return RunFolder(folder).is_done("generate")


def cell_is_done(folder: Path) -> bool:
    """A cell is done when its run folder's state.json marks the `report` stage finished and
    results.json is there (what `bench run --resume` itself checks before skipping the report)."""
    return RunFolder(folder).is_done("report") and (Path(folder) / RESULTS).exists()


def prepare_run_folder(config: dict, folder: str, cache: str) -> None:
    """Claim the run folder with the cell's resolved configuration (config.json, every method
    option filled in from its preset), so each cell's configuration is on disk before any job
    starts, and a folder holding another configuration is refused before anything is submitted."""
    run = _run(config, folder, cache)
    run.folder.claim(run.resolved_config(), resume=True, overwrite=False)


def generate_synthetic_set(config: dict, folder: str, cache: str) -> str:
    """The generation job: `bench generate` into `folder` (resumed if it was started); the
    synthetic set lands in the cache, where the cells' runs find it. Returns the set's path."""
    run = _run(config, folder, cache)
    run.execute(resume=True, until="generate")
    return str(run.ctx.synthetic.root)


def run_cell(config: dict, folder: str, cache: str) -> str:
    """A cell's job: `bench run --resume` on its folder. Returns the results.json path."""
    _run(config, folder, cache).execute(resume=True)
    return str(Path(folder) / RESULTS)


def _run(config: dict, folder: str, cache: str):
    from benchmark.config import RunConfig
    from benchmark.run import Run

    return Run(RunConfig.model_validate(config), Path(folder), quiet=True, cache=Path(cache))


class ResumableJob:
    """A job function as submitit's `Checkpointable`: when SLURM pre-empts the job, or its time
    limit is near (submitit's USR2 warning), submitit requeues the same call instead of failing
    it (up to 3 time-outs), and the run continues from its folder's checkpoints. Nothing to save
    here: the run checkpoints itself (Lightning's last.ckpt, finished stages, written pairs)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)

    def checkpoint(self, *args):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args)
