"""Generation quality inside `bench run` (issue 15): the `quality` config section (on in the paper
profile), the stage after generation, results.json's `quality`, the printed tables, W&B, the
leaderboard beside the papers' IS / IC-LPIPS, and missing weights answered before any work.
Random-test features and a tiny run throughout."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from rich.console import Console

from benchmark.cli import main, print_results
from benchmark.errors import BenchError
from benchmark.leaderboard import command
from benchmark.leaderboard.quality import load_reported_quality
from benchmark.quality.networks import INCEPTION_FILE

TINY = ["--image-size", "64", "--categories", "carpet_like,pill", "--set", "segmenter.options.max_steps=2",
        "--set", "segmenter.options.batch_size=4", "--set", "generator.options.pairs_per_type=3", "--no-wandb"]
QUALITY = ["--set", "quality.enabled=true", "--set", "quality.features=random-test",
           "--set", "quality.lpips_net=alex", "--set", "quality.image_size=32"]
QUALITY_DATA = command.DATA_DIR / "quality"


def bench(*args) -> int:
    return main(["--quiet", *args])


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "with-quality"
    assert bench("run", "--output", str(out), *TINY, *QUALITY) == 0
    return out


def test_the_paper_profile_computes_quality_and_smoke_does_not():
    from benchmark.config import build_config

    paper = build_config("paper", [{"segmenter": {"name": "unet-draem"}}])  # trains from random weights
    assert paper.quality.enabled and not build_config("smoke").quality.enabled
    # a run compares with the real anomalies the generator was given
    assert paper.quality.reference == "train"


def test_results_hold_the_quality_report_marked_not_comparable(quality_run):
    results = json.loads((quality_run / "results.json").read_text())
    quality = results["quality"]
    assert quality == json.loads((quality_run / "quality.json").read_text())
    assert quality["comparable"] is False and "NOT comparable" in quality["warning"]
    assert set(quality["categories"]) == set(results["categories"]) == {"carpet_like", "pill"}
    assert quality["protocol"]["reference"] == "train" and "quality" in results["timings"]
    split = json.loads((quality_run / "split.json").read_text())
    for category, entry in quality["categories"].items():
        for defect, numbers in entry["defects"].items():
            # centres and reference: the split's training anomalies of the type
            n_train = len(split["categories"][category]["train_defects"][defect])
            assert numbers["n_centres"] == numbers["n_reference"] == n_train
            assert numbers["n_generated"] == 3 and sum(numbers["cluster_sizes"]) == 3
    assert quality["mean"]["is"] == pytest.approx(np.mean([c["metrics"]["is"] for c in quality["categories"].values()]))


def test_bench_quality_on_the_run_folder_gives_the_runs_numbers(quality_run, tmp_path):
    out = tmp_path / "q.json"
    assert bench("quality", "--synthetic", str(quality_run), "--features", "random-test", "--lpips-net", "alex",
                 "--image-size", "32", "--reference", "train", "--json", str(out)) == 0
    again = json.loads(out.read_text())
    stored = json.loads((quality_run / "results.json").read_text())["quality"]
    assert again["categories"] == stored["categories"] and again["mean"] == stored["mean"]


def test_bench_quality_on_a_run_folder_takes_the_runs_settings(quality_run, tmp_path):
    """No flag: the run's own quality settings (random-test features, alex, 32 px, reference=train),
    so the same report; a flag still overrides them."""
    out = tmp_path / "q.json"
    assert bench("quality", "--synthetic", str(quality_run), "--json", str(out)) == 0
    again = json.loads(out.read_text())
    stored = json.loads((quality_run / "results.json").read_text())["quality"]
    assert again["protocol"] == stored["protocol"]
    assert again["categories"] == stored["categories"] and again["mean"] == stored["mean"]
    assert bench("quality", "--synthetic", str(quality_run), "--reference", "all", "--json", str(out)) == 0
    assert json.loads(out.read_text())["protocol"]["reference"] == "all"


def test_every_printed_output_marks_the_numbers_not_comparable(quality_run, capsys):
    results = json.loads((quality_run / "results.json").read_text())
    console = Console(record=True, width=80)
    print_results(results, "table", console=console)
    text = console.export_text()
    assert "IC-LPIPS" in text and "NOT COMPARABLE" in text
    print_results(results, "md")
    md = capsys.readouterr().out
    assert "**generation quality (random-test features: NOT COMPARABLE)**" in md and "| IS |" in md
    print_results(results, "json")
    assert json.loads(capsys.readouterr().out)["quality"]["comparable"] is False


def test_wandb_gets_the_quality_numbers_under_the_random_test_prefix(quality_run, monkeypatch):
    pytest.importorskip("wandb")
    from benchmark.tracking import log_results

    logged, summary = {}, {}
    experiment = SimpleNamespace(log=logged.update, summary=SimpleNamespace(update=summary.update),
                                 finish=lambda: None)
    results = json.loads((quality_run / "results.json").read_text())
    log_results(SimpleNamespace(experiment=experiment), results, quality_run)
    quality_keys = [k for k in logged if "quality" in k]
    assert quality_keys and all(k.startswith("quality_random_test/") for k in quality_keys)
    assert logged["quality_random_test/mean/is"] == results["quality"]["mean"]["is"]
    assert summary["quality"]["comparable"] is False and summary["quality"]["mean"] == results["quality"]["mean"]


def test_leaderboard_shows_the_reproduced_row_beside_the_papers_and_marks_it(quality_run, tmp_path):
    out = tmp_path / "board.md"
    assert command.run(command_args("--results", str(quality_run), "--out", str(out))) == 0
    text = out.read_text()
    part = text.split("## Generation quality", 1)[1].split("## Protocols", 1)[0]
    assert "### demo · IS / IC-LPIPS" in part and "### MVTec AD · IS / IC-LPIPS" in part
    demo_row = next(line for line in part.splitlines() if f"run {quality_run.name}" in line)
    assert demo_row.startswith("| CutPaste |") and "(not comparable)" in demo_row and "NOT COMPARABLE" in demo_row
    assert "| SeaS | reported: SeaS Table 19 (own method) | 1.88 | 0.34 |" in part
    page = tmp_path / "board.html"
    assert command.run(command_args("--results", str(quality_run), "--out", str(page))) == 0
    assert "NOT COMPARABLE" in page.read_text() and "SeaS Table 19" in page.read_text()
    only_quality = tmp_path / "is.md"  # --metric is: the quality tables alone
    assert command.run(command_args("--metric", "is", "--dataset", "visa", "--out", str(only_quality))) == 0
    assert "### VisA · IS / IC-LPIPS" in only_quality.read_text()


def command_args(*argv):
    import argparse

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_missing_weights_stop_the_run_before_any_work(tmp_path, capsys, monkeypatch):
    import torch.hub

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: pytest.fail("a download was attempted"))
    monkeypatch.delenv("SIAS_BENCH_QUALITY_WEIGHTS", raising=False)
    out = tmp_path / "run"
    assert bench("run", "--output", str(out), *TINY, "--set", "quality.enabled=true") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and INCEPTION_FILE in err[0] and "--set quality.weights=<folder>" in err[0], err
    assert not out.exists()  # not even the split was written
    folder = tmp_path / "weights"
    folder.mkdir()
    assert bench("run", "--output", str(out), *TINY, "--set", "quality.enabled=true",
                 "--set", f"quality.weights={folder}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(folder / INCEPTION_FILE) in err[0] and not out.exists()


# -- the papers' reported IS / IC-LPIPS ------------------------------------------------------------
def test_reported_quality_files_parse_and_each_average_is_the_mean_of_its_categories():
    rows = load_reported_quality(QUALITY_DATA)
    assert {r.source for r in rows} == {"SeaS Table 19", "SeaS Table 20", "SeaS Table 21", "AnomalyDiffusion Table 1"}
    for row in rows:
        for metric, cells in row.values.items():
            per_category = [v for c, v in cells.items() if c != "mean"]
            # printed to two decimals: the printed average is within rounding of the mean of the printed cells
            assert abs(np.mean(per_category) - cells["mean"]) <= 0.011, (row.source, row.label, metric)


def test_the_methods_both_papers_print_have_the_same_numbers_in_both():
    rows = load_reported_quality(QUALITY_DATA)
    seas = {r.generator: r.values for r in rows if r.source == "SeaS Table 19"}
    ad = {r.generator: r.values for r in rows if r.source == "AnomalyDiffusion Table 1"}
    shared = seas.keys() & ad.keys()
    assert shared == {"croppaste", "sdgan", "defectgan", "dfmgan", "anomalydiffusion"}
    for generator in shared:
        assert seas[generator] == ad[generator], generator


@pytest.mark.parametrize("change, message", [
    (lambda d: d["tables"][0]["rows"][0].update(mean=[1.5]), "expected 2 values"),
    (lambda d: d["metrics"].update(sharpness={"printed": "S", "definition": "x"}), "not a metric of `bench quality`"),
    (lambda d: d["tables"][0]["rows"][0].update(mean=["1.5", 0.1]), "valid number"),
])
def test_a_bad_reported_quality_file_is_one_line_naming_the_file(tmp_path, change, message):
    doc = yaml.safe_load((QUALITY_DATA / "seas.yaml").read_text())
    change(doc)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(BenchError, match=message) as caught:
        load_reported_quality(tmp_path)
    assert str(caught.value).startswith(str(tmp_path / "bad.yaml")) and "\n" not in str(caught.value)


def test_measuring_quality_changes_no_segmentation_number(quality_run, tmp_path):
    out = tmp_path / "without"
    assert bench("run", "--output", str(out), *TINY) == 0
    without = json.loads((out / "results.json").read_text())
    with_quality = json.loads((quality_run / "results.json").read_text())
    assert "quality" not in without and with_quality["categories"] == without["categories"]
