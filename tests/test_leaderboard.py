"""Leaderboard: reported YAMLs, protocol grouping, bold-best, markdown/HTML rendering, README.

Run folders, added runs, settings and the schema's errors: test_leaderboard_sources.py; the wheel:
test_leaderboard_package.py."""

from __future__ import annotations

import argparse
import base64
import json
import shutil
from pathlib import Path

import pytest
import yaml

from benchmark.leaderboard import command, layout, render, reported, reproduced
from benchmark.leaderboard import rows as lb_rows
from benchmark.leaderboard.protocol import describe_protocol, protocol_of, short_protocol
from benchmark.errors import BenchError

REPORTED = command.DATA_DIR / "reported"
PAPERS = {"stage", "seas", "anomalydiffusion", "badg", "defectdiffu"}


def make_results(generator="cutpaste", value=0.5, categories=("bottle", "screw"), image_size=128,
                 time="2026-01-02T03:04:05+00:00", config_hash="abcdef1234567890", dataset="demo"):
    metrics = {"image": {"auroc": value, "ap": value, "f1_max": value},
               "pixel": {"auroc": value, "ap": value, "f1_max": value, "pro": value, "iou": value},
               "miou": value, "acc": value}
    return {"run": {"id": f"run-{generator}", "time": time, "config_hash": config_hash,
                    "versions": {"torch": "2.14.1", "sias_bench": "0.1.0"}},
            "config": {"profile": "smoke", "seed": 0,
                       "data": {"layout": "mvtec", "name": dataset, "image_size": image_size},
                       "split": {"fraction": 1 / 3, "order": "id"}, "generator": {"name": generator},
                       "segmenter": {"name": "unet"}, "training": "unified",
                       "metrics": {"image_score": "max", "pool_kernel": 21, "iou_threshold": 0.5,
                                   "mode": "exact", "max_fpr": 0.3}},
            "categories": {c: json.loads(json.dumps(metrics)) for c in categories},
            "mean": json.loads(json.dumps(metrics)), "timings": {"train": 1.0}}


def write(path: Path, results: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))
    return path


