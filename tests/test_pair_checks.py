"""The whole-image checks of benchmark/pair_checks.py (issues 11 and 13: SeaS, DefectDiffu) on
hand-made images and masks, the mask-kept checks' empty-mask and unchanged-image reasons, and
`bench check-pairs` on hand-made synthetic sets of both kinds. The mask-kept checks' PSNR and
changed-inside math is tested in test_stage_pairs.py."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main as bench
from benchmark.pair_checks import (check_pair, check_whole_image_pairs, check_whole_image_set, is_flat, is_noise,
                                   mask_fraction, mask_in_range, neighbour_difference)


def _mask(n_on: int, size: int = 10) -> np.ndarray:
    m = np.zeros(size * size, bool)
    m[:n_on] = True
    return m.reshape(size, size)


def test_mask_range_is_non_empty_and_strictly_below_half():
    assert mask_fraction(_mask(37)) == 0.37
    assert not mask_in_range(_mask(0))  # empty
    assert mask_in_range(_mask(1))  # 1 %
    assert mask_in_range(_mask(49))  # 49 %
    assert not mask_in_range(_mask(50))  # exactly half is not "smaller than half"
    assert not mask_in_range(_mask(100))


def test_flat_means_every_channel_below_three_grey_levels():
    image = np.full((4, 4, 3), 120, np.uint8)
    assert is_flat(image)
    # one channel alternates 116 / 124: std 4 (hand computed: mean 120, every deviation 4)
    image[..., 1] = np.array([116, 124] * 8, np.uint8).reshape(4, 4)
    assert not is_flat(image)
    # alternating 118 / 122: std 2, below 3, so still flat
    image[..., 1] = np.array([118, 122] * 8, np.uint8).reshape(4, 4)
    assert is_flat(image)
    # the population std over the pixels: 114, 114, 114, 120 -> mean 115.5, variance (3 * 1.5^2 + 4.5^2) / 4
    # = 6.75, std 2.60 (flat); the sample std (n - 1) would be 3.0 (not flat)
    small = np.full((2, 2, 3), 114, np.uint8)
    small[1, 1] = 120
    assert is_flat(small)


def test_noise_is_a_mean_neighbour_difference_above_forty_grey_levels():
    checker = (np.indices((6, 6)).sum(0) % 2 * 60).astype(np.uint8)[..., None].repeat(3, -1)
    assert neighbour_difference(checker) == 60.0 and is_noise(checker)  # every neighbour differs by 60
    stripes = (np.indices((6, 6))[1] % 2 * 30).astype(np.uint8)[..., None].repeat(3, -1)
    # horizontal neighbours differ by 30, vertical ones by 0: (30 + 0) / 2 = 15
    assert neighbour_difference(stripes) == 15.0 and not is_noise(stripes)
    tall = (np.indices((6, 6))[0] % 2 * 90).astype(np.uint8)[..., None].repeat(3, -1)
    assert neighbour_difference(tall) == 45.0 and is_noise(tall)  # (0 + 90) / 2 = 45 > 40
    # 8 x 8 tiles of 0 and 80 in a checkerboard: pixel neighbours differ only at tile edges,
    # (1/15 of the pairs per direction) x 80 = 5.33, but every tile neighbour differs by 80
    tiles = (np.kron(np.indices((2, 2)).sum(0) % 2, np.ones((8, 8))) * 80).astype(np.uint8)[..., None].repeat(3, -1)
    assert neighbour_difference(tiles) == pytest.approx(80 / 15) and neighbour_difference(tiles, 8) == 80.0
    assert is_noise(tiles)
    smooth_tiles = (tiles // 4 + 10).astype(np.uint8)  # tiles of 10 and 30: 20 <= 36
    assert neighbour_difference(smooth_tiles, 8) == 20.0 and not is_noise(smooth_tiles)


def _pairs(n_in: int, n_empty: int, n_big: int, flat: int = 0):
    y, x = np.indices((10, 10))
    textured = np.stack([10 * x + 5 * y + 20 * c for c in range(3)], -1).astype(np.uint8)  # smooth, not flat
    out = []
    for k in range(n_in + n_empty + n_big):
        mask = _mask(10) if k < n_in else _mask(0) if k < n_in + n_empty else _mask(60)
        image = np.full((10, 10, 3), 90, np.uint8) if k < flat else textured
        out.append((f"p{k}", image, mask))
    return out


def test_report_needs_ninety_percent_in_range_and_no_flat_image():
    assert check_whole_image_pairs(_pairs(9, 1, 0)).passes()  # 9 of 10 = 90 %
    report = check_whole_image_pairs(_pairs(8, 1, 1))  # 8 of 10
    assert report.share_in_range == 0.8 and not report.passes()
    assert "8 (80.0 %)" in report.summary() and "1 empty, 1 >= half" in report.summary()
    flat = check_whole_image_pairs(_pairs(10, 0, 0, flat=1))
    assert flat.share_in_range == 1.0 and flat.flat == ["p0"] and not flat.passes()
    assert not check_whole_image_pairs([]).passes()
    noisy = _pairs(10, 0, 0)
    noisy[3] = ("p3", (np.indices((10, 10)).sum(0) % 2 * 200).astype(np.uint8)[..., None].repeat(3, -1), noisy[3][2])
    report = check_whole_image_pairs(noisy)
    assert report.noisy == ["p3"] and not report.passes() and "1 noise images" in report.summary()


def _gradient(size: int = 40) -> np.ndarray:
    y, x = np.indices((size, size))
    return np.stack([3 * x + 2 * y + c for c in range(3)], -1).astype(np.uint8)


def test_an_empty_mask_or_an_unchanged_image_fails_with_its_own_reason():
    source = _gradient()
    empty = np.zeros((40, 40), bool)
    # what CutPaste with patches=[0, 0] wrote: its source and no mask; PSNR and changed-inside pass it
    nothing = check_pair(source.copy(), source, empty)
    assert math.isinf(nothing.background_psnr) and nothing.changed_inside == 1.0
    assert nothing.failures() == ["empty mask", "image identical to its source"] and not nothing.passes()
    marked = empty.copy()
    marked[18:20, 18:20] = True
    assert check_pair(source.copy(), source, marked).failures() == ["image identical to its source"]
    # a change of 100 grey levels in one channel of one pixel, nothing marked: PSNR over all 1600 pixels'
    # 3 channels is 10 log10(255^2 / (100^2 / 4800)) = 44.9 dB (passes), changed inside 0 of 1 (fails)
    changed = source.copy()
    changed[5, 5, 0] += 100
    check = check_pair(changed, source, empty)
    assert check.background_psnr == pytest.approx(10 * math.log10(255**2 * 4800 / 100**2), rel=1e-6)
    assert check.failures() == ["empty mask", "changed inside 0.0000 < 0.9"]
    changed_inside = changed.copy()
    changed_inside[5, 5, 0] = source[5, 5, 0]
    changed_inside[marked] = 255
    assert check_pair(changed_inside, source, marked).failures() == []  # a real paste in its mask


def _write_set(folder, pairs, generator: str, sources: dict | None = None) -> None:
    """A synthetic set on disk as generators write it: images/, masks/, manifest.jsonl, meta.json."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for pair_id, image, mask in pairs:
        Image.fromarray(image).save(folder / f"{pair_id}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{pair_id}_mask.png")
        record = {"id": pair_id, "image": f"{pair_id}.png", "mask": f"{pair_id}_mask.png"}
        if sources:
            record["source_image"] = str(sources[pair_id])
        records.append(record)
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "meta.json").write_text(json.dumps({"config": {"name": generator, "options": {}}}))


