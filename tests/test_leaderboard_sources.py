"""Leaderboard sources: run folders, added runs beside accepted ones, settings that are not metrics,
the reported-numbers schema's errors, the HTML intro, and the package's import direction."""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmark.compare import compare
from benchmark.errors import BenchError
from benchmark.leaderboard import command, layout, render, reported, reproduced
from test_leaderboard import make_results, write  # tests/ is on sys.path (pytest rootdir conftest)

VERSIONS = {"python": "3.11.7", "sias-bench": "0.1.0", "torch": "2.14.1", "torchvision": "0.29.1",
            "lightning": "2.6.6", "torchmetrics": "1.9.0", "diffusers": "0.42.1", "transformers": "5.23.0",
            "segmentation-models-pytorch": "0.6.0", "mmsegmentation": "1.2.2", "numpy": "2.4.6"}


def args_for(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


def run_folder(root: Path, results: dict) -> Path:
    """What `bench run` leaves behind: results.json beside other JSON files that are not results."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(results["config"]))
    (root / "state.json").write_text(json.dumps({"done": ["split", "generate"]}))
    (root / "synthetic").mkdir()
    (root / "synthetic" / "manifest.json").write_text("[]")
    write(root / "results.json", results)
    return root


def board_dir(tmp_path: Path, *accepted: dict) -> Path:
    folder = tmp_path / "data"
    (folder / "reported").mkdir(parents=True, exist_ok=True)
    for i, results in enumerate(accepted):
        write(folder / "results" / f"accepted-{i}.json", results)
    return folder


# ------------------------------------------------------------------------------ run folders

def test_results_accepts_a_run_folder_and_a_folder_of_run_folders(tmp_path):
    one = run_folder(tmp_path / "runs" / "a", make_results("cutpaste", 0.6))
    run_folder(tmp_path / "runs" / "b", make_results("draem", 0.7))
    assert reproduced.results_files(one) == [one / "results.json"]
    rows = command.load_rows(args_for("--dir", str(board_dir(tmp_path)), "--results", str(one)))
    assert [(r.generator, r.run["where"]) for r in rows] == [("cutpaste", str(one / "results.json"))]
    rows = command.load_rows(args_for("--dir", str(board_dir(tmp_path)), "--results", str(tmp_path / "runs")))
    assert sorted(r.generator for r in rows) == ["cutpaste", "draem"]


def test_unfinished_run_folder_and_non_results_file_are_clear_errors(tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{}")
    with pytest.raises(BenchError, match="without results.json; finish it with `bench run --resume"):
        reproduced.results_files(unfinished)
    with pytest.raises(BenchError, match=r"config.json: no 'categories' table"):
        reproduced.load_reproduced([unfinished / "config.json"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="no results.json in this folder"):
        reproduced.results_files(tmp_path / "empty")


# ------------------------------------------------------------------- added beside accepted

def test_an_added_run_shows_beside_the_accepted_run_of_the_same_method(tmp_path):
    accepted = make_results("cutpaste", 0.5, time="2026-01-01T00:00:00+00:00", config_hash="aaaaaaaa11")
    folder = board_dir(tmp_path, accepted)
    added = run_folder(tmp_path / "run", make_results("cutpaste", 0.6, time="2025-01-01T00:00:00+00:00",
                                                          config_hash="bbbbbbbb22"))
    rows = command.load_rows(args_for("--dir", str(folder), "--results", str(added),
                                      "--results", str(folder / "results" / "accepted-0.json")))  # given twice
    assert sorted((r.generator, r.accepted) for r in rows) == [("cutpaste", False), ("cutpaste", True)]
    board = layout.build(rows, metrics=["miou"])
    text = render.render_markdown(board)
    lines = [line for line in text.splitlines() if line.startswith("| cutpaste |")]
    assert len(lines) == 2  # the older added run is not hidden by the accepted one, nor the reverse
    assert "[added run bbbbbbbb]" in lines[0] and "**60.00**" in lines[0]  # best first within the protocol
    assert "[accepted run aaaaaaaa]" in lines[1] and "50.00" in lines[1]


# ------------------------------------------------------------------------ compact sources

def test_source_cell_is_short_and_versions_are_in_the_runs_footnote(tmp_path):
    results = make_results("cutpaste", 0.5)
    results["run"]["versions"] = VERSIONS
    board = layout.build(reproduced.load_reproduced([write(tmp_path / "a.json", results)]), metrics=["miou"])
    (cells,) = render.table_cells(board, board.sections[0], tmp_path)
    assert cells[1].text == "added run abcdef12 · 2026-01-02 · R1"
    text = render.render_markdown(board, tmp_path)
    table = text.split("## Protocols")[0]
    assert "torch" not in table and "numpy" not in table
    assert "- packages: python 3.11.7, sias-bench 0.1.0, torch 2.14.1" in text.split("## Runs")[1]
    page = render.render_html(board, tmp_path)
    assert '<dt id="r1">' in page and "numpy 2.4.6" in page.split('id="runs"')[1]


# ------------------------------------------------------------------- settings, not metrics

def test_threshold_is_a_setting_not_a_ranked_or_compared_metric(tmp_path):
    a, b = make_results("cutpaste", 0.5), make_results("draem", 0.5)
    for results, thresholds in ((a, {"bottle": 0.3, "screw": 0.7}), (b, {"bottle": 0.9, "screw": 0.9})):
        for category, value in thresholds.items():
            results["categories"][category]["threshold"] = value
        results["mean"]["threshold"] = sum(thresholds.values()) / 2
    assert "threshold" not in reproduced.flatten(a["mean"]) and "miou" in reproduced.flatten(a["mean"])
    assert reproduced.settings_of(a["categories"]["bottle"]) == {"threshold": 0.3}
    board = layout.build(reproduced.load_reproduced([write(tmp_path / "a.json", a), write(tmp_path / "b.json", b)]))
    assert "threshold" not in {s.metric for s in board.sections}
    text = render.render_markdown(board)
    assert "- threshold: bottle 0.3, screw 0.7, mean 0.5" in text
    assert "- threshold: 0.9 in every category" in text
    changed = json.loads(json.dumps(a))
    changed["categories"]["bottle"]["threshold"] = 0.1  # a lower threshold is not a regression
    assert not any(metric == "threshold" for _, metric in compare(a, changed).deltas)
    assert compare(a, changed).exit_code == 0


# ------------------------------------------------------------------------------ html intro

def test_html_intro_renders_its_markdown(tmp_path):
    board = layout.build(reproduced.load_reproduced([write(tmp_path / "a.json", make_results())]), metrics=["miou"])
    page = render.render_html(board, tmp_path)
    intro = page.split("<h1>")[1].split("<h2>")[0]
    assert "**" not in intro and "](#" not in intro and "`" not in intro
    assert "<em>Protocol</em>" in intro and '<a href="#protocols">Protocols</a>' in intro
    assert "<strong>bold</strong>" in intro and "<code>benchmark/leaderboard/data/results/</code>" in intro
    assert '<h2 id="protocols">' in page and '<h2 id="runs">' in page  # the intro's links have targets


# ------------------------------------------------------------------- the reported schema

def _paper(tmp_path: Path, rows=None, **top) -> Path:
    doc = {"schema": 1, "units": "percent", "paper": {"id": "p", "title": "P"},
           "metrics": {"miou": {"printed": "mIoU", "definition": "d"}},
           "protocols": {"x": {"dataset": "mvtec_ad", "segmenter": "unet", "split": "1/3", "resolution": "256"}},
           "tables": [{"source": {"paper": "P", "table": 7}, "protocol": "x", "columns": ["miou"],
                       "rows": rows or [{"generator": "a", "label": "A", "mean": [50]}]}], **top}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path


@pytest.mark.parametrize("rows, top, message", [
    ([{"generator": "a", "label": "A", "mean": [120]}], {},
     r"p.yaml: tables\[0\].rows\[0\].mean\[0\] \(P Table 7, row A\): 120 is not a percentage; values are percentages in \[0, 100\]"),
    ([{"generator": "a", "label": "A", "mean": [True]}], {}, r"rows\[0\].mean\[0\] .*True is not a percentage"),
    ([{"generator": "a", "label": "A", "catgories": {"b": [1]}}], {},
     r"rows\[0\].catgories \(P Table 7, row A\): Extra inputs are not permitted; remove it or fix its spelling"),
    ([{"generator": "a", "label": "A", "mean": [1, 2]}], {}, r"tables\[0\] \(P Table 7\): rows\[0\] \(A\), mean: expected 1 values"),
    ([{"generator": "a", "label": "A", "kind": "other", "mean": [1]}], {}, r"rows\[0\].kind .*'real_only'; use one of"),
    ([{"label": "A", "mean": [1]}], {}, r"rows\[0\].generator \(P Table 7, row A\): Field required; add it"),
    (None, {"units": "fraction"}, r"p.yaml: units: Input should be 'percent'"),
    (None, {"protocols": {}}, r"tables\[0\] \(P Table 7\): unknown protocol 'x'; define it under 'protocols'"),
])
def test_reported_schema_errors_name_file_field_and_fix(tmp_path, rows, top, message):
    with pytest.raises(BenchError, match=message) as error:
        reported.load_reported(_paper(tmp_path, rows, **top))
    assert "\n" not in str(error.value)


def test_a_valid_file_loads_with_table_numbers_as_text(tmp_path):
    (row,) = reported.load_reported(_paper(tmp_path))
    assert row.values == {"miou": {"mean": 0.5}} and row.sources == {"miou": ["7"]}


# ------------------------------------------------------------------------ import direction

PACKAGE = Path(command.__file__).parent
ORDER = ["rows", "protocol", "reproduced", "reported", "quality", "layout", "render", "command"]


def test_each_module_imports_only_modules_below_it():
    assert sorted(p.stem for p in PACKAGE.glob("*.py")) == sorted([*ORDER, "__init__"])
    for name in ORDER:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        imported = {node.module.rsplit(".", 1)[-1] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmark.leaderboard.")}
        above = set(ORDER[ORDER.index(name):])
        assert not imported & above, f"{name} imports {sorted(imported & above)}, which sit above it"


def test_bench_compare_does_not_load_the_renderer():
    code = ("import sys, benchmark.compare, benchmark.leaderboard as lb; "
            "print(sorted(m for m in sys.modules if m.startswith('benchmark.leaderboard.'))); lb.run")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["benchmark.leaderboard.protocol", "benchmark.leaderboard.reproduced",
                         "benchmark.leaderboard.rows"]


def test_terminal_tables_fit_80_columns_and_keep_every_value():
    import io

    from rich.console import Console

    rows = reported.load_reported(command.DATA_DIR / "reported")
    board = layout.build(rows, dataset="mvtec_ad", metrics=["pixel.auroc"])
    out = io.StringIO()
    render.print_rich(board, Console(file=out, width=80))
    lines = out.getvalue().splitlines()
    tables = [line for line in lines if line.startswith("┃ Generator")]
    assert len(tables) > 1 and all("Mean" in line for line in tables)  # split, the Mean in each part
    for line in lines:
        if line.startswith(("┏", "┃", "┡", "│", "└")):
            assert len(line) <= 80 and line.rstrip()[-1] in "┓┃┩│┘", line  # nothing cut at the right
    shown = [c.strip().rstrip("…") for line in tables for c in line.split("┃")[4:-2]]  # categories, not Mean
    assert len(shown) == len(board.sections[0].categories)  # each category once, in some part
    assert all(name.startswith(s) for s, name in zip(shown, board.sections[0].categories))  # may end in "…"
