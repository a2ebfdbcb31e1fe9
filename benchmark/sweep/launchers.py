"""Where a sweep's jobs run: in this process one after another, on the local machine through
submitit's LocalExecutor (one job per visible GPU at a time) or DebugExecutor, or on SLURM
through submitit's AutoExecutor. Ordering is the same everywhere: a generation job first, then
the segmenter cells that consume its synthetic set, then the summary.

On SLURM the order is SLURM's job dependencies (`afterok` on the generation job; the summary job
`afterany` on every cell), so `bench sweep` submits everything at once and can exit; the local
launchers wait for each phase instead (submitit's local executors have no dependencies).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from benchmark.errors import BenchError, missing_extra
from benchmark.storage import atomic_write_text
from benchmark.sweep.jobs import ResumableJob

log = logging.getLogger(__name__)

JOBS_FOLDER = "jobs"  # submitit's pickles and logs, one set per job id
JOBS_FILE = "jobs.jsonl"  # one line per submitted job: kind, name, job id, log files
SLURM_TIME_LIMIT_MIN = 240  # a SLURM job's time limit unless --time says otherwise
LOCAL_TIME_LIMIT_MIN = 7 * 24 * 60  # local jobs: no real limit (submitit's LocalExecutor would stop them after 2 min)
# sacct states of a job that is not over: a second submission now would race it on the same folders
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING"}


@dataclass
class Task:
    """One job: `fn(*args)`; `after` names the task it needs finished first."""

    kind: str  # "generate" | "cell" | "summary"
    name: str
    fn: Callable
    args: tuple
    after: str | None = None


@dataclass
class Outcome:
    """What became of the tasks: finished names, failures (name -> one line) and submitted job ids."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    submitted: dict[str, str] = field(default_factory=dict)  # name -> job id (submitit launchers)
    waited: bool = True  # False: jobs were submitted and left running (SLURM without --wait)


class InProcessLauncher:
    """`local` with at most one visible GPU: each job in turn, in this process."""

    name = "local"

    def run(self, generations: list[Task], cells: list[Task], summary: Task) -> Outcome:
        from benchmark.run.interrupt import RunInterrupted

        outcome = Outcome()
        for task in [*generations, *cells]:
            if task.after in outcome.failed:
                outcome.failed[task.name] = f"not run: {task.after} failed"
                continue
            log.info("sweep: %s", task.name)
            try:
                task.fn(*task.args)
            except RunInterrupted:  # Ctrl-C / SIGTERM: the whole sweep stops (its checkpoint is saved)
                raise
            except Exception as e:  # one job's failure (bad data, a method's exception); the rest go on
                log.debug("sweep: %s failed", task.name, exc_info=True)
                outcome.failed[task.name] = _first_line(e)
                continue
            outcome.done.append(task.name)
        summary.fn(*summary.args)
        return outcome