def test_reads_a_synthetic_set_from_its_manifest(tmp_path):
    _write_set(tmp_path, _pairs(1, 1, 0), "seas")
    report = check_whole_image_set(tmp_path)
    assert report.fractions == {"p0": pytest.approx(0.1), "p1": 0.0}


def test_check_pairs_command_picks_the_checks_from_the_generator(tmp_path, capsys):
    # whole-image (SeaS repaints every pixel): 9 of 10 in range passes, 8 of 10 fails
    _write_set(tmp_path / "seas-run" / "synthetic", _pairs(9, 1, 0), "seas")
    assert bench(["check-pairs", str(tmp_path / "seas-run")]) == 0
    assert "whole-image checks" in capsys.readouterr().out
    _write_set(tmp_path / "seas-bad", _pairs(8, 1, 1), "seas")
    assert bench(["check-pairs", str(tmp_path / "seas-bad")]) == 1

    # mask-kept (CutPaste): a pair that changed only inside its mask passes; one that also changed a
    # far corner by 100 grey levels fails (changed-inside 4 / 5 = 0.8 < 0.9)
    source = _gradient()
    Image.fromarray(source).save(tmp_path / "good.png")
    mask = np.zeros((40, 40), bool)
    mask[18:20, 18:20] = True
    inside = source.copy()
    inside[mask] = 255
    outside = inside.copy()
    outside[0, 0] = (source[0, 0].astype(int) + 100).astype(np.uint8)
    _write_set(tmp_path / "cp", [("a", inside, mask), ("b", outside, mask)], "cutpaste",
               {"a": tmp_path / "good.png", "b": tmp_path / "good.png"})
    assert bench(["check-pairs", str(tmp_path / "cp")]) == 1
    out = capsys.readouterr().out
    assert "mask-kept checks" in out and "1 fail" in out and "  b: changed inside 0.8000 < 0.9" in out
    assert "  a: " not in out
    # the same set checked as whole-image pairs passes (2 of 2 masks in range, nothing flat or noise)
    assert bench(["check-pairs", str(tmp_path / "cp"), "--kind", "whole-image"]) == 0


def test_check_pairs_command_fails_a_set_of_empty_masks_on_unchanged_images(tmp_path, capsys):
    """The set CutPaste wrote with patches=[0, 0] (each pair its source, no mask) once passed with
    "min changed-inside fraction 1.0000; 0 fail; PASS"."""
    source = _gradient()
    Image.fromarray(source).save(tmp_path / "normal.png")
    empty = np.zeros((40, 40), bool)
    _write_set(tmp_path / "none", [(k, source.copy(), empty) for k in ("a", "b", "c")], "cutpaste",
               dict.fromkeys("abc", tmp_path / "normal.png"))
    assert bench(["check-pairs", str(tmp_path / "none"), "--show", "2"]) == 1
    out = capsys.readouterr().out
    assert "3 empty masks, 3 images identical to their source; 3 fail; FAIL" in out
    assert out.count(": empty mask; image identical to its source\n") == 2  # --show 2


def test_check_pairs_command_names_a_folder_without_a_set(tmp_path, capsys):
    assert bench(["check-pairs", str(tmp_path)]) == 2
    assert "no manifest.jsonl" in capsys.readouterr().err
