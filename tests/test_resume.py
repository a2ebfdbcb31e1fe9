"""Resume and interrupt: a run stopped by a signal mid-fit continues from its Lightning checkpoint
and ends with the same table as a run that was never stopped."""

import json
import os
import signal

import pytest

from benchmark.cli import main
from benchmark.progress import RunProgress

TINY = ["--image-size", "64", "--categories", "carpet_like,pill", "--set", "segmenter.options.batch_size=4",
        "--set", "generator.options.pairs_per_type=2", "--no-wandb"]
STEPS = 12  # the training set is 7 batches per epoch: a stop at step 5 is mid-epoch, at 7 on the boundary


def bench(*args) -> int:
    return main(["--quiet", *args])


# signal_at_step: tests/conftest.py
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "straight"
    assert bench("run", "--output", str(out), "--set", f"segmenter.options.max_steps={STEPS}", *TINY) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("step, sig", [(5, signal.SIGINT), (7, signal.SIGTERM)])
def test_a_stopped_fit_resumes_from_its_checkpoint_and_ends_with_the_same_table(
        step, sig, uninterrupted, signal_at_step, tmp_path, capsys):
    out = tmp_path / "stopped"
    starts = signal_at_step(step, sig)
    assert bench("run", "--output", str(out), "--set", f"segmenter.options.max_steps={STEPS}", *TINY) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"stopped during train (unified) at {step}/{STEPS}" in err[0]
    assert err[0].endswith(f"resume with: bench run --output {out} --resume")
    state = json.loads((out / "state.json").read_text())
    assert state["train"]["done"] is False and state["generate"]["done"] is True
    assert (out / "checkpoints" / "unified" / "last.ckpt").exists() and not (out / "results.json").exists()

    assert bench("run", "--output", str(out), "--resume") == 0  # no other flag: the stored config
    assert starts == [0, step]  # the resumed fit started at the checkpoint's step, not at 0
    resumed = json.loads((out / "results.json").read_text())
    assert not (out / "checkpoints").exists() and (out / "segmenter" / "unified.pt").exists()  # one copy
    assert resumed["categories"] == uninterrupted["categories"]
    assert resumed["config"] == uninterrupted["config"]
    final_state = json.loads((out / "state.json").read_text())
    # timings are the stage times recorded across both processes, not the resumed process's alone
    assert resumed["timings"]["train"] == final_state["train"]["seconds"] > state["train"]["seconds"]
    assert resumed["timings"]["generate"] == state["generate"]["seconds"]


def test_resume_flags_must_agree_with_the_stored_config(tmp_path, capsys):
    out = tmp_path / "r"
    assert bench("run", "--output", str(out), "--set", "segmenter.options.max_steps=2", *TINY) == 0
    capsys.readouterr()
    assert bench("run", "--output", str(out), "--resume", "--set", "segmenter.options.max_steps=3") == 2
    err = capsys.readouterr().err
    assert "segmenter.options.max_steps=3" in err and "started with segmenter.options.max_steps=2" in err
    assert bench("run", "--output", str(out), "--resume", "--generator", "draem") == 2
    assert "generator.name" in capsys.readouterr().err
    # the same values as stored are fine
    assert bench("run", "--output", str(out), "--resume", "--set", "segmenter.options.max_steps=2",
                 "--image-size", "64") == 0


