"""A sweep from its expanded grid to its summary: write the grid and every cell's configuration
into the sweep folder, skip what is done, hand the rest to a launcher, report.

The sweep folder:
  sweep.yaml                                    the grid as last launched (`bench sweep --output DIR` continues it)
  synthetic/<dataset>/<generator>-seed<k>/      one `bench generate` run folder per synthetic set
  runs/<dataset>/<generator>-<segmenter>-seed<k>/  one `bench run` folder per cell (config.json written first)
  jobs/, jobs.jsonl                             submitit launchers: job pickles and logs, one line per job id
  summary.md, summary.csv, summary.json, results/, leaderboard.md   (benchmark.sweep.summary)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from benchmark.errors import BenchError
from benchmark.storage import atomic_write_text
from benchmark.sweep.grid import GRID_FILE, Cell, GenerationJob, SweepGrid, grid_yaml
from benchmark.sweep.jobs import (cell_is_done, generate_synthetic_set, generation_is_done, prepare_run_folder,
                                  run_cell)
from benchmark.sweep.launchers import Outcome, Task, make_launcher
from benchmark.sweep.summary import write_summary

log = logging.getLogger(__name__)

SUMMARY_TASK = "summary"


class Sweep:
    def __init__(self, grid: SweepGrid, folder: Path, generations: list[GenerationJob], cells: list[Cell],
                 cache: Path, launcher=None):
        self.grid = grid
        self.folder = Path(folder)
        self.generations = generations
        self.cells = cells
        self.cache = Path(cache)
        self.launcher = launcher
        self.skipped: list[str] = []

    def cell_records(self) -> list[dict]:
        return [{"dataset": c.dataset, "generator": c.generator, "segmenter": c.segmenter, "seed": c.seed,
                 "folder": str(c.folder)} for c in self.cells]

    def tasks(self) -> tuple[list[Task], list[Task], Task]:
        """The jobs still to run: generation jobs whose set some unfinished cell needs and that are
        not done, unfinished cells (after their generation job), and the summary."""
        cache = str(self.cache)
        todo = [c for c in self.cells if not cell_is_done(c.folder)]
        self.skipped = [c.name for c in self.cells if cell_is_done(c.folder)]
        needed = {c.generation.name for c in todo}
        generations = [Task("generate", g.name, generate_synthetic_set,
                            (g.config.model_dump(mode="json"), str(g.folder), cache))
                       for g in self.generations if g.name in needed and not generation_is_done(g.folder)]
        pending = {t.name for t in generations}
        cells = [Task("cell", c.name, run_cell, (c.config.model_dump(mode="json"), str(c.folder), cache),
                      after=c.generation.name if c.generation.name in pending else None) for c in todo]
        return generations, cells, Task(SUMMARY_TASK, SUMMARY_TASK, write_summary,
                                        (str(self.folder), self.cell_records()))

    def prepare(self, generations: list[Task], cells: list[Task]) -> None:
        """sweep.yaml, and every pending job's run folder claimed with its resolved configuration
        (a folder left by a different grid is refused here, before anything runs)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / GRID_FILE, grid_yaml(self.grid))
        for task in [*generations, *cells]:
            try:
                prepare_run_folder(*task.args)
            except BenchError as e:
                raise BenchError(f"{e} (in a sweep: delete that folder to redo it with the grid's configuration, "
                                 "or give the sweep another --output)") from None

    def launch(self) -> Outcome:
        generations, cells, summary = self.tasks()
        self.prepare(generations, cells)
        launcher = self.launcher or make_launcher(self.folder, self.grid.launcher)
        log.info("sweep %s: %d cells (%d done), %d synthetic sets to make, launcher %s", self.folder,
                 len(self.cells), len(self.skipped), len(generations), launcher.name)
        return launcher.run(generations, cells, summary)

    def report(self, outcome: Outcome, stream) -> int:
        """Print what happened (and the table, when the sweep waited for it); exit code 1 when a
        job failed."""
        from benchmark.tables import output_console, print_tables

        done_before = f"{len(self.skipped)} cell(s) already done, skipped" if self.skipped else "no cell done before"
        print(f"sweep {self.folder}: {len(self.cells)} cells; {done_before}", file=stream)
        if not outcome.waited:
            print(f"submitted {len(outcome.submitted)} jobs (ids and logs: {self.folder / 'jobs.jsonl'}); "
                  f"the summary job writes {self.folder / 'summary.md'} when the cells have ended; "
                  f"run the same command again to resubmit what did not finish", file=stream)
            return 0
        for name, reason in outcome.failed.items():
            print(f"failed: {name}: {reason}", file=stream)
        summary = self.folder / "summary.json"
        rows = json.loads(summary.read_text())["rows"] if summary.exists() else []
        if rows:
            from benchmark.sweep.summary import summary_table

            print_tables(summary_table(rows), output_console())
            print(f"summary: {self.folder / 'summary.md'}; leaderboard: {self.folder / 'leaderboard.md'}", file=stream)
        else:
            print("no cell has results yet", file=stream)
        if outcome.failed:
            print(f"{len(outcome.failed)} job(s) failed; fix the cause and run the same command again "
                  "(finished cells are kept)", file=stream)
            return 1
        return 0

