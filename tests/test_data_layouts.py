"""Dataset readers, pixel loading and the validator, on tiny fixtures in each layout as it ships."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.data.check import check_dataset
from benchmark.data.dataset import GOOD, Sample
from benchmark.data.images import load_image, load_mask, read_mask_array, save_png_atomic
from benchmark.data.layouts import LAYOUTS, detect_layout, read_dataset, scan_dataset
from benchmark.errors import BenchError

SIZE = 16


# -- fixture builders ---------------------------------------------------------------------------


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (SIZE, SIZE), value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name) + value)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)  # format from suffix
    return path


def write_mask(path: Path, box=(2, 2, 8, 8), level: int = 255, size: tuple[int, int] = (SIZE, SIZE)) -> Path:
    """A mask with `level` inside box (x0, y0, x1, y1), 0 elsewhere; box None gives all zero."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.zeros((size[1], size[0]), np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        values[y0:y1, x0:x1] = level
    Image.fromarray(values, "L").save(path)
    return path


def build_mvtec(root: Path) -> Path:
    bottle = root / "bottle"
    for i in range(4):
        write_image(bottle / "train/good" / f"{i:03d}.png")
    for i in range(2):
        write_image(bottle / "test/good" / f"{i:03d}.png")
    for i in range(3):
        write_image(bottle / "test/broken_large" / f"{i:03d}.png")
        write_mask(bottle / "ground_truth/broken_large" / f"{i:03d}_mask.png")
    write_image(bottle / "test/contamination/000.png")
    write_mask(bottle / "ground_truth/contamination/000_mask.png")
    screw = root / "screw"  # grey images, like MVTec AD's screw, grid and zipper
    for i in range(2):
        write_image(screw / "train/good" / f"{i:03d}.png", mode="L")
    write_image(screw / "test/good/000.png", mode="L")
    write_image(screw / "test/scratch_neck/000.png", mode="L")
    write_mask(screw / "ground_truth/scratch_neck/000_mask.png")
    (root / "license.txt").write_text("CC BY-NC-SA 4.0")
    return root


def build_mvtec3d(root: Path) -> Path:
    bagel = root / "bagel"
    counts = [("train", "good", 3), ("validation", "good", 2), ("test", "good", 1), ("test", "crack", 2)]
    for split, folder, n in counts:
        for i in range(n):
            write_image(bagel / split / folder / "rgb" / f"{i:03d}.png")
            (bagel / split / folder / "xyz").mkdir(parents=True, exist_ok=True)
            (bagel / split / folder / "xyz" / f"{i:03d}.tiff").write_bytes(b"not read")
            if split == "test":  # 3D-AD ships gt for test/good too, all zero
                box = None if folder == "good" else (1, 1, 5, 5)
                write_mask(bagel / split / folder / "gt" / f"{i:03d}.png", box=box)
    return root


def build_loco(root: Path) -> Path:
    box = root / "juice_bottle"
    for i in range(2):
        write_image(box / "train/good" / f"{i:03d}.png")
    write_image(box / "validation/good/000.png")
    write_image(box / "test/good/000.png")
    write_image(box / "test/logical_anomalies/000.png")
    # Two regions in two files, each 0 + its own grey level, as LOCO ships them.
    write_mask(box / "ground_truth/logical_anomalies/000/000.png", box=(0, 0, 4, 4), level=255)
    write_mask(box / "ground_truth/logical_anomalies/000/001.png", box=(10, 10, 14, 14), level=254)
    write_image(box / "test/structural_anomalies/000.png")
    write_mask(box / "ground_truth/structural_anomalies/000/000.png")
    return root


