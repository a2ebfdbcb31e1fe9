"""`bench sweep`: the grid file, the seed statistics, a 2 x 2 grid on the demo data run locally
(and resumed), the same grid through submitit's DebugExecutor and LocalExecutor, and the sbatch
scripts submitit writes for SLURM (with a stand-in `sbatch` that records them)."""

import json
import os
import re
import stat
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.errors import BenchError
from benchmark.sweep.grid import expand, load_grid_file, validate_grid
from benchmark.sweep.summary import seed_statistics

# training-free generators, tiny segmenters: the grid is about the plumbing, not the numbers
TINY_BASE = {"wandb": False, "data": {"image_size": 64, "categories": ["carpet_like", "pill"]},
             "generator": {"options": {"pairs_per_type": 2}},
             "segmenter": {"options": {"max_steps": 3, "batch_size": 4}}}
GRID = {"base": TINY_BASE, "generators": ["cutpaste", "real-only"], "segmenters": ["unet", "lfd"], "seeds": [0]}


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


# -- the grid ----------------------------------------------------------------------------------------
def test_grid_file_with_a_base_run_config_expands_to_one_configuration_per_cell(tmp_path):
    base = write_yaml(tmp_path / "run.yaml", {"profile": "smoke", "segmenter": {"options": {"max_steps": 7}}})
    grid_file = write_yaml(tmp_path / "grid.yaml", {
        "base": "run.yaml",  # a `bench run --config` file, relative to the grid file
        "generators": ["cutpaste", {"name": "real-only"}],
        "segmenters": ["unet", {"name": "lfd", "options": {"max_steps": 2}}],
        "datasets": ["demo"], "seeds": [0, 1]})
    assert base.exists()
    grid = validate_grid(load_grid_file(grid_file), str(grid_file))
    generations, cells = expand(grid, tmp_path / "sweep")
    assert len(cells) == 2 * 2 * 2 and len(generations) == 2 * 2  # one synthetic set per (dataset, generator, seed)
    by_name = {c.name: c for c in cells}
    unet, lfd = by_name["demo/cutpaste/unet/seed1"], by_name["demo/cutpaste/lfd/seed1"]
    assert unet.config.segmenter.options == {"max_steps": 7}  # the base
    assert lfd.config.segmenter.options == {"max_steps": 2}  # the axis entry over the base
    assert unet.config.seed == 1 and unet.config.generator.name == "cutpaste" and unet.config.data.root is None
    assert unet.folder == tmp_path / "sweep" / "runs" / "demo" / "cutpaste-unet-seed1"
    assert unet.generation is lfd.generation  # both segmenters consume one synthetic set
    assert unet.generation.config.segmenter.options == {}  # segmenter options do not touch the set's folder
    assert unet.generation.folder == tmp_path / "sweep" / "synthetic" / "demo" / "cutpaste-seed1"


