"""`bench sweep`: a grid of runs (datasets x generators x segmenters x seeds), each a `bench run`
folder, synthetic sets made once per (dataset, generator, seed) and shared by the segmenters,
resumable, ending in a summary over seeds and a leaderboard (docs/sweep.md).

Modules, imports pointing one way:
  grid       the grid file's schema (pydantic) and its expansion into generation jobs and cells
  jobs       what one job does (picklable functions), and when a job counts as done
  summary    mean and spread over seeds, the seed-mean results.json files, the leaderboard
  launchers  in this process, submitit's LocalExecutor / DebugExecutor, SLURM through submitit
  runner     Sweep: the folder, which jobs are left, launch, report
  command    the CLI
"""

from __future__ import annotations

import importlib

__all__ = ["add_arguments", "run"]


def __getattr__(name: str):
    """`bench`'s entry points, loaded when the CLI asks for them."""
    if name in {"add_arguments", "run"}:
        return getattr(importlib.import_module("benchmark.sweep.command"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