def build_visa(root: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    for name in ("pcb1", "candle"):
        images, masks = f"{name}/Data/Images", f"{name}/Data/Masks"
        for i in range(4):
            write_image(root / images / "Normal" / f"{i:04d}.JPG")
        for i in range(3):
            write_image(root / images / "Anomaly" / f"{i:03d}.JPG")
            # VisA masks are class-id maps: 0 background, 1..k defect classes.
            values = np.zeros((SIZE, SIZE), np.uint8)
            values[2:6, 2:6], values[8:12, 8:12] = 1, 2
            (root / masks / "Anomaly").mkdir(parents=True, exist_ok=True)
            Image.fromarray(values, "L").save(root / masks / "Anomaly" / f"{i:03d}.png")
        # Rows out of order: the reader sorts by file id.
        rows += [f"{name},train,normal,{images}/Normal/{i:04d}.JPG," for i in (2, 0, 1)]
        rows += [f"{name},test,normal,{images}/Normal/0003.JPG,"]
        rows += [f"{name},test,anomaly,{images}/Anomaly/{i:03d}.JPG,{masks}/Anomaly/{i:03d}.png" for i in (2, 0, 1)]
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    return root


BTAD_EXTENSIONS = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}


def build_btad(root: Path) -> Path:
    for name, (image_ext, mask_ext) in BTAD_EXTENSIONS.items():
        for i in range(3):
            write_image(root / name / "train/ok" / f"{i:04d}{image_ext}")
        write_image(root / name / "test/ok" / f"0000{image_ext}")
        for i in range(2):
            write_image(root / name / "test/ko" / f"{i:04d}{image_ext}")
            write_mask(root / name / "ground_truth/ko" / f"{i:04d}{mask_ext}")
    return root


def build_folder(root: Path) -> Path:
    widget = root / "widget"
    for stem in ("2", "10", "1"):
        write_image(widget / "train/good" / f"{stem}.jpg")
    write_image(widget / "test/good/1.JPG")
    write_image(widget / "test/dent/2.jpg")
    write_mask(widget / "ground_truth/dent/2_mask.png")
    write_image(widget / "test/dent/10.jpeg")
    write_mask(widget / "ground_truth/dent/10.png")
    write_image(widget / "test/scratch/1.bmp")
    write_mask(widget / "ground_truth/scratch/1_mask.bmp")
    return root


BUILDERS = {
    "mvtec": build_mvtec,
    "mvtec3d": build_mvtec3d,
    "loco": build_loco,
    "visa": build_visa,
    "btad": build_btad,
    "folder": build_folder,
}


def stems(samples: list[Sample]) -> list[str]:
    return [s.image.stem for s in samples]


# -- readers ------------------------------------------------------------------------------------


def test_every_layout_has_a_fixture():
    assert set(BUILDERS) == set(LAYOUTS)


def test_mvtec(tmp_path):
    cats = read_dataset(build_mvtec(tmp_path), "mvtec")
    assert list(cats) == ["bottle", "screw"]
    bottle = cats["bottle"]
    assert stems(bottle.train_good) == ["000", "001", "002", "003"]
    assert len(bottle.test_good) == 2 and all(s.is_normal and not s.masks for s in bottle.test_good)
    assert bottle.defect_types == ["broken_large", "contamination"]
    sample = bottle.defects["broken_large"][1]
    assert sample.id == "broken_large/001" and sample.category == "bottle"
    assert sample.masks == (tmp_path / "bottle/ground_truth/broken_large/001_mask.png",)
    assert sample.image.is_absolute()


def test_mvtec3d_reads_rgb_and_gt_and_skips_validation(tmp_path):
    bagel = read_dataset(build_mvtec3d(tmp_path), "mvtec3d")["bagel"]
    assert [s.image.relative_to(tmp_path).as_posix() for s in bagel.train_good] == [
        f"bagel/train/good/rgb/{i:03d}.png" for i in range(3)
    ]
    assert len(bagel.test_good) == 1 and bagel.test_good[0].masks == ()
    assert bagel.defect_types == ["crack"]
    assert [s.masks for s in bagel.defects["crack"]] == [
        (tmp_path / f"bagel/test/crack/gt/{i:03d}.png",) for i in range(2)
    ]


def test_loco_or_of_region_masks(tmp_path):
    bottle = read_dataset(build_loco(tmp_path), "loco")["juice_bottle"]
    assert len(bottle.train_good) == 2  # validation/good is not read
    assert bottle.defect_types == ["logical_anomalies", "structural_anomalies"]
    sample = bottle.defects["logical_anomalies"][0]
    assert [m.name for m in sample.masks] == ["000.png", "001.png"]
    mask = load_mask(sample)
    assert mask.shape == (SIZE, SIZE) and mask.sum() == 32
    assert mask[0, 0] and mask[13, 13] and not mask[8, 8]


