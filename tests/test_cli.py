"""`bench` end to end on the demo data (tiny settings), and its one-line errors."""

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main

TINY = ["--image-size", "64", "--categories", "carpet_like,pill", "--set", "segmenter.options.max_steps=3",
        "--set", "segmenter.options.batch_size=4", "--set", "generator.options.pairs_per_type=2"]


def bench(*args) -> int:
    return main(["--quiet", *args])


@pytest.fixture(scope="module")
def cutpaste_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "x"
    assert bench("run", "--generator", "cutpaste", "--segmenter", "unet", "--profile", "smoke",
                 "--output", str(out), "--no-wandb", *TINY) == 0
    return out


def test_run_writes_results_in_the_design_format(cutpaste_run):
    results = json.loads((cutpaste_run / "results.json").read_text())
    assert set(results) >= {"run", "config", "categories", "mean", "timings"}
    assert set(results["run"]) >= {"id", "time", "versions", "config_hash"}
    assert results["config"]["generator"]["name"] == "cutpaste"
    assert results["config"]["segmenter"]["options"]["max_steps"] == 3
    assert sorted(results["categories"]) == ["carpet_like", "pill"]
    for entry in [*results["categories"].values(), results["mean"]]:
        assert set(entry["image"]) == {"auroc", "ap", "f1_max"}
        assert set(entry["pixel"]) >= {"auroc", "ap", "f1_max", "pro", "iou"}
        for value in [*entry["image"].values(), *entry["pixel"].values(), entry["miou"], entry["acc"]]:
            assert 0 <= value <= 1, value
    cats = results["categories"]
    assert math.isclose(results["mean"]["pixel"]["ap"], np.mean([c["pixel"]["ap"] for c in cats.values()]))
    assert set(results["timings"]) >= {"data", "generate", "train", "evaluate"}


def test_results_record_precision_source_and_how_the_metrics_were_computed(cutpaste_run):
    from benchmark.metrics.options import MetricOptions

    results = json.loads((cutpaste_run / "results.json").read_text())
    assert results["run"]["precision"] == "32-true"  # trainer.precision unset, no GPU here
    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    if shutil.which("git") and head.returncode == 0:  # a checkout (not an installed copy)
        assert results["run"]["git_commit"] == head.stdout.strip()
        assert isinstance(results["run"]["git_dirty"], bool)
    evaluation = results["evaluation"]
    assert evaluation["metric_options"] == MetricOptions().model_dump(mode="json")  # the defaults, resolved
    assert evaluation["image_size"] == [64, 64]  # --image-size 64
    # auto mode: 2 small categories are far below the 5e7-pixel limit, so both are exact
    assert evaluation["categories"] == {c: {"mode": "exact", "image_sizes": [[64, 64]]} for c in ("carpet_like", "pill")}
    assert "evaluated_as" not in results["categories"]["pill"]  # provenance is not a metric


