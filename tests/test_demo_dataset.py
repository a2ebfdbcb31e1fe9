"""The built-in demo dataset: deterministic, MVTec layout, visible defects, atomic cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.data import demo
from benchmark.data.demo import (
    CATEGORIES,
    DEMO_VERSION,
    demo_dataset_path,
    render_demo_image,
    write_demo_dataset,
)
from benchmark.errors import BenchError

SMALL = dict(n_train=3, n_test_good=2, n_defect_per_type=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "small", seed=0, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_layout_and_counts(small):
    assert len(CATEGORIES) >= 3
    assert {"pill"} & set(CATEGORIES) and len(set(CATEGORIES) - {"pill"}) >= 2  # objects and textures
    meta = json.loads((small / "demo.json").read_text())
    assert meta["version"] == DEMO_VERSION and meta["seed"] == 0 and meta["size"] == 128
    assert meta["categories"] == {c: list(t) for c, t in CATEGORIES.items()}
    assert sorted(p.name for p in small.iterdir() if p.is_dir()) == sorted(CATEGORIES)
    for cat, types in CATEGORIES.items():
        assert len(types) >= 2
        root = small / cat
        assert sorted(p.name for p in (root / "train").iterdir()) == ["good"]
        assert sorted(p.name for p in (root / "test").iterdir()) == sorted(["good", *types])
        assert sorted(p.name for p in (root / "ground_truth").iterdir()) == sorted(types)
        assert [p.name for p in sorted((root / "train/good").iterdir())] == ["000.png", "001.png", "002.png"]
        assert len(list((root / "test/good").iterdir())) == SMALL["n_test_good"]
        for t in types:
            images = sorted((root / "test" / t).iterdir())
            masks = sorted((root / "ground_truth" / t).iterdir())
            assert len(images) == SMALL["n_defect_per_type"]
            assert [m.name for m in masks] == [f"{p.stem}_mask.png" for p in images]


def test_masks_are_binary_nonempty_and_match_their_images(small):
    for cat, types in CATEGORIES.items():
        for t in types:
            for image_path in sorted((small / cat / "test" / t).glob("*.png")):
                image = _load(image_path)
                mask = _load(small / cat / "ground_truth" / t / f"{image_path.stem}_mask.png")
                assert image.shape == (128, 128, 3) and image.dtype == np.uint8
                assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
                assert set(np.unique(mask)) == {0, 255}, image_path
                assert (mask > 0).sum() >= 12, image_path


def test_read_by_the_mvtec_reader_and_clean_for_the_validator(small):
    from benchmark.data.check import check_dataset
    from benchmark.data.layouts import read_dataset

    cats = read_dataset(small, "mvtec")
    assert sorted(cats) == sorted(CATEGORIES)
    for name, data in cats.items():
        assert len(data.train_good) == SMALL["n_train"] and len(data.test_good) == SMALL["n_test_good"]
        assert data.defect_types == sorted(CATEGORIES[name])
        for t in data.defect_types:
            assert len(data.defects[t]) == SMALL["n_defect_per_type"]
            assert all(len(s.masks) == 1 and s.masks[0].is_file() for s in data.defects[t])
    assert check_dataset(small, "mvtec") == []


def test_same_seed_is_byte_identical_other_seed_differs_counts_leave_images_alone(small, tmp_path):
    again = _files(write_demo_dataset(tmp_path / "again", seed=0, **SMALL))
    assert again == _files(small)

    other = _files(write_demo_dataset(tmp_path / "seed1", seed=1, n_train=1, n_test_good=1, n_defect_per_type=1))
    pngs = [k for k in other if k.endswith(".png") and "ground_truth" not in k]
    assert pngs and all(other[k] != again[k] for k in pngs)

    # each image has its own random stream: fewer images leave the remaining ones unchanged
    fewer = _files(write_demo_dataset(tmp_path / "fewer", seed=0, n_train=1, n_test_good=1, n_defect_per_type=1))
    assert all(fewer[k] == again[k] for k in fewer if k.endswith(".png"))


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_defect_pixels_are_the_ones_that_changed(category):
    """Against the same image rendered without its defect: the masked pixels moved a lot,
    the others (up to the sub-threshold soft edge) hardly at all."""
    for defect in CATEGORIES[category]:
        for index in range(3):
            s = render_demo_image(category, defect, seed=0, index=index)
            inside = s.mask > 0
            diff = np.abs(s.image.astype(float) - s.clean.astype(float)).mean(axis=-1)
            assert diff[inside].mean() > 20.0, (category, defect, index)
            assert diff[~inside].mean() < 1.5, (category, defect, index)
            assert not inside[~s.region].any()  # defects stay on the object / inside the image


def test_mask_region_statistics_differ_from_the_rest(small):
    """From the files alone: inside the mask the mean colour shifts, or the texture contrast
    changes, by a clear margin relative to the surrounding normal surface."""
    for cat, types in CATEGORIES.items():
        for t in types:
            for image_path in sorted((small / cat / "test" / t).glob("*.png")):
                image = _load(image_path).astype(float)
                inside = _load(small / cat / "ground_truth" / t / f"{image_path.stem}_mask.png") > 0
                outside = ~inside
                if cat in demo.OBJECT_CATEGORIES:  # compare with the object, not the tray
                    outside &= image.mean(axis=-1) > 120
                shift = (np.abs(image[inside].mean(0) - image[outside].mean(0)) / image[outside].std(0)).max()
                contrast = abs(np.log(image[inside].std(0).mean() / image[outside].std(0).mean()))
                assert max(shift, contrast) > 0.4, (image_path, shift, contrast)


def test_pill_moves_and_turns_between_images():
    regions = [render_demo_image("pill", "good", 0, i, split="train").region for i in range(4)]
    centroids = np.array([np.argwhere(r).mean(axis=0) for r in regions])
    assert np.ptp(centroids, axis=0).max() > 2.0
    ious = [(regions[0] & r).sum() / (regions[0] | r).sum() for r in regions[1:]]
    assert max(ious) < 0.95


def test_rejects_bad_arguments_and_foreign_folders(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(BenchError, match="not empty"):
        write_demo_dataset(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(BenchError, match="seed"):
        write_demo_dataset(tmp_path / "x", seed=-1)
    with pytest.raises(BenchError, match="no defect type"):
        render_demo_image("wood", "crack", 0, 0)


def test_rewriting_a_demo_folder_replaces_it(tmp_path):
    root = write_demo_dataset(tmp_path / "d", n_train=3, n_test_good=1, n_defect_per_type=1)
    write_demo_dataset(root, n_train=1, n_test_good=1, n_defect_per_type=1)
    assert len(list((root / "wood" / "train" / "good").iterdir())) == 1
    assert json.loads((root / "demo.json").read_text())["n_train"] == 1


def test_cache_default_sizes_and_reuse(tmp_path, monkeypatch):
    path = demo_dataset_path(tmp_path, seed=0)
    assert path == tmp_path / f"demo-v{DEMO_VERSION}-seed0"
    assert len(list((path / "carpet_like" / "train" / "good").iterdir())) == 10
    assert len(list((path / "carpet_like" / "test" / "good").iterdir())) == 6
    assert len(list((path / "carpet_like" / "test" / "hole").iterdir())) == 6
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary folder left

    def must_not_write(*args, **kwargs):
        raise AssertionError("a current cache must be reused")

    monkeypatch.setattr(demo, "write_demo_dataset", must_not_write)
    assert demo_dataset_path(tmp_path, seed=0) == path


def test_cache_location_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SIAS_BENCH_CACHE", str(tmp_path / "env-cache"))
    assert demo.default_cache_dir() == tmp_path / "env-cache"


@pytest.fixture
def tiny_defaults(monkeypatch):
    monkeypatch.setattr(demo, "DEFAULT_N_TRAIN", 1)
    monkeypatch.setattr(demo, "DEFAULT_N_TEST_GOOD", 1)
    monkeypatch.setattr(demo, "DEFAULT_N_DEFECT_PER_TYPE", 1)


def test_stale_cache_is_replaced(tmp_path, tiny_defaults):
    path = demo_dataset_path(tmp_path, seed=3)
    meta = json.loads((path / "demo.json").read_text())
    (path / "demo.json").write_text(json.dumps({**meta, "version": DEMO_VERSION - 1}))
    (path / "leftover.txt").write_text("from the old generator")
    assert demo_dataset_path(tmp_path, seed=3) == path
    assert json.loads((path / "demo.json").read_text())["version"] == DEMO_VERSION
    assert not (path / "leftover.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_crash_while_writing_leaves_no_dataset(tmp_path, monkeypatch, tiny_defaults):
    real_write = demo.write_demo_dataset

    def crash_midway(output, **kwargs):
        real_write(output, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "write_demo_dataset", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        demo_dataset_path(tmp_path, seed=0)
    assert list(tmp_path.iterdir()) == []
