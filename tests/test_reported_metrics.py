"""Reported numbers sit under the engine metric whose definition they match (issue 17, part 1).

Every column of the papers' YAMLs names a metric the engine computes; the loader rejects any
other key; a reproduced number never shares a column with a reported one defined differently.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from sklearn.metrics import f1_score, jaccard_score

from benchmark.config import build_config
from benchmark.errors import BenchError
from benchmark.leaderboard import command, layout, reported, reproduced
from benchmark.leaderboard.reproduced import flatten
from benchmark.metrics import METRIC_PRESETS, RESULT_KEYS, MetricOptions, evaluate
from test_leaderboard import make_results, write  # tests/ is on sys.path (pytest rootdir conftest)

REPORTED = command.DATA_DIR / "reported"


def _yamls() -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(REPORTED.glob("*.yaml"))}


def _fixture(seed: int = 0):
    """Three 24x24 maps (two defective, one normal) with probabilities and logits."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 24, 24), dtype=bool)
    masks[0, 3:9, 4:12] = True
    masks[0, 15:18, 15:20] = True
    masks[1, 10:14, 2:5] = True
    logits = rng.normal(0, 2, (3, 2, 24, 24)).astype(np.float32)
    logits[:, 1][masks] += 2.0
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = (e[:, 1] / e.sum(1)).astype(np.float32)
    return probs, logits[:, 1], masks


def test_every_reported_column_is_a_metric_the_engine_computes_under_its_pinned_options():
    probs, logits, masks = _fixture()
    columns = set()
    for paper, doc in _yamls().items():
        for table in doc["tables"]:
            for key in table["columns"]:
                columns.add(key)
                options = doc["metrics"][key].get("options", {})
                opts = MetricOptions(**{"mode": "exact", **options})
                maps = logits if opts.pixel_score == "logit" else probs
                result = flatten(evaluate([maps], [masks], opts) if opts.pixel_score != "logit" else
                                 _logit_result(maps, masks, probs, opts))
                assert key in result, f"{paper}: column {key} is not in the engine's results"
                assert np.isfinite(result[key]), (paper, key)
    assert columns <= set(RESULT_KEYS)
    assert set(flatten(evaluate([probs], [masks]))) == set(RESULT_KEYS)  # RESULT_KEYS is the engine's output


def _logit_result(maps, masks, probs, opts):
    from benchmark.metrics import AnomalyMetrics

    metric = AnomalyMetrics(opts)
    metric.update(maps, masks, probabilities=probs)
    return metric.compute()


def test_columns_are_filed_under_the_definitions_their_values_fit():
    docs = _yamls()
    stage = {k: v["printed"] for k, v in docs["stage"]["metrics"].items()}
    assert stage["pixel.iou"] == "mIoU" and stage["acc_anomaly"] == "Acc"
    assert docs["defectdiffu"]["metrics"]["pixel.iou"]["printed"] == "mIoU"
    assert docs["seas"]["metrics"]["pixel.iou_best_per_image"]["printed"] == "IoU"
    for doc in docs.values():
        assert "miou" not in doc["metrics"] and "acc" not in doc["metrics"]  # no paper reports mmseg's 2-class means
    assert "512x512" in docs["defectdiffu"]["protocols"]["mvtec_unet"]["resolution"]


def test_defectdiffu_f1_is_the_dice_of_its_iou_in_every_category_cell():
    """F1 = 2 IoU / (1 + IoU) holds for one binarisation; both are printed to 0.1, so a cell may
    differ by dF1/dIoU * 0.05 + 0.05. The means are averages over all 15 categories (only some
    are transcribed), so they satisfy Jensen's mean F1 <= f(mean IoU) (the supplement's means, printed
    to 0.01, meet it with equality)."""
    n = 0
    for table in _yamls()["defectdiffu"]["tables"]:
        if "pixel.f1" not in table["columns"]:
            continue
        i, j = table["columns"].index("pixel.iou"), table["columns"].index("pixel.f1")
        for row in table["rows"]:
            for values in row.get("categories", {}).values():
                iou, f1 = values[i] / 100, values[j]
                assert abs(200 * iou / (1 + iou) - f1) <= 2 / (1 + iou) ** 2 * 0.05 + 0.05 + 1e-9
                n += 1
            mean = row.get("mean") or [None] * len(table["columns"])
            if mean[i] is not None and mean[j] is not None:
                iou = mean[i] / 100
                assert mean[j] <= 200 * iou / (1 + iou) + 2 / (1 + iou) ** 2 * 0.005 + 0.005
    assert n == 16


def test_fixed_threshold_f1_is_sklearns_f1_at_the_iou_threshold():
    probs, _, masks = _fixture(1)
    for threshold in (0.3, 0.5, 0.8):
        result = evaluate([probs], [masks], MetricOptions(iou_threshold=threshold))
        predicted = (probs >= threshold).ravel()
        assert result["pixel"]["f1"] == pytest.approx(f1_score(masks.ravel(), predicted), abs=1e-12)
        assert result["pixel"]["iou"] == pytest.approx(jaccard_score(masks.ravel(), predicted), abs=1e-12)
    at_best = evaluate([probs], [masks], MetricOptions(iou_threshold="f1"))
    assert at_best["pixel"]["f1"] == pytest.approx(at_best["pixel"]["f1_max"], abs=1e-12)