def args_for(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


# ------------------------------------------------------------------------------ reported data

def test_every_reported_yaml_parses_and_every_number_is_a_percentage():
    files = sorted(REPORTED.glob("*.yaml"))
    assert {f.stem for f in files} == PAPERS
    count = 0
    for path in files:
        doc = yaml.safe_load(path.read_text())
        assert doc["units"] == "percent" and doc["schema"] == 1
        for table in doc["tables"]:
            assert table["source"]["paper"] and table["source"]["table"]
            assert set(table["columns"]) <= set(doc["metrics"])
            for row in table["rows"]:
                cells = [row["mean"]] if "mean" in row else []
                cells += list((row.get("categories") or {}).values())
                assert cells, f"{path.name}: {row['label']} has no values"
                for values in cells:
                    assert len(values) == len(table["columns"])
                    for v in values:
                        assert v is None or (isinstance(v, (int, float)) and 0 <= v <= 100), (path.name, row, v)
                        count += v is not None
    assert count > 600
    rows = reported.load_reported(REPORTED)
    assert {r.protocol["reported_by"] for r in rows} == PAPERS
    for row in rows:
        assert row.origin == "reported"
        assert all(0 <= v <= 1 for cells in row.values.values() for v in cells.values())


def test_reported_values_are_converted_and_tables_of_one_protocol_merge():
    rows = {(r.protocol["reported_by"], r.protocol["id"], r.generator): r for r in reported.load_reported(REPORTED)}
    seas = rows[("seas", "mvtec_bisenetv2", "seas")]
    assert seas.values["pixel.iou_best_per_image"]["mean"] == pytest.approx(0.5528)  # printed "IoU"
    assert seas.values["image.auroc"]["mean"] == pytest.approx(0.96)  # Table 23 merged into Table 22's row
    assert seas.sources["pixel.iou_best_per_image"] == ["22"] and seas.sources["image.auroc"] == ["23"]
    stage = rows[("stage", "mvtec_segformer", "stage")]
    assert stage.values["pixel.iou"]["capsule"] == pytest.approx(0.5996)  # printed "mIoU"
    assert stage.values["pixel.pro"]["mean"] == pytest.approx(0.7486)
    anodiff = rows[("anomalydiffusion", "mvtec_unet", "anomalydiffusion")]
    assert anodiff.sources["pixel.auroc"] == ["2", "10"]
    assert "pill" not in rows[("anomalydiffusion", "mvtec_unet", "dfmgan")].values["pixel.ap"]  # ambiguous OCR
    assert rows[("badg", "mvtec_unet", "rd4ad")].kind == "unsupervised"


def _paper(tmp_path, rows, columns=("miou",), name="p.yaml", tables=None):
    doc = {"schema": 1, "units": "percent", "paper": {"id": "p", "title": "P"},
           "metrics": {c: {"printed": c, "definition": "d"} for c in columns},
           "protocols": {"x": {"dataset": "mvtec_ad", "segmenter": "unet", "split": "1/3", "resolution": "256"}},
           "tables": tables or [{"source": {"paper": "P", "table": "1"}, "protocol": "x",
                                 "columns": list(columns), "rows": rows}]}
    (tmp_path / name).write_text(yaml.safe_dump(doc))
    return tmp_path


@pytest.mark.parametrize("row, message", [
    ({"generator": "a", "label": "A", "mean": [120]}, "not a percentage"),
    ({"generator": "a", "label": "A", "mean": [1, 2]}, "expected 1 values"),
    ({"generator": "a", "label": "A", "kind": "other", "mean": [1]}, "kind"),
    ({"label": "A", "mean": [1]}, "generator"),
])
def test_reported_loader_rejects_bad_rows(tmp_path, row, message):
    with pytest.raises(BenchError, match=message):
        reported.load_reported(_paper(tmp_path, [row]))


def test_reported_loader_rejects_conflicting_tables(tmp_path):
    table = {"source": {"paper": "P", "table": "1"}, "protocol": "x", "columns": ["miou"],
             "rows": [{"generator": "a", "label": "A", "mean": [50]}]}
    other = {**table, "source": {"paper": "P", "table": "2"}, "rows": [{"generator": "a", "label": "A", "mean": [51]}]}
    with pytest.raises(BenchError, match="50 in one table and 51"):
        reported.load_reported(_paper(tmp_path, [], tables=[table, other]))


# ---------------------------------------------------------------------------------- protocols

def test_protocol_of_and_its_key():
    results = make_results()
    protocol = protocol_of(results)
    assert protocol["dataset"] == "demo" and protocol["segmenter"] == "unet"
    assert protocol["split"] == {"fraction": 0.3333, "order": "id"} and protocol["image_size"] == 128
    reordered = json.loads(json.dumps(protocol, sort_keys=True))
    assert lb_rows.protocol_key(reordered) == lb_rows.protocol_key(protocol)
    assert lb_rows.protocol_key(protocol_of(make_results(image_size=256))) != lb_rows.protocol_key(protocol)
    assert lb_rows.protocol_key(protocol_of(make_results(generator="draem"))) == lb_rows.protocol_key(protocol)
    assert lb_rows.canonical_dataset("mvtec:mvtec_anomaly_detection") == "mvtec_ad"
    assert lb_rows.canonical_dataset("visa:VisA_20220922") == "visa"
    assert lb_rows.canonical_dataset("mvtec:my_parts") == "mvtec:my_parts"
    with pytest.raises(BenchError):
        protocol_of({"categories": {}})


def test_rows_group_by_protocol_and_reported_rows_never_join_reproduced(tmp_path):
    runs = [write(tmp_path / "a.json", make_results("cutpaste", 0.6, dataset="mvtec_ad")),
            write(tmp_path / "b.json", make_results("draem", 0.7, dataset="mvtec_ad")),
            write(tmp_path / "c.json", make_results("cutpaste", 0.9, dataset="mvtec_ad", image_size=256))]
    rows = reproduced.load_reproduced(runs) + reported.load_reported(REPORTED)
    board = layout.build(rows, dataset="mvtec_ad", metrics=["pixel.ap"])
    # STAGE's AP ranks SegFormer logits (its YAML pins pixel_score: logit): the runs, on
    # probabilities, get a table of their own, beside the papers whose AP they share
    papers, section = board.sections
    assert {r.origin for _, g in papers.groups for r in g} == {"reported"} and papers.variant == ""
    assert section.variant == "as run: pixel_score=probability"
    assert section.title == "MVTec AD · pixel AP (as run: pixel_score=probability)"
    beside = {r.protocol.get("reported_by") for _, g in section.groups for r in g} - {None}
    assert "stage" not in beside and {"anomalydiffusion", "seas"} <= beside
    keys = [key for key, _ in section.groups]
    assert len(keys) == len(set(keys))
    assert [r.generator for r in section.groups[0][1]] == ["draem", "cutpaste"]  # 128 px group, best first
    assert [r.generator for r in section.groups[1][1]] == ["cutpaste"]  # 256 px: its own group
    for key, group in section.groups:
        assert len({r.origin for r in group}) == 1
        assert all(r.key == key for r in group)
    text = render.render_markdown(board)
    protocol_column = {line.split(" | ")[2] for line in text.splitlines() if line.startswith("| draem")}
    assert protocol_column == {"[P1](#p1)"}
    assert '<a id="p1"></a>**P1** reproduced (smoke) · MVTec AD · U-Net (unified) · 128 px' in text
    assert "reported by SeaS (Tables 22, 23) · MVTec AD · BiSeNet V2" in text


def test_bold_marks_the_best_value_within_each_protocol_group_only(tmp_path):
    runs = [write(tmp_path / "a.json", make_results("cutpaste", 0.6)),
            write(tmp_path / "b.json", make_results("draem", 0.7)),
            write(tmp_path / "c.json", make_results("dfmgan", 0.7)),
            write(tmp_path / "d.json", make_results("seas", 0.95, image_size=256))]
    board = layout.build(reproduced.load_reproduced(runs), metrics=["miou"])
    lines = {line.split(" | ")[0][2:]: line for line in render.render_markdown(board).splitlines()
             if line.startswith("| ") and "run " in line}
    assert lines["draem"].count("**70.00**") == 3 and lines["dfmgan"].count("**70.00**") == 3  # tie: both bold
    assert "**" not in lines["cutpaste"]
    assert "95.00" in lines["seas"] and "**95.00**" not in lines["seas"]  # alone in its group: nothing to beat


def test_markdown_rows_link_to_their_runs_and_mark_uneven_means(tmp_path):
    write(tmp_path / "results" / "a.json", make_results("cutpaste", 0.61234))
    write(tmp_path / "results" / "b.json", make_results("draem", 0.5, categories=("bottle",)))
    board = layout.build(reproduced.load_reproduced([tmp_path / "results"]), metrics=["pixel.ap"])
    text = render.render_markdown(board, link_dir=tmp_path)
    assert "| Generator | Source | Protocol | bottle | screw | Mean |" in text
    assert ("| cutpaste | [added run abcdef12](results/a.json) · 2026-01-02 · [R1](#r1) "
            "| [P1](#p1) | **61.23** | 61.23 | **61.23‡** |") in text
    assert '<a id="r1"></a>**R1** cutpaste: [added run abcdef12](results/a.json)' in text
    assert "- packages: torch 2.14.1, sias_bench 0.1.0" in text  # versions in the footnote, not the table
    assert "| draem |" in text and "| – |" in text  # draem has no screw
    assert "‡ draem [P1]: mean over bottle" in text


def test_newest_run_per_generator_and_protocol_wins(tmp_path):
    old = write(tmp_path / "old.json", make_results("cutpaste", 0.4, time="2026-01-01T00:00:00+00:00"))
    new = write(tmp_path / "new.json", make_results("cutpaste", 0.5, time="2026-02-01T00:00:00+00:00"))
    (row,) = reproduced.load_reproduced([new, old])
    assert row.values["miou"]["mean"] == 0.5 and row.run["where"].endswith("new.json")


def with_setup(results: dict, profile: str = "smoke", **options) -> dict:
    """`results` as a run of `profile` whose segmenter was resolved with `options` (what runs record)."""
    results["config"]["profile"] = profile
    results["config"]["segmenter"]["options"] = {"max_steps": 400, "max_epochs": None, "weights": None, **options}
    return results


def test_profile_training_length_and_initial_weights_separate_protocols(tmp_path):
    smoke = with_setup(make_results("cutpaste", 0.4, time="2026-01-01T00:00:00+00:00"))
    # the reviewer's case: a newer copy relabelled `paper` with weights set hid the smoke row
    relabelled = with_setup(make_results("cutpaste", 0.9, time="2026-02-01T00:00:00+00:00"), "paper",
                            weights="/models/resnet34-b627a593.pth")
    rows = reproduced.load_reproduced([write(tmp_path / "smoke.json", smoke), write(tmp_path / "paper.json", relabelled)])
    assert sorted(r.values["miou"]["mean"] for r in rows) == [0.4, 0.9] and len({r.key for r in rows}) == 2

    def key(profile="smoke", **options):
        return lb_rows.protocol_key(protocol_of(with_setup(make_results(), profile, **options)))

    same = key()
    assert key("paper") != same  # only the profile differs
    assert key(weights="/models/a.pth") != same  # only the initial weights differ
    assert key(max_steps=150) != same and key(max_steps=None, max_epochs=200) != same  # only the length
    assert key(max_steps=None, max_epochs=200, epoch_samples=500) != key(max_steps=None, max_epochs=200)
    # the same setup shares one protocol: weights=none is random init as unset is, and where the
    # pretrained file lies is the machine's business, not the protocol's
    assert key(weights="none") == same and key(lr=0.5, batch_size=2) == same
    assert key(weights="/a/r.pth") == key(weights="/b/r.pth")
    paper = protocol_of(relabelled)
    assert paper["profile"] == "paper" and paper["segmenter_training"] == {"max_steps": 400, "init": "pretrained"}
    assert short_protocol(paper) == "reproduced (paper), U-Net, 400 steps from pretrained weights, 128 px"
    epochs = protocol_of(with_setup(make_results(), max_steps=None, max_epochs=200, epoch_samples=500))
    assert describe_protocol(epochs)[0] == ("reproduced (smoke) · demo · U-Net (unified), 200 epochs of "
                                                   "500 samples from random weights · 128 px")


def test_a_method_variant_is_its_own_row_next_to_the_paper_run(tmp_path):
    paper = write(tmp_path / "paper.json", make_results("stage", 0.4, time="2026-01-01T00:00:00+00:00"))
    variant = make_results("stage", 0.5, time="2026-02-01T00:00:00+00:00")
    variant["config"]["generator"]["options"] = {"follows": "authors-code"}
    rows = reproduced.load_reproduced([paper, write(tmp_path / "variant.json", variant)])
    assert sorted((r.label, r.values["miou"]["mean"]) for r in rows) == [("stage", 0.4), ("stage (authors-code)", 0.5)]
    board = command.load_rows(args_for("--results", str(tmp_path)))
    labels = {r.label for r in board if r.origin == "reproduced" and r.generator == "stage"}
    assert labels == {"STAGE", "STAGE (authors-code)"}  # the paper's spelling, the variant kept


def test_html_page_has_the_tables_and_embedded_bar_charts(tmp_path):
    write(tmp_path / "results" / "a.json", make_results("cutpaste", 0.6))
    write(tmp_path / "results" / "b.json", make_results("draem", 0.7))
    board = layout.build(reproduced.load_reproduced([tmp_path / "results"]), metrics=["pixel.ap", "miou"])
    page = render.render_html(board, tmp_path)
    assert page == render.render_html(board, tmp_path)  # deterministic
    assert page.count("<table>") == 2 and "<b>70.00</b>" in page
    charts = [part.split('"')[0] for part in page.split("data:image/png;base64,")[1:]]
    assert len(charts) == 2 and all(base64.b64decode(c)[:8] == b"\x89PNG\r\n\x1a\n" for c in charts)
    assert '<a href="results/a.json">added run abcdef12</a>' in page


def test_cli_filters_and_writes_markdown_and_html(tmp_path, capsys):
    board_dir = tmp_path / "leaderboards"
    shutil.copytree(REPORTED, board_dir / "reported")
    write(board_dir / "results" / "a.json", make_results("cutpaste", 0.6, dataset="mvtec_ad"))
    out, page = tmp_path / "out" / "lb.md", tmp_path / "out" / "lb.html"
    args = args_for("--dir", str(board_dir), "--dataset", "MVTec AD", "--segmenter", "U-Net",
                    "--metric", "pixel_ap", "--out", str(out), "--html", str(page))
    assert command.run(args) == 0
    text = out.read_text()
    assert text.count("### ") == 1 and "### MVTec AD · pixel AP" in text
    assert "SegFormer" not in text.split("## Protocols")[0]  # segmenter filter
    assert "| CutPaste | [accepted run abcdef12](../leaderboards/results/a.json)" in text  # the papers' name
    assert "reported: BADG Table 2 (own method)" in text
    assert page.read_text().startswith("<!DOCTYPE html>")
    assert command.run(args_for("--dir", str(board_dir), "--dataset", "btad", "--metric", "pixel.iou")) == 0
    assert "BTAD · pixel IoU" in capsys.readouterr().out  # rich table on the terminal
    with pytest.raises(BenchError, match="no leaderboard rows"):
        command.run(args_for("--dir", str(board_dir), "--dataset", "visa", "--segmenter", "segformer"))


def test_readme_is_idempotent_and_the_committed_one_is_current(tmp_path):
    board_dir = tmp_path / "leaderboards"
    shutil.copytree(REPORTED, board_dir / "reported")
    readme = tmp_path / "board" / "README.md"
    readme.parent.mkdir()
    assert command.run(args_for("--dir", str(board_dir), "--readme", str(readme))) == 0
    first = readme.read_bytes()
    assert command.run(args_for("--dir", str(board_dir), "--readme", str(readme))) == 0
    assert readme.read_bytes() == first
    committed = command.REPO_README
    current = command.readme_text(command.build_board(args_for()), committed)
    assert committed.read_text() == current, "leaderboards/README.md is stale: run `bench leaderboard --readme`"
    assert "](../benchmark/leaderboard/data/results/smoke-cutpaste-unet.json)" in current
    with pytest.raises(BenchError, match="--readme"):
        command.run(args_for("--dir", str(board_dir), "--readme", "--dataset", "visa"))
    with pytest.raises(BenchError, match="no folder"):
        command.run(args_for("--dir", str(board_dir), "--readme", str(tmp_path / "nowhere" / "README.md")))


def test_wandb_offline_or_without_key_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(BenchError, match="WANDB_MODE=offline") as offline:
        reproduced.load_wandb("team/sias")
    assert "\n" not in str(offline.value)
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    with pytest.raises(BenchError, match="API key|wandb login") as nokey:
        reproduced.load_wandb("team/sias")
    assert "\n" not in str(nokey.value)


def test_wandb_runs_are_read_back_from_what_the_runner_logs(tmp_path, monkeypatch):
    import wandb

    table = {"columns": ["category", "image_auroc", "pixel_ap"], "data": [["bottle", 0.9, 0.5], ["mean", 0.9, 0.5]]}

    class File:
        def download(self, root, replace):
            path = Path(root) / "per_category.table.json"
            path.write_text(json.dumps(table))
            return open(path)

    class Run:
        state, id, created_at, url = "finished", "abc", "2026-01-01T00:00:00", "https://wandb.ai/team/sias/runs/abc"
        config = make_results()["config"]
        summary = {"results": {"image": {"auroc": 0.9}, "pixel": {"ap": 0.5}}, "config_hash": "feed1234",
                   "results/per_category": {"_type": "table-file", "path": "media/table/per_category.table.json"}}

        def file(self, path):
            return File()

    class Api:
        api_key = "not-a-real-key"

        def __init__(self, timeout):
            pass

        def runs(self, project):
            return [Run()]

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(wandb, "Api", Api)
    (row,) = reproduced.load_wandb("team/sias")
    assert row.values["pixel.ap"] == {"bottle": 0.5, "mean": 0.5} and row.run["where"] == Run.url
    assert row.protocol == protocol_of(make_results())
