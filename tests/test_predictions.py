"""Saved predictions: every evaluated image's map, mask and overlay under <run>/predictions, and
`bench score` on them reproduces the run's per-category numbers (to float rounding)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.predictions import prediction_overlay, write_prediction

TINY = ["--image-size", "64", "--categories", "carpet_like,pill", "--set", "segmenter.options.max_steps=2",
        "--set", "segmenter.options.batch_size=4", "--set", "generator.options.pairs_per_type=2"]


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    nan = lambda x: x is None or (isinstance(x, float) and math.isnan(x))  # noqa: E731
    # the maps are bit for bit; a mean over images may differ in its last bit, as the run sums
    # per batch and `bench score` per image
    return (nan(a) and nan(b)) or a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=0)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "p"
    assert main(["--quiet", "run", "--no-wandb", "--output", str(out), *TINY]) == 0
    return out


def test_bench_score_on_the_saved_maps_gives_the_runs_numbers(run_folder, tmp_path):
    evaluated = json.loads((run_folder / "evaluation.json").read_text())
    split = json.loads((run_folder / "split.json").read_text())
    for category in ("carpet_like", "pill"):
        c = split["categories"][category]
        n_defects = sum(len(v) for v in c["holdout_defects"].values())
        maps = sorted((run_folder / "predictions" / "maps" / category).rglob("*.npy"))
        assert len(maps) == n_defects + len(c["test_good"])
        assert len(list((run_folder / "predictions" / "masks" / category).rglob("*_mask.png"))) == n_defects
        assert len(list((run_folder / "predictions" / "overlays" / category).rglob("*.png"))) == len(maps)
        out = tmp_path / f"{category}.json"
        assert main(["--quiet", "score", "--maps", str(run_folder / "predictions" / "maps" / category),
                     "--masks", str(run_folder / "predictions" / "masks" / category), "--json", str(out)]) == 0
        scored = json.loads(out.read_text())
        expected = {k: v for k, v in evaluated[category].items() if k != "evaluated_as"}
        assert same({k: scored[k] for k in expected}, expected), category


def test_overlay_tints_by_the_map_and_outlines_the_mask():
    image = np.full((2, 3, 3), 100, np.uint8)
    prob = np.array([[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]], np.float32)
    mask = np.zeros((2, 3), bool)
    out = prediction_overlay(image, prob, mask)
    # by hand: alpha = 0.6 * p; red = (1 - alpha) * 100 + alpha * 255, green/blue = (1 - alpha) * 100
    assert out[0, 1].tolist() == [193, 40, 40] and out[0, 2].tolist() == [147, 70, 70]
    assert out[0, 0].tolist() == [100, 100, 100]
    mask[0, 0] = True  # a one-pixel mask is all edge
    assert prediction_overlay(image, prob, mask)[0, 0].tolist() == [255, 255, 0]


def test_a_normal_image_gets_a_map_and_no_mask(tmp_path):
    prob = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    write_prediction(tmp_path, "wood", "good/007", prob, np.zeros((4, 4), bool), np.zeros((4, 4, 3), np.uint8))
    assert np.array_equal(np.load(tmp_path / "maps" / "wood" / "good" / "007.npy"), prob)  # bit for bit
    assert not (tmp_path / "masks").exists() and (tmp_path / "overlays" / "wood" / "good" / "007.png").exists()


def test_bench_predict_gives_the_runs_maps_for_the_same_images(run_folder, tmp_path):
    import shutil

    split = json.loads((run_folder / "split.json").read_text())
    images = tmp_path / "new"
    for defect, samples in split["categories"]["pill"]["holdout_defects"].items():
        (images / defect).mkdir(parents=True)
        for s in samples[:2]:
            shutil.copy(s["image"], images / defect / Path(s["image"]).name)
    out = tmp_path / "out"
    assert main(["--quiet", "predict", "--run", str(run_folder), "--images", str(images), "--out", str(out)]) == 0
    maps = sorted((out / "maps").rglob("*.npy"))
    assert len(maps) == 6
    for path in maps:
        rel = path.relative_to(out / "maps")
        saved = np.load(run_folder / "predictions" / "maps" / "pill" / rel)
        assert np.allclose(np.load(path), saved, atol=1e-5)  # same model and preprocessing; batches differ
        predicted = np.asarray(Image.open(out / "masks" / rel.with_suffix(".png")))
        assert np.array_equal(predicted > 0, np.load(path) >= 0.5)  # the run's iou_threshold
        assert (out / "overlays" / rel.with_suffix(".png")).exists()


def test_bench_predict_names_a_missing_model(run_folder, tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    assert main(["--quiet", "predict", "--run", str(run_folder), "--images", str(tmp_path / "imgs"),
                 "--out", str(tmp_path / "o"), "--category", "wood"]) == 2
    assert ("no trained segmenter 'wood' in the run; it trained one unified segmenter for all categories: "
            "omit --category") in capsys.readouterr().err


def test_bench_predict_on_a_per_category_run_asks_for_one_of_its_categories(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "segmenter").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    for category in ("pill", "wood"):
        (run / "segmenter" / f"{category}.pt").write_bytes(b"")
    (tmp_path / "imgs").mkdir()
    for category in ([], ["--category", "bottle"]):
        assert main(["--quiet", "predict", "--run", str(run), "--images", str(tmp_path / "imgs"),
                     "--out", str(tmp_path / "o"), *category]) == 2
        assert "it has: pill, wood (pass one of them as --category)" in capsys.readouterr().err