def _paper(tmp_path, metrics: dict, columns: list[str]):
    doc = {"schema": 1, "units": "percent", "paper": {"id": "p", "title": "P"}, "metrics": metrics,
           "protocols": {"x": {"dataset": "mvtec_ad", "segmenter": "unet", "split": "1/3", "resolution": "256"}},
           "tables": [{"source": {"paper": "P", "table": "1"}, "protocol": "x", "columns": columns,
                       "rows": [{"generator": "a", "label": "A", "mean": [50] * len(columns)}]}]}
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path


@pytest.mark.parametrize("metrics, columns, message", [
    ({"pixel.dice": {"printed": "Dice", "definition": "d"}}, ["pixel.dice"], "not a metric the engine computes"),
    ({"miou_defect": {"printed": "mIoU", "definition": "d"}}, ["miou_defect"], "pixel.iou_best_per_image"),
    ({"pixel.ap": {"printed": "AP", "definition": "d", "options": {"iou_threshold": 0.5}}}, ["pixel.ap"],
     "do not change pixel.ap"),
    ({"pixel.pro": {"printed": "PRO", "definition": "d", "options": {"pro_curve": "quantile-7"}}}, ["pixel.pro"],
     "pro_curve=\"quantile-7\": should be 'exact' or 'quantile-100'"),
])
def test_loader_rejects_unknown_metric_keys_and_options(tmp_path, metrics, columns, message):
    with pytest.raises(BenchError, match=message):
        reported.load_reported(_paper(tmp_path, metrics, columns))


def _run(tmp_path, name: str, metrics: dict | None = None):
    results = make_results("cutpaste", 0.6, dataset="mvtec_ad")
    results["config"]["metrics"].update(metrics or {})
    for cell in [*results["categories"].values(), results["mean"]]:
        cell["pixel"]["f1"] = 0.6
    return write(tmp_path / f"{name}.json", results)


def test_a_reproduced_number_never_shares_a_column_with_a_reported_one_defined_otherwise(tmp_path):
    paper = _paper(tmp_path / "papers", {
        "pixel.pro": {"printed": "PRO", "definition": "au_pro_util", "options": {"pro_curve": "quantile-100"}},
        "pixel.f1": {"printed": "F1", "definition": "Dice"}}, ["pixel.pro", "pixel.f1"])
    rows = reported.load_reported(paper) + reproduced.load_reproduced(
        [_run(tmp_path, "exact"), _run(tmp_path, "quantile", {"pro_curve": "quantile-100"})])
    runs = {r.run["where"].rsplit("/", 1)[-1]: r for r in rows if r.origin == "reproduced"}
    assert "pro_curve" not in runs["exact.json"].protocol["metrics"]  # defaults stay out: old runs keep their protocol
    assert runs["quantile.json"].protocol["metrics"]["pro_curve"] == "quantile-100"  # the variant is recorded
    board = layout.build(rows, metrics=["pixel.pro", "pixel.f1"])
    by_title = {s.title: s for s in board.sections}
    assert set(by_title) == {"MVTec AD · pixel PRO", "MVTec AD · pixel PRO (as run: pro_curve=exact)",
                             "MVTec AD · pixel F1 (fixed threshold)"}
    for section in board.sections:
        mixed = {r.origin for _, g in section.groups for r in g}
        runs = {r.run["where"].rsplit("/", 1)[-1] for _, g in section.groups for r in g if r.run}
        if section.metric == "pixel.pro" and section.variant:
            assert mixed == {"reproduced"} and runs == {"exact.json"}
        elif section.metric == "pixel.pro":
            assert mixed == {"reported", "reproduced"} and runs == {"quantile.json"}
        else:  # nothing pinned: both runs sit with the paper
            assert runs == {"exact.json", "quantile.json"}


def test_metric_presets_fill_their_options_and_explicit_settings_win():
    cfg = build_config("smoke", [{"metrics": {"preset": "anomalydiffusion"}}, {"metrics": {"pool_kernel": 16}}])
    assert (cfg.metrics.image_score, cfg.metrics.pool_kernel, cfg.metrics.pro_curve, cfg.metrics.pixel_f1_max) == \
        ("pooled-max", 16, "quantile-100", "grid-21")
    assert build_config("smoke", [{"metrics": {"preset": "stage"}}]).metrics.pixel_score == "logit"
    assert build_config("smoke").metrics.pro_curve == "exact"
    assert set(METRIC_PRESETS) == set(type(cfg.metrics).model_fields["preset"].annotation.__args__)
    with pytest.raises(BenchError, match="preset"):
        build_config("smoke", [{"metrics": {"preset": "nobody"}}])
    json.dumps(cfg.model_dump(mode="json"))  # recorded as plain JSON in results.json


@pytest.mark.parametrize("paper", ["anomalydiffusion", "stage", "seas"])
def test_a_papers_metric_preset_agrees_with_every_option_its_columns_pin(paper):
    from benchmark.leaderboard.protocol import definition_conflict

    metrics = build_config("smoke", [{"metrics": {"preset": paper}}]).metrics.model_dump()
    rows = [r for r in reported.load_reported(REPORTED) if r.protocol["reported_by"] == paper]
    pinned = 0
    for row in rows:
        for metric, definition in row.protocol["metric_definitions"].items():
            pinned += bool(definition.get("options"))
            assert definition_conflict(metric, row.protocol, {"metrics": metrics}) == {}, (paper, metric)
    assert pinned or paper == "seas"  # SeaS pins nothing: its paper states none of these choices