def test_visa_from_split_csv(tmp_path):
    cats = read_dataset(build_visa(tmp_path), "visa")
    assert list(cats) == ["candle", "pcb1"]
    candle = cats["candle"]
    assert stems(candle.train_good) == ["0000", "0001", "0002"]
    assert stems(candle.test_good) == ["0003"]
    assert candle.defect_types == ["anomaly"]
    assert stems(candle.defects["anomaly"]) == ["000", "001", "002"]
    sample = candle.defects["anomaly"][0]
    assert sample.image.suffix == ".JPG"
    assert sample.masks == (tmp_path / "candle/Data/Masks/Anomaly/000.png",)
    assert load_mask(sample).sum() == 32  # both class ids count as defect


def test_btad_mixed_extensions(tmp_path):
    cats = read_dataset(build_btad(tmp_path), "btad")
    assert list(cats) == ["01", "02", "03"]
    for name, (image_ext, mask_ext) in BTAD_EXTENSIONS.items():
        cat = cats[name]
        assert len(cat.train_good) == 3 and len(cat.test_good) == 1
        assert all(s.defect == GOOD for s in cat.train_good + cat.test_good)
        assert cat.defect_types == ["ko"]
        for sample in cat.defects["ko"]:
            assert sample.image.suffix == image_ext
            assert [m.suffix for m in sample.masks] == [mask_ext]
            assert sample.masks[0].stem == sample.image.stem


def test_folder_extensions_mask_names_and_natural_sort(tmp_path):
    widget = read_dataset(build_folder(tmp_path), "folder")["widget"]
    assert stems(widget.train_good) == ["1", "2", "10"]
    assert stems(widget.test_good) == ["1"]
    assert widget.defect_types == ["dent", "scratch"]
    assert [(s.image.name, s.masks[0].name) for s in widget.defects["dent"]] == [
        ("2.jpg", "2_mask.png"),
        ("10.jpeg", "10.png"),
    ]
    assert widget.defects["scratch"][0].masks[0].name == "1_mask.bmp"


def test_natural_sort_of_file_ids(tmp_path):
    for stem in ("10", "2", "1", "0100", "9"):
        write_image(tmp_path / "c/train/good" / f"{stem}.png")
        write_image(tmp_path / "c/test/dent" / f"{stem}.png")
        write_mask(tmp_path / "c/ground_truth/dent" / f"{stem}_mask.png")
    cat = read_dataset(tmp_path, "mvtec")["c"]
    assert stems(cat.train_good) == ["1", "2", "9", "10", "0100"]
    assert stems(cat.defects["dent"]) == ["1", "2", "9", "10", "0100"]


def test_category_selection(tmp_path):
    build_mvtec(tmp_path)
    assert list(read_dataset(tmp_path, "mvtec", ["screw"])) == ["screw"]
    assert list(read_dataset(tmp_path, "mvtec", [])) == ["bottle", "screw"]  # empty selection: all
    with pytest.raises(BenchError, match=r"unknown category cable .*available: bottle, screw"):
        read_dataset(tmp_path, "mvtec", ["cable"])


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_detect_layout(tmp_path, layout):
    assert detect_layout(BUILDERS[layout](tmp_path)) == layout


@pytest.mark.parametrize(
    "actual, asked",
    [("btad", "mvtec"), ("loco", "mvtec"), ("mvtec3d", "mvtec"), ("folder", "mvtec"), ("mvtec", "visa")],
)
def test_wrong_layout_suggests_the_right_one(tmp_path, actual, asked):
    root = BUILDERS[actual](tmp_path)
    with pytest.raises(BenchError) as err:
        read_dataset(root, asked)
    message = str(err.value)
    assert str(root) in message and "\n" not in message
    assert f"not a {asked} dataset" in message and f"--layout {actual}" in message


def test_category_folder_as_root_suggests_parent(tmp_path):
    build_mvtec(tmp_path)
    with pytest.raises(BenchError, match=r"--data-root .* --categories bottle"):
        read_dataset(tmp_path / "bottle", "mvtec")