@pytest.mark.parametrize("grid, message", [
    ({"generators": ["cutpast"], "segmenters": ["unet"], "datasets": ["demo"]},
     "cell cutpast/unet/seed0 on demo: unknown generator 'cutpast' (did you mean 'cutpaste'?)"),
    ({"generators": ["cutpaste"], "segmenters": ["unet"], "seedz": [1]}, "seedz"),
    ({"generators": ["cutpaste", "cutpaste"], "segmenters": ["unet"]}, "label"),
    ({"generators": ["cutpaste"], "segmenters": ["unet"], "base": {"data": {"image_sizee": 64}}}, "image_size"),
])
def test_a_bad_grid_is_one_line_naming_the_file_and_key(grid, message, tmp_path, capsys):
    path = write_yaml(tmp_path / "grid.yaml", grid)
    assert main(["sweep", "--config", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and message in err
    assert not (tmp_path / "out").exists()  # nothing made before the grid is known good


def test_a_dataset_entry_in_the_wrong_layout_names_the_grid_file_the_cell_and_its_key(tmp_path, capsys):
    root = tmp_path / "B"
    (root / "notes").mkdir(parents=True)
    path = write_yaml(tmp_path / "grid.yaml", {"generators": ["cutpaste"], "segmenters": ["unet"],
                                               "datasets": [{"root": str(root)}]})
    assert main(["sweep", "--config", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}, cell B/cutpaste/unet/seed0: {root} is not a mvtec dataset")
    assert "--data-root must be the folder that holds the category folders" in err
    assert "keys root:, layout: and categories: of the cell's datasets entry" in err
    assert not (tmp_path / "out").exists()


def test_flags_replace_the_grid_files_axes(tmp_path):
    from benchmark.sweep.command import grid_settings
    from benchmark.cli import build_parser

    path = write_yaml(tmp_path / "grid.yaml", {**GRID, "seeds": [0, 1, 2]})
    args = build_parser().parse_args(["sweep", "--config", str(path), "--output", str(tmp_path / "o"),
                                      "--seeds", "4,5", "--segmenters", "unet", "--datasets", "demo,visa:/data/visa",
                                      "--set", "segmenter.options.max_steps=9", "--launcher", "slurm",
                                      "--partition", "gpu", "--array-parallelism", "3"])
    raw, _ = grid_settings(args)
    grid = validate_grid(raw)
    assert grid.seeds == [4, 5] and [s.name for s in grid.segmenters] == ["unet"]
    assert [s.name for s in grid.generators] == ["cutpaste", "real-only"]  # from the file
    assert [d.data_section() for d in grid.datasets] == [{"root": None}, {"layout": "visa", "root": "/data/visa"}]
    assert grid.base["segmenter"]["options"] == {"max_steps": 9, "batch_size": 4}
    assert (grid.launcher.name, grid.launcher.partition, grid.launcher.array_parallelism) == ("slurm", "gpu", 3)


# -- mean and spread over seeds ---------------------------------------------------------------------
def test_seed_statistics_are_the_mean_and_the_sample_standard_deviation():
    # by hand: mean (0.5 + 0.7 + 0.9) / 3 = 0.7; deviations -0.2, 0, 0.2; (0.04 + 0 + 0.04) / (3 - 1) = 0.04
    stats = seed_statistics([0.5, 0.7, 0.9])
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(0.7) and stats["std"] == pytest.approx(0.2)
    # a seed whose metric is undefined (NaN) is left out: mean of 0.2 and 0.6, (0.04 + 0.04) / 1
    stats = seed_statistics([0.2, float("nan"), 0.6])
    assert stats["n"] == 2 and stats["mean"] == pytest.approx(0.4) and stats["std"] == pytest.approx(0.08 ** 0.5)
    assert seed_statistics([0.3]) == {"mean": 0.3, "std": None, "n": 1}  # no spread from one seed


def test_seed_mean_results_average_each_category_then_the_mean(tmp_path):
    from benchmark.sweep.summary import write_summary

    cells = []
    for seed, (a, b) in enumerate([(0.2, 0.4), (0.6, 1.0)]):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        results = {"run": {"id": f"r{seed}", "time": "2026-01-01T00:00:00"},
                   "config": {"data": {"name": "demo", "image_size": 64}, "generator": {"name": "cutpaste"},
                              "segmenter": {"name": "unet"}, "split": {"fraction": 0.3333, "order": "id"},
                              "metrics": {}, "seed": seed},
                   "categories": {"a": {"pixel": {"ap": a}}, "b": {"pixel": {"ap": b}}},
                   "mean": {"pixel": {"ap": (a + b) / 2}}}
        (folder / "results.json").write_text(json.dumps(results))
        cells.append({"dataset": "demo", "generator": "cutpaste", "segmenter": "unet", "seed": seed,
                      "folder": str(folder)})
    write_summary(str(tmp_path), cells)
    row = json.loads((tmp_path / "summary.json").read_text())["rows"][0]
    # by hand: run means 0.3 and 0.8 -> mean 0.55, std |0.8 - 0.3| / sqrt(2)
    assert row["metrics"]["pixel.ap"]["mean"] == pytest.approx(0.55)
    assert row["metrics"]["pixel.ap"]["std"] == pytest.approx(0.5 / 2 ** 0.5)
    mean_results = json.loads((tmp_path / "results" / "demo-cutpaste-unet.json").read_text())
    assert mean_results["categories"]["a"]["pixel"]["ap"] == pytest.approx(0.4)  # (0.2 + 0.6) / 2
    assert mean_results["categories"]["b"]["pixel"]["ap"] == pytest.approx(0.7)  # (0.4 + 1.0) / 2
    assert mean_results["run"]["seeds"] == [0, 1]
    assert "0.55" not in (tmp_path / "summary.md").read_text() and "55.00 ± 35.36" in (tmp_path / "summary.md").read_text()
    assert "Sweep leaderboard" in (tmp_path / "leaderboard.md").read_text()
    (tmp_path / "results" / "demo-draem-unet.json").write_text("{}")  # a row of an earlier, larger grid
    write_summary(str(tmp_path), cells)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["demo-cutpaste-unet.json"]


# -- the grid run end to end ------------------------------------------------------------------------
def grid_arguments(out: Path) -> list[str]:
    return ["--quiet", "sweep", "--generators", "cutpaste,real-only", "--segmenters", "unet,lfd", "--seeds", "0",
            "--no-wandb", "--output", str(out), "--set", "data.image_size=64", "--set", "data.categories=[carpet_like,pill]",
            "--set", "generator.options.pairs_per_type=2", "--set", "segmenter.options.max_steps=3",
            "--set", "segmenter.options.batch_size=4"]


def check_finished_grid(out: Path) -> None:
    cells = sorted(out.glob("runs/demo/*"))
    assert [c.name for c in cells] == ["cutpaste-lfd-seed0", "cutpaste-unet-seed0", "real-only-lfd-seed0",
                                       "real-only-unet-seed0"]
    for cell in cells:
        assert (cell / "results.json").exists() and (cell / "config.json").exists()
        # the cell reused the set its generation job made: same cache folder, nothing generated in the cell
        generator = json.loads((cell / "config.json").read_text())["generator"]["name"]
        made = (out / "synthetic" / "demo" / f"{generator}-seed0" / "synthetic").resolve()
        assert (cell / "synthetic").resolve() == made
        assert json.loads((cell / "state.json").read_text())["generate"]["seconds"] < 1.0
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert {(r["generator"], r["segmenter"]) for r in rows} == {(g, s) for g in ("cutpaste", "real-only") for s in ("unet", "lfd")}
    assert all(r["seeds"] == [0] for r in rows)
    assert "cutpaste" in (out / "leaderboard.md").read_text()


@pytest.mark.slow
def test_grid_runs_locally_then_a_rerun_skips_done_cells_and_finishes_an_unfinished_one(tmp_path, capsys, one_thread):
    out = tmp_path / "sweep"
    assert main(grid_arguments(out)) == 0
    check_finished_grid(out)
    capsys.readouterr()
    kept = out / "runs/demo/cutpaste-unet-seed0/results.json"
    redo = out / "runs/demo/real-only-lfd-seed0/results.json"
    before = kept.stat().st_mtime_ns
    redo.unlink()  # an unfinished cell: results.json missing
    assert main(["--quiet", "sweep", "--output", str(out)]) == 0  # the folder's sweep.yaml: the same grid
    printed = capsys.readouterr().out
    assert "3 cell(s) already done, skipped" in printed
    assert kept.stat().st_mtime_ns == before and redo.exists()
    check_finished_grid(out)


@pytest.mark.slow
def test_the_same_grid_through_submitits_debug_executor(tmp_path, one_thread):
    from benchmark.sweep.launchers import SubmititLauncher

    out = tmp_path / "sweep"
    launcher = SubmititLauncher(out, "debug", validate_grid(GRID).launcher)
    outcome = sweep_of(GRID, out, launcher).launch()
    assert outcome.failed == {} and len(outcome.done) == 2 + 4
    check_finished_grid(out)
    jobs = [json.loads(line) for line in (out / "jobs.jsonl").read_text().splitlines()]
    assert [j["kind"] for j in jobs] == ["generate"] * 2 + ["cell"] * 4  # generation first, then the cells
    assert all(j["job_id"] and j["cluster"] == "debug" for j in jobs)


@pytest.mark.slow
def test_the_same_grid_through_submitits_local_executor_in_subprocesses(tmp_path):
    from benchmark.sweep.launchers import SubmititLauncher

    out = tmp_path / "sweep"
    # slot 0: the path of a machine with GPUs (the job sees CUDA_VISIBLE_DEVICES=0; none here, so CPU)
    launcher = SubmititLauncher(out, "local", validate_grid(GRID).launcher, slots=[0])
    outcome = sweep_of(GRID, out, launcher).launch()
    assert outcome.failed == {} and len(outcome.done) == 2 + 4
    check_finished_grid(out)
    jobs = [json.loads(line) for line in (out / "jobs.jsonl").read_text().splitlines()]
    assert [j["kind"] for j in jobs] == ["generate"] * 2 + ["cell"] * 4
    assert all(Path(j["stdout"]).exists() for j in jobs)  # each job's log in the sweep folder
    assert all(j["job_id"] != str(os.getpid()) for j in jobs)  # a process of its own


def test_slurm_jobs_are_requeued_with_the_same_call_on_preemption_or_timeout():
    from submitit.helpers import DelayedSubmission

    from benchmark.sweep.jobs import ResumableJob, run_cell

    job = ResumableJob(run_cell)
    again = job.checkpoint({"seed": 1}, "/runs/x", "/cache")
    assert isinstance(again, DelayedSubmission)  # what submitit requeues
    assert again.function is job and again.args == ({"seed": 1}, "/runs/x", "/cache")


def test_a_local_gpu_slot_is_the_only_gpu_its_job_sees(tmp_path):
    from benchmark.sweep.launchers import SubmititLauncher

    launcher = SubmititLauncher(tmp_path, "local", validate_grid(GRID).launcher, slots=[2, 5])
    executor = launcher.executor(gpus=1, visible_gpus=(5,))
    assert executor.parameters["gpus_per_node"] == 1 and executor.parameters["visible_gpus"] == (5,)
    assert executor.parameters["timeout_min"] >= 24 * 60  # no real limit, not submitit's 2-minute default


def test_a_cell_folder_holding_another_configuration_is_refused_before_anything_runs(tmp_path):
    grid = {**GRID, "generators": ["cutpaste"], "segmenters": ["unet"]}
    out = tmp_path / "sweep"
    sweep = sweep_of(grid, out, launcher=None)
    sweep.prepare(*sweep.tasks()[:2])
    assert json.loads((out / "runs/demo/cutpaste-unet-seed0/config.json").read_text())["segmenter"]["options"]["max_steps"] == 3
    changed = {**grid, "base": {**TINY_BASE, "segmenter": {"options": {"max_steps": 5, "batch_size": 4}}}}
    sweep = sweep_of(changed, out, launcher=None)
    with pytest.raises(BenchError, match=r"cutpaste-unet-seed0.*segmenter.options.max_steps.*delete that folder"):
        sweep.prepare(*sweep.tasks()[:2])


def sweep_of(raw: dict, out: Path, launcher):
    from benchmark.storage import cache_root
    from benchmark.sweep.runner import Sweep

    grid = validate_grid(raw)
    generations, cells = expand(grid, out)
    return Sweep(grid, out, generations, cells, cache_root(), launcher=launcher)


# -- SLURM: the sbatch scripts submitit writes -------------------------------------------------------
FAKE_SBATCH = """#!/bin/sh
# stands in for sbatch: keeps the script, answers like sbatch
n=$(ls "$SBATCH_RECORD" | wc -l)
cp "$1" "$SBATCH_RECORD/$((n + 100)).sh"
echo "Submitted batch job $((n + 100))"
"""
FAKE_SACCT = """#!/bin/sh
# stands in for sacct: every job asked about (-j <id>, arrays of two) is still running
echo "JobID|State|NodeList"
while [ $# -gt 0 ]; do
  if [ "$1" = "-j" ]; then echo "$2|RUNNING|n1"; echo "$2_0|RUNNING|n1"; echo "$2_1|RUNNING|n1"; fi
  shift
done
"""


@pytest.fixture
def slurm_watcher():
    """submitit keeps one sacct watcher per process; start and end with it empty."""
    from submitit.slurm.slurm import SlurmJob

    SlurmJob.watcher.clear()
    yield
    SlurmJob.watcher.clear()


def test_slurm_submission_writes_sbatch_scripts_with_the_options_and_dependencies(tmp_path, monkeypatch, capsys,
                                                                                   slurm_watcher):
    bin_dir, record = tmp_path / "bin", tmp_path / "sbatch-scripts"
    bin_dir.mkdir(), record.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/sh\nexit 0\n"), ("sacct", FAKE_SACCT)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_RECORD", str(record))
    out = tmp_path / "sweep"
    grid = write_yaml(tmp_path / "grid.yaml", {**GRID, "launcher": {"sbatch": {"constraint": "a100"},
                                                                    "setup": ["source /opt/venv/bin/activate"]}})
    assert main(["--quiet", "sweep", "--config", str(grid), "--output", str(out), "--launcher", "slurm",
                 "--partition", "gpu", "--gpus-per-job", "1", "--time", "30", "--array-parallelism", "1",
                 "--cpus-per-job", "4", "--mem-gb", "16"]) == 0
    assert "submitted 7 jobs" in capsys.readouterr().out  # 2 generation, 4 cells, the summary
    scripts = [p.read_text() for p in sorted(record.glob("*.sh"), key=lambda p: int(p.stem))]
    assert len(scripts) == 4  # generation array, one cell array per synthetic set, the summary job
    generate, cells_a, cells_b, summary = scripts
    for script in (generate, cells_a, cells_b):
        assert "#SBATCH --partition=gpu" in script and "#SBATCH --gpus-per-node=1" in script
        assert "#SBATCH --time=30" in script and "#SBATCH --cpus-per-task=4" in script and "#SBATCH --mem=16GB" in script
        assert "#SBATCH --constraint=a100" in script and "source /opt/venv/bin/activate" in script
        assert re.search(r"#SBATCH --array=0-1%1", script)  # two jobs each, one at a time
        assert f"#SBATCH --output={out}/jobs/%A_%a/" in script  # logs in the sweep folder
    assert "#SBATCH --dependency" not in generate
    assert "#SBATCH --dependency=afterok:100_0" in cells_a and "#SBATCH --dependency=afterok:100_1" in cells_b
    assert "--gpus-per-node" not in summary and "--array" not in summary  # a CPU job
    assert "#SBATCH --dependency=afterany:101_0:101_1:102_0:102_1" in summary
    jobs = [json.loads(line) for line in (out / "jobs.jsonl").read_text().splitlines()]
    assert [(j["kind"], j["job_id"]) for j in jobs] == [
        ("generate", "100_0"), ("generate", "100_1"), ("cell", "101_0"), ("cell", "101_1"), ("cell", "102_0"),
        ("cell", "102_1"), ("summary", "103")]
    # every cell's resolved configuration is in its folder before any job runs
    config = json.loads((out / "runs/demo/real-only-lfd-seed0/config.json").read_text())
    assert config["segmenter"]["options"]["max_steps"] == 3 and config["generator"]["name"] == "real-only"
    # run again while those jobs are queued: refused, nothing submitted twice
    assert main(["--quiet", "sweep", "--output", str(out)]) == 2
    assert "still queued or running (100_0, 100_1, 101_0" in capsys.readouterr().err
    assert len(list(record.glob("*.sh"))) == 4


# -- failures and interruptions (jobs replaced by stand-ins: this is about the launcher) -------------
@pytest.fixture
def stand_in_jobs(monkeypatch):
    """Generation and cell jobs that only record their call; `fail` maps a folder name part to the
    exception its job raises."""
    from benchmark.sweep import runner

    calls, fail = [], {}

    def job(kind):
        def run(config, folder, cache):
            calls.append((kind, Path(folder).relative_to(Path(folder).parents[2]).as_posix()))
            for part, error in fail.items():
                if part in folder:
                    raise error
        return run

    monkeypatch.setattr(runner, "prepare_run_folder", lambda *args: None)
    monkeypatch.setattr(runner, "generate_synthetic_set", job("generate"))
    monkeypatch.setattr(runner, "run_cell", job("cell"))
    return calls, fail


def test_a_failed_generation_job_skips_its_cells_and_the_others_go_on(tmp_path, capsys, stand_in_jobs):
    calls, fail = stand_in_jobs
    fail["synthetic/demo/cutpaste"] = BenchError("no defects in carpet_like")
    fail["runs/demo/real-only-lfd"] = RuntimeError("CUDA out of memory")
    assert main(grid_arguments(tmp_path / "sweep")) == 1
    assert [c for c in calls if c[0] == "cell"] == [("cell", "runs/demo/real-only-unet-seed0"),
                                                     ("cell", "runs/demo/real-only-lfd-seed0")]
    out = capsys.readouterr().out
    assert "failed: generate demo/cutpaste/seed0: BenchError: no defects in carpet_like" in out
    assert "failed: demo/cutpaste/unet/seed0: not run: generate demo/cutpaste/seed0 failed" in out
    assert "failed: demo/real-only/lfd/seed0: RuntimeError: CUDA out of memory" in out
    assert "4 job(s) failed; fix the cause and run the same command again" in out


def test_an_interrupted_sweep_names_the_command_that_continues_it(tmp_path, capsys, stand_in_jobs):
    from benchmark.run import RunInterrupted

    _, fail = stand_in_jobs
    fail["runs/demo/cutpaste-unet"] = RunInterrupted("train step 2/3", "SIGTERM")
    assert main(grid_arguments(tmp_path / "sweep")) == 130
    assert f"resume with: bench sweep --output {tmp_path / 'sweep'}" in capsys.readouterr().err


def test_the_grid_file_in_docs_sweep_md_is_valid(tmp_path):
    import yaml

    text = (Path(__file__).resolve().parents[1] / "docs" / "sweep.md").read_text()
    block = re.search(r"```yaml\n# grid.yaml\n(.*?)```", text, re.S).group(1)
    grid = validate_grid(yaml.safe_load(block), "docs/sweep.md")
    generations, cells = expand(grid, tmp_path)
    assert len(cells) == 2 * 3 * 2 * 3 and len(generations) == 2 * 3 * 3
    assert grid.launcher.name == "slurm" and grid.launcher.sbatch == {"constraint": "a100"}
    lfd = next(c for c in cells if c.segmenter == "lfd")
    assert lfd.config.segmenter.options == {"max_steps": 200}  # the entry over the base's 400
    assert {c.dataset for c in cells} == {"demo", "mvtec_ad"}


def test_a_relative_dataset_folder_is_taken_from_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = validate_grid({"generators": ["cutpaste"], "segmenters": ["unet"], "datasets": ["visa:data/visa"]})
    (cell,) = expand(grid, tmp_path / "sweep")[1]
    assert cell.config.data.root == str(tmp_path / "data" / "visa") and cell.config.data.layout == "visa"
    assert cell.folder == tmp_path / "sweep" / "runs" / "visa" / "cutpaste-unet-seed0"


def test_multi_gpu_jobs_are_refused_until_the_launcher_requests_a_task_per_gpu(tmp_path, capsys):
    grid = write_yaml(tmp_path / "grid.yaml", {**GRID, "launcher": {"name": "slurm", "gpus_per_job": 2}})
    assert main(["--quiet", "sweep", "--config", str(grid), "--output", str(tmp_path / "sweep")]) == 2
    assert "gpus_per_job" in capsys.readouterr().err