def test_run_writes_csv_plots_split_and_synthetic_set(cutpaste_run):
    csv_lines = (cutpaste_run / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("category,") and [ln.split(",")[0] for ln in csv_lines[1:]] == ["carpet_like", "pill", "mean"]
    for png in ("samples.png", "per_category.png"):
        assert (cutpaste_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    split = json.loads((cutpaste_run / "split.json").read_text())
    assert set(split["categories"]) == {"carpet_like", "pill"}
    records = (cutpaste_run / "synthetic" / "manifest.jsonl").read_text().splitlines()
    n_types = sum(len(c["train_defects"]) for c in split["categories"].values())
    assert len(records) == 2 * n_types


def test_existing_run_is_refused_then_resumed_without_redoing_work(cutpaste_run, capsys):
    args = ["run", "--generator", "cutpaste", "--segmenter", "unet", "--output", str(cutpaste_run), "--no-wandb", *TINY]
    assert bench(*args) == 2
    assert "--resume" in capsys.readouterr().err
    before = (cutpaste_run / "results.json").read_text()
    weights = {p: p.stat().st_mtime_ns for p in (cutpaste_run / "segmenter").glob("*.pt")}
    assert weights
    assert bench(*args, "--resume") == 0
    after = json.loads((cutpaste_run / "results.json").read_text())
    assert after["categories"] == json.loads(before)["categories"]
    # the trained model was reused, not retrained (its weights file was not rewritten)
    assert {p: p.stat().st_mtime_ns for p in (cutpaste_run / "segmenter").glob("*.pt")} == weights


def test_resume_with_another_config_is_refused(cutpaste_run, capsys):
    assert bench("run", "--generator", "draem", "--output", str(cutpaste_run), "--resume", "--no-wandb", *TINY) == 2
    err = capsys.readouterr().err
    assert "--resume with generator.name=\"draem\"" in err and "started with generator.name=\"cutpaste\"" in err


@pytest.mark.parametrize("args, message", [
    (["--generator", "nope"], "unknown generator 'nope'; known: real-only, cutpaste"),
    (["--segmenter", "nope"], "unknown segmenter 'nope'; known: unet"),
    (["--generator", "defectdiffu"], "planned but not implemented"),
    (["--data-root", "/does/not/exist"], "data root does not exist"),
    (["--set", "segmenter.options.max_steps=-"], "invalid options for unet"),
    (["--set", "nonsense"], "key.path=value"),
    (["--categories", "no_such_category"], "no_such_category"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path, capsys):
    assert bench("run", "--output", str(tmp_path / "r"), "--no-wandb", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_wrong_layout_and_corrupt_images_name_the_file(private_cache, tmp_path, capsys):
    from benchmark.data.demo import demo_dataset_path

    data = tmp_path / "data"
    shutil.copytree(demo_dataset_path(private_cache), data)
    assert bench("run", "--data-root", str(data), "--layout", "btad", "--output", str(tmp_path / "a"), "--no-wandb") == 2
    assert "--layout mvtec" in capsys.readouterr().err
    broken = sorted((data / "wood" / "train" / "good").glob("*.png"))[0]
    broken.write_bytes(b"not a png")
    assert bench("data", "check", "--data-root", str(data), "--layout", "mvtec") == 1
    assert str(broken) in capsys.readouterr().out.replace("\n", "")
    mask = sorted((data / "pill" / "ground_truth").rglob("*_mask.png"))[0]
    mask.unlink()
    assert bench("data", "check", "--data-root", str(data), "--layout", "mvtec") == 1
    out = capsys.readouterr().out.replace("\n", "")
    assert str(broken) in out and mask.name.replace("_mask", "") in out


def test_data_demo_and_check_pass_on_the_demo(tmp_path):
    assert bench("data", "demo", "--output", str(tmp_path / "demo")) == 0
    assert (tmp_path / "demo" / "pill" / "train" / "good").is_dir()
    assert bench("data", "check", "--data-root", str(tmp_path / "demo"), "--layout", "mvtec") == 0


def test_list_json_names_every_method_with_its_status(capsys):
    assert bench("list", "--json", "--no-params") == 0
    listing = json.loads(capsys.readouterr().out)
    gens = {g["name"]: g for g in listing["generators"]}
    assert {"real-only", "cutpaste", "draem", "stage"} <= set(gens)
    assert gens["defectdiffu"]["status"] == "planned" and gens["badg"]["status"] == "implemented"
    assert gens["seas"]["status"].startswith("partial: ")
    assert gens["cutpaste"]["status"] == "implemented"
    assert {"unet", "segformer", "lfd"} <= {s["name"] for s in listing["segmenters"]}


def test_wandb_offline_run_leaves_a_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "w"
    assert bench("run", "--generator", "real-only", "--output", str(out), *TINY) == 0
    runs = list((out / "wandb-logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_run_stops_on_a_mask_size_mismatch_naming_the_file(private_cache, tmp_path, capsys):
    from PIL import Image

    from benchmark.data.demo import demo_dataset_path

    data = tmp_path / "data"
    shutil.copytree(demo_dataset_path(private_cache), data)
    mask = sorted((data / "wood" / "ground_truth").rglob("*_mask.png"))[0]
    Image.open(mask).resize((50, 60)).save(mask)
    assert bench("run", "--data-root", str(data), "--output", str(tmp_path / "r"), "--no-wandb", *TINY[:2]) == 2
    err = capsys.readouterr().err
    assert str(mask) in err and "bench data check" in err


def test_numbers_do_not_depend_on_whether_the_synthetic_set_came_from_the_cache(cutpaste_run, tmp_path):
    again = tmp_path / "again"  # same config, new folder: the synthetic set is reused, not made
    manifest = (cutpaste_run / "synthetic" / "manifest.jsonl").resolve()
    written = (manifest.stat().st_ino, manifest.stat().st_mtime_ns)
    assert bench("run", "--generator", "cutpaste", "--segmenter", "unet", "--profile", "smoke",
                 "--output", str(again), "--no-wandb", *TINY) == 0
    first = json.loads((cutpaste_run / "results.json").read_text())
    second = json.loads((again / "results.json").read_text())
    assert (again / "synthetic").resolve() == (cutpaste_run / "synthetic").resolve()
    assert (manifest.stat().st_ino, manifest.stat().st_mtime_ns) == written  # no pair was made again
    assert second["categories"] == first["categories"]


def test_readme_names_everything_a_run_folder_holds(cutpaste_run):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### What a run folder holds", 1)[1].split("\n#", 1)[0]
    named = set(re.findall(r"`([^`]+)`", section))
    # the synthetic set and the predictions: their top level only (below: one file per image)
    per_image = ("synthetic", "predictions")
    found = [p.relative_to(cutpaste_run).as_posix() for p in sorted(cutpaste_run.rglob("*"))  # links not followed
             if p.relative_to(cutpaste_run).parts[0] not in per_image]
    found += [f"{d}/{p.name}/" if p.is_dir() else f"{d}/{p.name}" for d in per_image for p in (cutpaste_run / d).iterdir()]
    assert {"segmenter/unified.pt", "synthetic/manifest.jsonl", "predictions/maps/"} <= set(found)  # the walk saw them
    top_dirs = {p.name for p in cutpaste_run.iterdir() if p.is_dir() and p.name != "synthetic"}
    missing = [f for f in found if f not in named and f not in top_dirs]
    assert not missing, f"README's run folder section does not name {missing}"


WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def test_a_finished_run_folder_holds_one_copy_of_the_segmenter_weights(cutpaste_run):
    """Issue 18: the Lightning checkpoint of a finished fit is gone; segmenter/unified.pt stays."""
    stored = sorted(p.relative_to(cutpaste_run).as_posix() for p in cutpaste_run.rglob("*")  # links not followed
                    if p.suffix in WEIGHT_SUFFIXES and p.parts[len(cutpaste_run.parts)] != "synthetic")
    assert stored == ["segmenter/unified.pt"]
    assert not (cutpaste_run / "checkpoints").exists()