def test_missing_root_and_unknown_layout(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        read_dataset(tmp_path / "nowhere", "mvtec")
    with pytest.raises(BenchError, match="choose one of: mvtec, mvtec3d"):
        read_dataset(tmp_path, "mvtec_ad")


def test_read_dataset_refuses_missing_masks(tmp_path):
    build_mvtec(tmp_path)
    missing = tmp_path / "bottle/ground_truth/broken_large/001_mask.png"
    missing.unlink()
    with pytest.raises(BenchError) as err:
        read_dataset(tmp_path, "mvtec")
    assert "1 problem(s)" in str(err.value)
    assert str(tmp_path / "bottle/test/broken_large/001.png") in str(err.value)
    assert str(missing) in str(err.value)
    assert list(read_dataset(tmp_path, "mvtec", ["screw"])) == ["screw"]  # other categories still read


def test_extra_mask_is_tolerated_by_the_reader(tmp_path):
    build_mvtec(tmp_path)
    extra = write_mask(tmp_path / "bottle/ground_truth/broken_large/007_mask.png")
    assert len(read_dataset(tmp_path, "mvtec")["bottle"].defects["broken_large"]) == 3
    assert [p.path for p in scan_dataset(tmp_path, "mvtec").warnings] == [extra]


# -- validator ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_clean_datasets_have_no_problems(tmp_path, layout):
    assert check_dataset(BUILDERS[layout](tmp_path), layout) == []


def build_broken_mvtec(root: Path) -> dict[str, Path]:
    """One dataset with every kind of problem; returns the path each one must be reported at."""
    cat = root / "bottle"
    write_image(cat / "train/good/000.png")
    (cat / "train/good/001.png").write_bytes(b"not a png at all")
    valid = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE, 3), 7, np.uint8)).save(valid, format="PNG")
    (cat / "train/good/002.png").write_bytes(valid.getvalue()[:-30])  # truncated: header still reads
    gt, test = cat / "ground_truth/broken", cat / "test/broken"
    paths = {"unreadable_image": cat / "train/good/001.png", "truncated_image": cat / "train/good/002.png"}
    paths["missing_mask"] = write_image(test / "000.png")
    write_image(test / "001.png")
    paths["size_mismatch"] = write_mask(gt / "001_mask.png", size=(32, 32))
    write_image(test / "002.png")
    paths["non_binary"] = write_mask(gt / "002_mask.png")
    values = np.asarray(Image.open(paths["non_binary"])).copy()
    values[0, 0] = 128
    Image.fromarray(values).save(paths["non_binary"])
    write_image(test / "003.png")
    paths["empty_mask"] = write_mask(gt / "003_mask.png", box=None)
    write_image(test / "004.png")
    paths["unreadable_mask"] = gt / "004_mask.png"
    paths["unreadable_mask"].write_bytes(b"\x89PNG garbage")
    paths["extra_mask"] = write_mask(gt / "009_mask.png")
    paths["extra_type"] = write_mask(cat / "ground_truth/ghost/000_mask.png")
    (root / "empty/train/good").mkdir(parents=True)
    paths["empty_category"] = root / "empty"
    return paths


def test_check_dataset_reports_every_problem_with_its_path(tmp_path):
    paths = build_broken_mvtec(tmp_path)
    problems = check_dataset(tmp_path, "mvtec")
    reported = {}
    for p in problems:
        reported.setdefault(p.path, []).append(p.message)
    expected_words = {
        "unreadable_image": "unreadable image",
        "truncated_image": "unreadable image",
        "missing_mask": "has no mask",
        "size_mismatch": "32x32",
        "non_binary": "not binary",
        "empty_mask": "all zero",
        "unreadable_mask": "unreadable mask",
        "extra_mask": "has no image",
        "extra_type": "has no image",
    }
    for kind, word in expected_words.items():
        assert any(word in m for m in reported.get(paths[kind], [])), (kind, problems)
    empty = " | ".join(reported[paths["empty_category"]])
    assert "no normal train images" in empty and "no defect images" in empty
    # Every problem names its path, once, in a stable order.
    assert problems == sorted(set(problems), key=lambda p: (str(p.path), p.message))
    assert len(problems) == len(expected_words) + 2


