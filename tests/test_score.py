"""`bench score`: file matching, map/mask decoding, one error for every bad file, JSON output."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.errors import BenchError
from benchmark.metrics import MetricOptions, evaluate
from benchmark.score import add_arguments, run


def score(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args(list(argv)))


def save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def save_npy(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


@pytest.fixture
def mvtec_like(tmp_path):
    """maps/{good,crack}/... and ground_truth/crack/..., every map format and mask naming."""
    rng = np.random.default_rng(0)
    maps_dir, masks_dir = tmp_path / "maps", tmp_path / "ground_truth"
    maps, masks = [], []

    def add(rel, fmt, mask_name=None, mask_scale=255):
        score = rng.random((24, 32)).astype(np.float32)
        mask = np.zeros((24, 32), dtype=bool)
        if mask_name:
            y, x = rng.integers(0, 16, 2)
            mask[y : y + 6, x : x + 8] = True
            score[mask] = np.clip(score[mask] + 0.5, 0, 1)
            save_png(masks_dir / mask_name, (mask * mask_scale).astype(np.uint8))
        if fmt == "npy":
            save_npy(maps_dir / f"{rel}.npy", score[None])  # 1xHxW is accepted
        elif fmt == "png":
            score = np.round(score * 255).astype(np.uint8)
            save_png(maps_dir / f"{rel}.png", score)
            score = score.astype(np.float32) / 255
        elif fmt == "tiff":
            (maps_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(score, mode="F").save(maps_dir / f"{rel}.tiff")
        maps.append(score)
        masks.append(mask)

    add("good/000", "npy")
    add("good/001", "png")
    add("crack/000", "npy", "crack/000_mask.png")
    add("crack/001", "png", "crack/001.png", mask_scale=1)  # <stem>.png, 0/1 mask
    add("crack/002", "tiff", "crack/002_mask.png")
    # sorted by relative path, as bench score reads them
    order = np.argsort(["good/000", "good/001", "crack/000", "crack/001", "crack/002"])
    return maps_dir, masks_dir, [maps[i] for i in order], [masks[i] for i in order]


def test_score_matches_the_engine(mvtec_like, tmp_path, capsys):
    maps_dir, masks_dir, maps, masks = mvtec_like
    out = tmp_path / "out" / "score.json"
    assert score("--maps", str(maps_dir), "--masks", str(masks_dir), "--image-score", "pooled-max:5",
                 "--mode", "exact", "--json", str(out)) == 0
    record = json.loads(out.read_text())
    expected = evaluate(maps, masks, MetricOptions(image_score="pooled-max", pool_kernel=5, mode="exact"))
    for level in ("image", "pixel"):
        for key, value in expected[level].items():
            assert record[level][key] == pytest.approx(value, abs=1e-12), (level, key)
    for key in ("miou", "acc", "acc_anomaly", "threshold"):
        assert record[key] == pytest.approx(expected[key])
    assert record["counts"] == {"images": 5, "anomalous_images": 3, "pixels": 5 * 24 * 32}
    assert record["options"]["pool_kernel"] == 5 and record["mode"] == "exact"
    table = capsys.readouterr().out
    assert "5 images (3 anomalous)" in table and "AUROC" in table


def test_undefined_metrics_are_null_in_json(tmp_path):
    save_npy(tmp_path / "maps" / "a.npy", np.full((4, 4), 0.2, np.float32))
    save_png(tmp_path / "masks" / "a_mask.png", np.zeros((4, 4), np.uint8))  # no anomalous pixel
    out = tmp_path / "s.json"
    assert score("--maps", str(tmp_path / "maps"), "--masks", str(tmp_path / "masks"), "--json", str(out)) == 0
    text = out.read_text()
    assert "NaN" not in text
    record = json.loads(text)
    assert record["pixel"]["auroc"] is None and record["miou"] == 1.0


def test_a_masks_folder_that_matches_no_map_is_refused_naming_it(mvtec_like, tmp_path, capsys):
    """Scored, it would count every image as normal: wrong folder or wrong names, not a result."""
    maps_dir, _, _, _ = mvtec_like
    wrong = tmp_path / "wrong"
    save_png(wrong / "000_mask.png", np.zeros((24, 32), np.uint8))  # crack/000's mask, one level too high
    out = tmp_path / "s.json"
    assert main(["score", "--maps", str(maps_dir), "--masks", str(wrong), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--masks {wrong}: no mask matches any of the 5 maps" in err
    assert f"first mask: {wrong / '000_mask.png'}" in err and "<rel>/<stem>_mask.png or <rel>/<stem>.png" in err
    assert not out.exists()
    (tmp_path / "empty").mkdir()
    assert main(["score", "--maps", str(maps_dir), "--masks", str(tmp_path / "empty"), "--json", str(out)]) == 2
    assert f"--masks {tmp_path / 'empty'}: no mask matches" in capsys.readouterr().err


def test_every_problem_is_reported_in_one_error(mvtec_like, tmp_path):
    maps_dir, masks_dir, _, _ = mvtec_like
    save_png(masks_dir / "crack" / "009_mask.png", np.zeros((24, 32), np.uint8))  # no map
    save_npy(maps_dir / "hole" / "000.npy", np.zeros((10, 10), np.float32))  # size mismatch
    save_png(masks_dir / "hole" / "000_mask.png", np.zeros((24, 32), np.uint8))
    save_npy(maps_dir / "hole" / "001.npy", np.zeros((24, 32), np.float32))  # non-binary mask
    save_png(masks_dir / "hole" / "001_mask.png", np.arange(24 * 32).reshape(24, 32).astype(np.uint8))
    save_npy(maps_dir / "hole" / "002.npy", np.full((24, 32), 3.0, np.float32))  # not a probability
    save_npy(maps_dir / "hole" / "003.npy", np.zeros((24, 32), np.float32))  # two masks for one map
    save_png(masks_dir / "hole" / "003_mask.png", np.zeros((24, 32), np.uint8))
    save_png(masks_dir / "hole" / "003.png", np.zeros((24, 32), np.uint8))
    with pytest.raises(BenchError) as info:
        score("--maps", str(maps_dir), "--masks", str(masks_dir), "--json", str(tmp_path / "s.json"))
    message = str(info.value)
    assert message.startswith("5 problem(s)")
    assert "009_mask.png: mask without a map" in message
    assert "hole/000.npy: map is 10x10 but its mask" in message and "000_mask.png is 24x32" in message
    assert "001_mask.png: mask is not binary" in message
    assert "002.npy: values in [3, 3]" in message
    assert "003.png and" in message and "several masks" in message
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--image-score", "pooled-max:x"], "K must be a positive integer"),
        (["--image-score", "median"], "expected max, mean"),
        (["--iou-threshold", "best"], "'f1'"),
        (["--bins", "10"], "bins=10: should be greater than or equal to 1000"),
    ],
)
def test_bad_options(mvtec_like, tmp_path, argv, message):
    maps_dir, masks_dir, _, _ = mvtec_like
    with pytest.raises(BenchError, match=message):
        score("--maps", str(maps_dir), "--masks", str(masks_dir), "--json", str(tmp_path / "s.json"), *argv)


def test_bad_map_files(tmp_path):
    save_png(tmp_path / "masks" / "int_mask.png", np.zeros((4, 4), np.uint8))
    save_npy(tmp_path / "maps" / "int.npy", np.zeros((4, 4), np.int64))
    save_png(tmp_path / "maps" / "rgb.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "maps" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(BenchError) as info:
        score("--maps", str(tmp_path / "maps"), "--masks", str(tmp_path / "masks"), "--json", str(tmp_path / "s.json"))
    message = str(info.value)
    assert "int.npy: .npy maps must hold float" in message
    assert "rgb.png: image mode RGB" in message
    assert "broken.png: cannot read" in message
    with pytest.raises(BenchError, match="no such folder"):
        score("--maps", str(tmp_path / "nope"), "--masks", str(tmp_path / "masks"), "--json", str(tmp_path / "s.json"))