def test_a_run_that_fails_on_bad_input_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "bad"
    assert bench("run", "--output", str(out), *TINY, "--categories", "no_such_category") == 2
    assert "no_such_category" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("args, fix", [
    (["--generator", "stage", "--image-size", "100"], "pass --image-size 96 or 112"),
    (["--generator", "stage", "--profile", "paper", "--set", "quality.enabled=false",
      "--set", "segmenter.options.weights=none"],
     "--set generator.options.backbone=<folder>"),
    (["--generator", "draem", "--set", "generator.options.source_dir=/nope"], "--set generator.options.source_dir="),
    (["--set", "segmenter.options.weights=/nope.pth"], "--set segmenter.options.weights=<file>"),
])
def test_bad_input_that_a_later_stage_needs_answers_before_the_first_stage(tmp_path, capsys, monkeypatch, args, fix):
    """The backbone (and the size it takes), DRAEM's texture folder and the segmenter's weights are
    checked before the data stage runs, so the message names the fix and no folder is left."""
    from benchmark.run.stages import DataStage

    def no_work(self, ctx):
        raise AssertionError("the data stage ran before the bad input was found")

    monkeypatch.setattr(DataStage, "run", no_work)
    out = tmp_path / "bad"
    assert bench("run", "--output", str(out), *args, "--no-wandb") == 2
    assert fix in capsys.readouterr().err
    assert not out.exists()


def test_bad_input_found_after_the_split_leaves_no_folder(tmp_path, capsys, monkeypatch):
    from benchmark.errors import BenchError
    from benchmark.run.stages import GenerateStage

    def bad_input(self, ctx):
        raise BenchError("found while generating")

    monkeypatch.setattr(GenerateStage, "run", bad_input)
    out = tmp_path / "bad"
    assert bench("run", "--output", str(out), *TINY) == 2
    assert "found while generating" in capsys.readouterr().err
    assert not out.exists()
    monkeypatch.undo()  # the corrected command needs neither --overwrite nor --resume
    assert bench("run", "--output", str(out), *TINY, "--set", "segmenter.options.max_steps=1") == 0


def test_a_failure_after_a_finished_stage_keeps_the_folder_for_resume(tmp_path, capsys, monkeypatch):
    from benchmark.errors import BenchError
    from benchmark.run.stages import TrainStage

    def bad_input(self, ctx):
        raise BenchError("found while training")

    monkeypatch.setattr(TrainStage, "run", bad_input)
    out = tmp_path / "kept"
    assert bench("run", "--output", str(out), *TINY, "--set", "segmenter.options.max_steps=1") == 2
    assert "found while training" in capsys.readouterr().err
    state = json.loads((out / "state.json").read_text())
    assert state["generate"]["done"] is True and state["train"]["done"] is False
    monkeypatch.undo()
    assert bench("run", "--output", str(out), "--resume") == 0
    assert (out / "results.json").exists()


def test_an_interrupted_stage_is_not_shown_as_finished():
    from rich.console import Console

    from benchmark.run.interrupt import RunInterrupted

    progress = RunProgress(console=Console(file=open(os.devnull, "w")))
    with progress, pytest.raises(RunInterrupted):
        with progress.stage("train", 10, "unified"):
            progress.advance(4)
            raise RunInterrupted("step 4")
    task = progress._progress.tasks[0]
    assert task.completed == 4 and not task.finished and "interrupted" in task.fields["info"]
    assert progress.where() == "train (unified) at 4/10"
    with progress, progress.stage("evaluate", 3, "pill"):
        progress.advance(1)
    assert progress._progress.tasks[1].finished


def test_a_stopped_generator_fit_resumes_from_its_checkpoint(signal_at_step, tmp_path, capsys):
    out = tmp_path / "stage"
    args = ["run", "--generator", "stage", "--output", str(out), *TINY, "--categories", "pill",
            "--set", "generator.options.train_steps=6", "--set", "generator.options.sampling_steps=2",
            "--set", "generator.options.pairs_per_type=1", "--set", "segmenter.options.max_steps=1"]
    starts = signal_at_step(3)
    assert bench(*args) == 130
    assert "stopped during fit-gen (all) at 3/6" in capsys.readouterr().err
    assert (out / "checkpoints" / "generator" / "last.ckpt").exists()
    assert bench("run", "--output", str(out), "--resume") == 0
    assert starts == [0, 3, 0]  # generator fit, its resumed continuation from step 3, segmenter fit
    assert (out / "results.json").exists()
    assert not (out / "checkpoints").exists()  # the generator's weights are kept once: synthetic/generator.pt
