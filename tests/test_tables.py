"""Results and `bench compare` tables fit an 80-column terminal without cutting a cell, and
`--format md|csv|json` gives the same numbers to scripts."""

from __future__ import annotations

import argparse
import csv
import copy
import io
import json

from rich.console import Console

from benchmark import compare as cmp
from benchmark.cli import print_results
from benchmark.report import results_table
from benchmark.tables import Column, MetricTable

CATEGORIES = ("carpet_like", "transistor", "pill")


def metrics(base: float) -> dict:
    """Distinct, recognisable values per metric: base + k/1000."""
    return {"image": {"auroc": base + .001, "ap": base + .002, "f1_max": base + .003},
            "pixel": {"auroc": base + .004, "ap": base + .005, "f1_max": base + .006, "pro": base + .007,
                      "iou": base + .008, "iou_best_per_image": base + .009, "f1": base + .010},
            "miou": base + .011, "acc": base + .012, "acc_anomaly": base + .013}


def make_results(shift: float = 0.0) -> dict:
    return {"run": {"id": "r", "config_hash": "abc", "versions": {}},
            "config": {"data": {"name": "demo", "image_size": 64}, "split": {"fraction": 1 / 3, "order": "id"},
                       "generator": {"name": "cutpaste"}, "segmenter": {"name": "unet"},
                       "metrics": {"image_score": "max", "pool_kernel": 21, "iou_threshold": 0.5}},
            "categories": {c: metrics(0.5 + 0.1 * i + shift) for i, c in enumerate(CATEGORIES)},
            "mean": metrics(0.6 + shift)}


def rendered(print_to, width: int = 80) -> str:
    buf = io.StringIO()
    print_to(Console(width=width, file=buf, force_terminal=False, color_system=None))
    return buf.getvalue()


def assert_fits(text: str, width: int = 80) -> None:
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text  # rich's mark for a cut cell


def test_results_table_at_80_columns_shows_every_value_whole():
    text = rendered(lambda c: print_results(make_results(), "table", console=c))
    assert_fits(text)
    # each value in percent, written out by hand: carpet_like I-AUROC 50.1, transistor PRO 60.7, mean Acc 61.2, pill IoU 70.8, pill mIoU 71.1
    for cell in ("50.10", "60.70", "61.20", "70.80", "71.10"):
        assert cell in text
    for header in ("I-AUROC", "I-AP", "I-F1", "P-AUROC", "P-AP", "P-F1", "PRO", "IoU", "mIoU", "Acc"):
        assert f" {header} " in text
    tables = text.count("┏")
    assert tables >= 2 and text.count("carpet_like") == tables and text.count("mean") == tables


def test_a_wide_terminal_keeps_one_table():
    text = rendered(lambda c: print_results(make_results(), "table", console=c), width=200)
    assert text.count("┏") == 1 and "(1/" not in text


def test_splitting_keeps_a_group_whole_when_it_fits_and_cuts_only_an_oversized_one():
    columns = [Column("a1", "A1-long-header", "a"), Column("a2", "A2-long-header", "a"),
               Column("b1", "B1-long-header", "b"), Column("b2", "B2-long-header", "b"),
               Column("b3", "B3-long-header", "b"), Column("b4", "B4-long-header", "b")]
    table = MetricTable("t", "category", columns, [("x", {c.key: "1.00" for c in columns})])
    # at 40 columns: the label (1 + 10 + 1) and two 17-wide columns make 52 > 40, one makes 35
    widths = [[col.header for col in t.columns[1:]] for t in table.rich_tables(40)]
    assert widths == [["A1-long-header"], ["A2-long-header"], ["B1-long-header"], ["B2-long-header"],
                      ["B3-long-header"], ["B4-long-header"]]
    groups = [[col.header[:2] for col in t.columns[1:]] for t in table.rich_tables(90)]
    assert groups == [["A1", "A2"], ["B1", "B2", "B3", "B4"]]  # a (2 cols) + b (4) would be 120 > 90