def test_check_dataset_mask_levels(tmp_path):
    build_loco(tmp_path)  # LOCO region files: 0 + one grey level each (255, 254) are binary
    assert check_dataset(tmp_path, "loco") == []
    build_visa(tmp_path / "visa")
    mask = tmp_path / "visa/candle/Data/Masks/Anomaly/001.png"
    Image.fromarray(np.arange(SIZE * SIZE, dtype=np.uint8).reshape(SIZE, SIZE)).save(mask)
    problems = check_dataset(tmp_path / "visa", "visa", ["candle"])
    assert [p.path for p in problems] == [mask] and "class ids" in problems[0].message


def test_check_dataset_visa_missing_files(tmp_path):
    build_visa(tmp_path)
    (tmp_path / "candle/Data/Images/Normal/0001.JPG").unlink()
    (tmp_path / "candle/Data/Masks/Anomaly/002.png").unlink()
    write_mask(tmp_path / "candle/Data/Masks/Anomaly/099.png")
    paths = {p.path for p in check_dataset(tmp_path, "visa")}
    assert paths == {
        tmp_path / "candle/Data/Images/Normal/0001.JPG",
        tmp_path / "candle/Data/Images/Anomaly/002.JPG",
        tmp_path / "candle/Data/Masks/Anomaly/099.png",
    }


def test_check_dataset_loco_empty_region_folder(tmp_path):
    build_loco(tmp_path)
    folder = tmp_path / "juice_bottle/ground_truth/structural_anomalies/000"
    for f in folder.iterdir():
        f.unlink()
    problems = check_dataset(tmp_path, "loco")
    assert len(problems) == 1 and str(folder) in problems[0].message


# -- pixels -------------------------------------------------------------------------------------


def test_load_image_grey_to_rgb_and_resize(tmp_path):
    path = write_image(tmp_path / "grey.png", mode="L")
    image = load_image(path)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 2]).all()
    assert load_image(path, size=8).shape == (8, 8, 3)
    wide = write_image(tmp_path / "wide.bmp", size=(24, 12))
    assert load_image(wide).shape == (12, 24, 3) and load_image(wide, 10).shape == (10, 10, 3)


def test_load_image_16_bit(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 0xABCD, np.uint16)).save(path)
    assert (load_image(path) == 0xAB).all()


def test_unreadable_files_raise_bench_error_with_path(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    for path in (bad, tmp_path / "missing.png"):
        with pytest.raises(BenchError, match=str(path)):
            load_image(path)
        with pytest.raises(BenchError, match="fix:"):
            load_mask(path)


def test_load_mask_shapes(tmp_path):
    image = write_image(tmp_path / "img.png", size=(20, 10))
    normal = Sample(image, "c")
    assert load_mask(normal).shape == (10, 20) and not load_mask(normal).any()
    assert load_mask(normal, size=8).shape == (8, 8)
    assert load_mask([], shape=(3, 5)).shape == (3, 5)
    mask_path = write_mask(tmp_path / "m.png", box=(0, 0, 8, 8), level=1)  # 0/1 masks read too
    assert load_mask(mask_path).sum() == 64
    resized = load_mask(Sample(image, "c", "dent", (mask_path,)), size=32)
    assert resized.dtype == bool and resized.sum() == 256  # nearest: 8x8 -> 16x16
    halved = load_mask(mask_path, shape=(8, 8))
    assert halved[:4, :4].all() and halved.sum() == 16


def test_save_png_atomic(tmp_path):
    target = tmp_path / "out/sub/pair.png"
    rgb = np.random.default_rng(0).integers(0, 255, (6, 7, 3), dtype=np.uint8)
    save_png_atomic(rgb, target)
    assert (load_image(target) == rgb).all()
    mask = np.zeros((6, 7), bool)
    mask[1:3, 2:5] = True
    save_png_atomic(mask, target)  # overwrite in place
    assert set(np.unique(read_mask_array(target))) == {0, 255}
    assert (load_mask(target) == mask).all()
    assert [p.name for p in target.parent.iterdir()] == ["pair.png"]  # no temp file left
    with pytest.raises(ValueError):
        save_png_atomic(np.zeros((2, 2), np.float32), tmp_path / "f.png")
    assert not (tmp_path / "f.png").exists()
