"""`bench compare` exit codes: equal / improved / regressed / missing category or metric / protocol."""

from __future__ import annotations

import argparse
import copy
import json
import math

import pytest

from benchmark import compare as cmp
from benchmark.errors import BenchError


def make_results(value=0.5, categories=("bottle", "screw"), image_size=128):
    metrics = {"image": {"auroc": value, "ap": value, "f1_max": value},
               "pixel": {"auroc": value, "ap": value, "f1_max": value, "pro": value, "iou": value},
               "miou": value, "acc": value}
    return {"run": {"id": "r", "time": "2026-01-02T03:04:05+00:00", "config_hash": "abc", "versions": {}},
            "config": {"data": {"name": "demo", "image_size": image_size}, "split": {"fraction": 1 / 3, "order": "id"},
                       "generator": {"name": "cutpaste"}, "segmenter": {"name": "unet"},
                       "metrics": {"image_score": "max", "pool_kernel": 21, "iou_threshold": 0.5}},
            "categories": {c: copy.deepcopy(metrics) for c in categories}, "mean": copy.deepcopy(metrics)}


def run_compare(tmp_path, baseline, current, *extra):
    (tmp_path / "a.json").write_text(json.dumps(baseline))
    (tmp_path / "b.json").write_text(json.dumps(current))
    parser = argparse.ArgumentParser()
    cmp.add_arguments(parser)
    args = parser.parse_args(["--baseline", str(tmp_path / "a.json"), "--current", str(tmp_path / "b.json"), *extra])
    return cmp.run(args)


def test_equal_runs_pass(tmp_path, capsys):
    assert run_compare(tmp_path, make_results(), make_results()) == cmp.EXIT_OK
    out = capsys.readouterr().out
    assert "50.00 (+0.00)" in out and "OK" in out


def test_improvement_passes_and_shows_a_positive_diff(tmp_path, capsys):
    current = make_results()
    current["categories"]["bottle"]["pixel"]["ap"] = 0.62
    assert run_compare(tmp_path, make_results(), current) == cmp.EXIT_OK
    assert "62.00 (+12.00)" in capsys.readouterr().out


def test_drop_within_tolerance_passes_beyond_fails(tmp_path, capsys):
    current = make_results()
    current["mean"]["miou"] = 0.495
    assert run_compare(tmp_path, make_results(), current) == cmp.EXIT_OK  # -0.5 points, tolerance 1
    current["categories"]["screw"]["image"]["auroc"] = 0.47
    assert run_compare(tmp_path, make_results(), current) == cmp.EXIT_REGRESSED
    out = capsys.readouterr().out
    assert "47.00 (-3.00)" in out and "regressed screw image.auroc: 50.00 -> 47.00 (-3.00)" in out
    assert run_compare(tmp_path, make_results(), current, "--tolerance", "0.05") == cmp.EXIT_OK


def test_metrics_option_limits_what_is_checked(tmp_path):
    current = make_results()
    current["mean"]["pixel"]["pro"] = 0.1
    assert run_compare(tmp_path, make_results(), current, "--metrics", "pixel.ap", "miou") == cmp.EXIT_OK
    assert run_compare(tmp_path, make_results(), current, "--metrics", "pixel_pro") == cmp.EXIT_REGRESSED
    with pytest.raises(BenchError, match="not in the baseline"):
        run_compare(tmp_path, make_results(), current, "--metrics", "fid")


def test_missing_category_or_metric_fails(tmp_path, capsys):
    assert run_compare(tmp_path, make_results(), make_results(categories=("bottle",))) == cmp.EXIT_MISSING
    assert "missing screw" in capsys.readouterr().out
    current = make_results()
    del current["categories"]["bottle"]["pixel"]["pro"]
    assert run_compare(tmp_path, make_results(), current) == cmp.EXIT_MISSING
    current = make_results()
    current["mean"]["acc"] = math.nan  # a metric that became undefined has disappeared too
    assert run_compare(tmp_path, make_results(), current) == cmp.EXIT_MISSING


def test_new_categories_and_baseline_nan_do_not_fail(tmp_path):
    baseline = make_results()
    baseline["categories"]["screw"]["image"]["auroc"] = math.nan
    assert run_compare(tmp_path, baseline, make_results(categories=("bottle", "screw", "grid"))) == cmp.EXIT_OK


def test_different_protocols_fail(tmp_path, capsys):
    assert run_compare(tmp_path, make_results(), make_results(image_size=256)) == cmp.EXIT_PROTOCOL
    assert "image_size: baseline 128, current 256" in capsys.readouterr().out
    current = make_results()
    current["config"]["segmenter"]["name"] = "segformer"
    current["mean"]["miou"] = 0.1  # the protocol failure wins over a regression
    assert run_compare(tmp_path, make_results(), current) == cmp.EXIT_PROTOCOL


def test_user_errors_are_bench_errors(tmp_path):
    with pytest.raises(BenchError, match="tolerance"):
        run_compare(tmp_path, make_results(), make_results(), "--tolerance", "-0.1")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BenchError, match="not valid JSON"):
        cmp.load_results(tmp_path / "bad.json")
    with pytest.raises(BenchError, match="no such file"):
        cmp.load_results(tmp_path / "nope.json")