class SubmititLauncher:
    """Jobs through submitit. `cluster="slurm"`: everything submitted at once with dependencies;
    `"local"` (subprocesses, one per slot of `slots` at a time: a GPU index, or None for a CPU job)
    and `"debug"` (in this process, for tests and pdb): phase by phase."""

    def __init__(self, sweep_folder: Path, cluster: str, options, slots: list[int | None] | None = None):
        try:
            import submitit  # noqa: F401
        except ImportError as err:
            raise missing_extra("slurm", f"bench sweep --launcher {options.name}", err) from None
        self.folder = Path(sweep_folder)
        self.cluster = cluster
        self.options = options
        self.slots = slots or [None]
        self.name = cluster
        self._jobs_file_lock = threading.Lock()  # local slots record their jobs from several threads

    # -- submitit executors ----------------------------------------------------------------------
    def executor(self, gpus: int, dependency: str | None = None, job_name: str = "sias-sweep",
                 visible_gpus: tuple[int, ...] = ()):
        """SLURM: submitit's AutoExecutor with the launcher options; local: its LocalExecutor (the
        AutoExecutor does not pass `visible_gpus` on), the job seeing only `visible_gpus`; debug:
        its DebugExecutor."""
        import submitit

        o = self.options
        folder = self.folder / JOBS_FOLDER / "%j"
        if self.cluster == "debug":
            return submitit.DebugExecutor(folder=folder)
        if self.cluster == "local":
            executor = submitit.LocalExecutor(folder=folder)
            executor.update_parameters(timeout_min=o.time_min or LOCAL_TIME_LIMIT_MIN, gpus_per_node=gpus,
                                       visible_gpus=visible_gpus,
                                       tasks_per_node=1, nodes=1, setup=list(o.setup))
            return executor
        executor = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        sbatch = dict(o.sbatch)
        if dependency:
            sbatch["dependency"] = dependency
        params: dict[str, Any] = {
            "timeout_min": o.time_min or SLURM_TIME_LIMIT_MIN, "gpus_per_node": gpus or None, "tasks_per_node": 1, "nodes": 1,
            "name": job_name, "cpus_per_task": o.cpus_per_job, "mem_gb": o.mem_gb,
            "slurm_partition": o.partition, "slurm_array_parallelism": o.array_parallelism,
            "slurm_account": o.account, "slurm_qos": o.qos, "slurm_setup": list(o.setup) or None,
            "slurm_additional_parameters": sbatch or None}
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return executor

    def record(self, task: Task, job) -> None:
        """Append the job to jobs.jsonl: its id, and where its logs go."""
        paths = getattr(job, "paths", None)
        line = {"kind": task.kind, "name": task.name, "job_id": str(job.job_id), "cluster": self.cluster,
                "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "stdout": str(paths.stdout) if paths else None, "stderr": str(paths.stderr) if paths else None}
        path = self.folder / JOBS_FILE
        with self._jobs_file_lock:
            previous = path.read_text() if path.exists() else ""
            atomic_write_text(path, previous + json.dumps(line) + "\n")

    def active_slurm_jobs(self) -> list[str]:
        """Job ids of jobs.jsonl that sacct says are not over (one sacct call for all of them)."""
        path = self.folder / JOBS_FILE
        if not path.exists():
            return []
        from submitit.slurm.slurm import SlurmJob

        ids = [line["job_id"] for line in map(json.loads, path.read_text().splitlines()) if line["cluster"] == "slurm"]
        jobs = [SlurmJob(self.folder / JOBS_FOLDER / "%j", job_id) for job_id in ids]
        states = [job.watcher.get_state(job.job_id, mode="force" if i == 0 else "cache") for i, job in enumerate(jobs)]
        return [job.job_id for job, state in zip(jobs, states) if (state.split() or [""])[0] in ACTIVE_STATES]

    # -- running ---------------------------------------------------------------------------------
    def run(self, generations: list[Task], cells: list[Task], summary: Task) -> Outcome:
        if self.cluster == "slurm":
            return self._submit_with_dependencies(generations, cells, summary)
        outcome = Outcome()
        for phase in (generations, cells):
            runnable = []
            for task in phase:
                if task.after in outcome.failed:
                    outcome.failed[task.name] = f"not run: {task.after} failed"
                else:
                    runnable.append(task)
            self._run_in_slots(runnable, outcome)
        summary.fn(*summary.args)  # cheap: reads results.json files, here in this process
        return outcome

    def _run_in_slots(self, tasks: list[Task], outcome: Outcome) -> None:
        """At most one job per slot at a time (a slot is a GPU, or one CPU job)."""
        free: queue.Queue = queue.Queue()
        for slot in self.slots:
            free.put(slot)

        def run_one(task: Task) -> None:
            slot = free.get()
            try:
                executor = self.executor(gpus=0 if slot is None else 1, job_name=task.name,
                                         visible_gpus=() if slot is None else (slot,))
                job = executor.submit(task.fn, *task.args)
                outcome.submitted[task.name] = str(job.job_id)
                self.record(task, job)
                try:
                    job.result()
                except Exception as e:  # submitit's FailedJobError carries the job's traceback
                    outcome.failed[task.name] = _last_line(e)
                else:
                    outcome.done.append(task.name)
            finally:
                free.put(slot)

        with ThreadPoolExecutor(max_workers=len(self.slots)) as pool:
            list(pool.map(run_one, tasks))

    def _submit_with_dependencies(self, generations: list[Task], cells: list[Task], summary: Task) -> Outcome:
        """Generation jobs as one array; each generation job's cells as an array that starts after
        it succeeded (`afterok`), all cells at once when no generation job was needed; the summary
        job after every cell ended, failed or not (`afterany`)."""
        active = self.active_slurm_jobs()
        if active:
            raise BenchError(f"{self.folder}: jobs of an earlier submission are still queued or running "
                             f"({', '.join(active[:5])}{' ...' if len(active) > 5 else ''}); wait for them to end "
                             "(or scancel them), then run the sweep again")
        outcome = Outcome(waited=False)
        gpus = self.options.gpus_per_job
        jobs: dict[str, Any] = {}
        executor = self.executor(gpus, job_name="sias-generate")
        with executor.batch():
            pending = [(t, executor.submit(ResumableJob(t.fn), *t.args)) for t in generations]
        for task, job in pending:
            jobs[task.name] = job
        groups: dict[str | None, list[Task]] = {}
        for task in cells:
            groups.setdefault(task.after if task.after in jobs else None, []).append(task)
        for after, group in groups.items():
            dependency = f"afterok:{jobs[after].job_id}" if after else None
            executor = self.executor(gpus, dependency, job_name="sias-cell")
            with executor.batch():
                pending = [(t, executor.submit(ResumableJob(t.fn), *t.args)) for t in group]
            for task, job in pending:
                jobs[task.name] = job
        cell_ids = [str(jobs[t.name].job_id) for t in cells if t.name in jobs]
        executor = self.executor(0, f"afterany:{':'.join(cell_ids)}" if cell_ids else None, job_name="sias-summary")
        jobs[summary.name] = executor.submit(summary.fn, *summary.args)
        for task in [*generations, *cells, summary]:
            outcome.submitted[task.name] = str(jobs[task.name].job_id)
            self.record(task, jobs[task.name])
        if self.options.wait:
            outcome.waited = True
            for task in [*generations, *cells]:
                try:
                    jobs[task.name].result()
                except Exception as e:
                    outcome.failed[task.name] = _last_line(e)
                else:
                    outcome.done.append(task.name)
            try:
                jobs[summary.name].result()
            except Exception as e:
                outcome.failed[summary.name] = _last_line(e)
        return outcome


def visible_gpus() -> list[int]:
    """The GPU indices a local sweep spreads its jobs over (CUDA's own count; none on a CPU machine)."""
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def local_launcher(sweep_folder: Path, options):
    """`--launcher local`: more than one visible GPU -> one job per GPU at a time (submitit's
    LocalExecutor, each job sees one GPU); otherwise each job in turn in this process.
    Not yet run on a machine with several GPUs: tested on CPU with one slot (docs/sweep.md)."""
    gpus = visible_gpus()
    if len(gpus) > 1:
        return SubmititLauncher(sweep_folder, "local", options, slots=gpus)
    return InProcessLauncher()


def make_launcher(sweep_folder: Path, options):
    if options.name == "slurm":
        return SubmititLauncher(sweep_folder, "slurm", options)
    return local_launcher(sweep_folder, options)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _last_line(e: BaseException) -> str:
    """A failed submitit job's error ends with the job's own exception line; keep that."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(e).__name__