def comparison():
    current = make_results()
    current["categories"]["transistor"]["pixel"]["pro"] -= 0.05  # regressed by 5 points
    return cmp.compare(make_results(), current)


def test_compare_table_at_80_columns_shows_every_value_whole():
    text = rendered(lambda c: cmp.print_comparison(comparison(), "a.json", "b.json", console=c))
    assert_fits(text)
    assert "55.70 (-5.00)" in text and "50.10 (+0.00)" in text and "61.30 (+0.00)" in text
    for metric in ("pixel.iou_best_per_image", "image.f1_max", "acc_anomaly", "miou"):
        assert metric in text
    assert "FAIL" in text


def run_compare(tmp_path, fmt: str) -> int:
    current = make_results()
    current["categories"]["transistor"]["pixel"]["pro"] -= 0.05
    (tmp_path / "a.json").write_text(json.dumps(make_results()))
    (tmp_path / "b.json").write_text(json.dumps(current))
    parser = argparse.ArgumentParser()
    cmp.add_arguments(parser)
    return cmp.run(parser.parse_args(["--baseline", str(tmp_path / "a.json"), "--current", str(tmp_path / "b.json"),
                                      "--format", fmt]))


def test_compare_formats_for_scripts(tmp_path, capsys):
    assert run_compare(tmp_path, "csv") == cmp.EXIT_REGRESSED  # same exit code as the table
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == (len(CATEGORIES) + 1) * 13
    pro = next(r for r in rows if r["category"] == "transistor" and r["metric"] == "pixel.pro")
    assert abs(float(pro["baseline"]) - 0.607) < 1e-9 and abs(float(pro["change"]) + 0.05) < 1e-9
    assert pro["status"] == "regressed"

    assert run_compare(tmp_path, "json") == cmp.EXIT_REGRESSED
    data = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == cmp.EXIT_REGRESSED and len(data["records"]) == len(rows)
    assert [r["metric"] for r in data["records"] if r["status"] == "regressed"] == ["pixel.pro"]

    assert run_compare(tmp_path, "md") == cmp.EXIT_REGRESSED
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + len(CATEGORIES) + 1 and all(line.count("|") == 15 for line in lines)
    assert "| transistor |" in lines[3] and "55.70 (-5.00)" in lines[3] and "[" not in lines[3]  # no markup


def test_results_formats_for_scripts(capsys):
    print_results(make_results(), "csv")
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["category"] for r in rows] == [*CATEGORIES, "mean"]
    assert rows[1]["pixel_pro"] == "60.70" and rows[3]["acc"] == "61.20"
    print_results(make_results(), "md")
    md = capsys.readouterr().out.splitlines()
    assert md[0] == "| category | I-AUROC | I-AP | I-F1 | P-AUROC | P-AP | P-F1 | PRO | IoU | mIoU | Acc |"
    assert md[-1].startswith("| **mean** | 60.10 |")
    print_results(make_results(), "json")
    assert json.loads(capsys.readouterr().out)["categories"]["pill"]["miou"] == make_results()["categories"]["pill"]["miou"]
    print_results(make_results(), "table", quiet=True)
    assert capsys.readouterr().out == ""


def test_results_table_is_a_metric_table_of_every_row():
    table = results_table(make_results())
    assert [label for label, _ in table.rows] == [*CATEGORIES, "mean"] and table.bold == {"mean"}
    assert copy.deepcopy(table.rows[2][1]["image_ap"]) == "70.20"


def test_logs_go_to_stderr_so_stdout_holds_only_the_formatted_results(capsys):
    import logging

    from benchmark.cli import configure_logging

    configure_logging(quiet=False, debug=False)
    logging.getLogger("benchmark.test").info("a progress line")
    print_results(make_results(), "csv")
    out, err = capsys.readouterr()
    assert "a progress line" in err and "a progress line" not in out
    assert out.splitlines()[0].startswith("category,image_auroc")
