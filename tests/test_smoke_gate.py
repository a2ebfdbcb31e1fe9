"""The CI smoke gate: pair fingerprints and the spread band, on planted sets and tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from benchmark.smoke_gate import check_table, compare_pairs, main, pair_fingerprints, spread


def _write_set(root, images: dict[str, np.ndarray], masks: dict[str, np.ndarray]):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    lines = []
    for pair_id, image in images.items():
        Image.fromarray(image).save(root / "images" / f"{pair_id}.png")
        Image.fromarray(masks[pair_id].astype(np.uint8) * 255).save(root / "masks" / f"{pair_id}.png")
        lines.append(json.dumps({"id": pair_id, "image": f"images/{pair_id}.png", "mask": f"masks/{pair_id}.png"}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def planted():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[4:9, 10:20] = True
    return image, mask


def test_fingerprint_block_means_match_a_hand_computation(tmp_path, planted):
    image, mask = planted
    fp = pair_fingerprints(_write_set(tmp_path, {"a": image}, {"a": mask}))["a"]
    # block (row 1, col 2) of the 8 x 8 grid on a 32 px image covers rows 4..7, columns 8..11
    hand = [image[4:8, 8:12, c].astype(float).sum() / 16 for c in range(3)]
    index = (1 * 8 + 2) * 3
    assert fp["image"][index:index + 3] == pytest.approx(hand, abs=0.005)


def test_pairs_within_rounding_pass_and_real_changes_fail(tmp_path, planted):
    image, mask = planted
    base = pair_fingerprints(_write_set(tmp_path / "a", {"p": image}, {"p": mask}))
    nudged = image.copy()
    nudged[0, 0] = np.clip(nudged[0, 0].astype(int) + 1, 0, 255)  # one grey level in one pixel
    assert compare_pairs(base, pair_fingerprints(_write_set(tmp_path / "b", {"p": nudged}, {"p": mask}))) == []

    painted = image.copy()
    painted[0:4, 0:4] = 0  # a 4 x 4 black patch moves one block mean by its whole value
    problems = compare_pairs(base, pair_fingerprints(_write_set(tmp_path / "c", {"p": painted}, {"p": mask})))
    assert len(problems) == 1 and "image moved" in problems[0]

    moved = np.roll(mask, 1, axis=1)
    problems = compare_pairs(base, pair_fingerprints(_write_set(tmp_path / "d", {"p": image}, {"p": moved})))
    assert problems == ["pair p: mask differs"]

    extra = pair_fingerprints(_write_set(tmp_path / "e", {"p": image, "q": image}, {"p": mask, "q": mask}))
    assert compare_pairs(base, extra) == ["pair q: written by this run, not in the baseline"]


def test_spread_is_mean_and_sample_std():
    rows = [{"pixel.ap": 0.2, "miou": 0.6}, {"pixel.ap": 0.4, "miou": 0.6}, {"pixel.ap": 0.3, "miou": 0.6}]
    band = spread(rows)
    # by hand: mean 0.3, deviations -0.1, 0.1, 0 -> sum of squares 0.02 / (3 - 1) -> std 0.1
    assert band["pixel.ap"]["mean"] == pytest.approx(0.3)
    assert band["pixel.ap"]["std"] == pytest.approx(0.1)
    assert (band["pixel.ap"]["min"], band["pixel.ap"]["max"], band["pixel.ap"]["n"]) == (0.2, 0.4, 3)
    assert band["miou"]["std"] == 0.0


def test_check_table_uses_k_sigma_with_a_floor_and_requires_positive_metrics():
    band = {"pixel.ap": {"mean": 0.30, "std": 0.05, "min": 0.25, "max": 0.35, "n": 4},
            "pixel.iou": {"mean": 0.10, "std": 0.0, "min": 0.10, "max": 0.10, "n": 4}}
    # k = 2: pixel.ap may fall to 0.30 - 0.10 = 0.20; pixel.iou has no spread, so the floor 0.02 rules
    failures, _ = check_table(band, {"pixel.ap": 0.21, "pixel.iou": 0.081}, k=2, floor=0.02, require_positive=[])
    assert failures == []
    failures, _ = check_table(band, {"pixel.ap": 0.19, "pixel.iou": 0.079}, k=2, floor=0.02, require_positive=[])
    assert [f.split(":")[0] for f in failures] == ["pixel.ap", "pixel.iou"]
    failures, _ = check_table({}, {"pixel.iou": 0.0}, k=2, floor=0.02, require_positive=["pixel.iou"])
    assert len(failures) == 1 and "not above zero" in failures[0]
    failures, _ = check_table(band, {"pixel.ap": 0.3}, k=2, floor=0.02, require_positive=[])
    assert failures == ["pixel.iou: missing in this run"]


def test_record_then_check_round_trip(tmp_path, planted, capsys):
    image, mask = planted
    runs = []
    for i, ap in enumerate((0.30, 0.34, 0.26)):
        run = tmp_path / f"run{i}"
        _write_set(run / "synthetic", {"p": image}, {"p": mask})
        mean = {"pixel": {"ap": ap, "iou": 0.1}, "threshold": 0.5}
        (run / "results.json").write_text(json.dumps({"config": {"seed": i}, "categories": {"x": mean}, "mean": mean}))
        runs.append(str(run))
    out = tmp_path / "baseline.json"
    assert main(["record", "--name", "g", "--runs", *runs, "--require-positive", "pixel.iou", "--k", "3",
                 "--out", str(out)]) == 0
    entry = json.loads(out.read_text())["entries"]["g"]
    assert "threshold" not in entry["band"]  # not a metric
    assert main(["check", "--baseline", str(out), "--name", "g", "--run", runs[0]]) == 0
    results = json.loads((tmp_path / "run0" / "results.json").read_text())
    results["mean"]["pixel"]["ap"] = 0.05  # std 0.04, k 3: the band ends at 0.18
    (tmp_path / "run0" / "results.json").write_text(json.dumps(results))
    assert main(["check", "--baseline", str(out), "--name", "g", "--run", runs[0]]) == 1
    assert "FAIL pixel.ap" in capsys.readouterr().out


def test_a_run_without_a_synthetic_set_has_no_pairs_and_fails_against_a_baseline_with_pairs(tmp_path, planted):
    image, mask = planted
    assert pair_fingerprints(tmp_path / "real-only-run" / "synthetic") == {}  # real-only writes no set
    baseline = pair_fingerprints(_write_set(tmp_path / "made", {"p": image}, {"p": mask}))
    assert compare_pairs(baseline, {}) == ["pair p: in the baseline, not written by this run"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="no manifest"):  # a folder that claims to be a set must hold one
        pair_fingerprints(tmp_path / "empty")


def test_pair_tolerance_is_twice_the_move_between_thread_counts_of_one_seed(tmp_path, planted, capsys):
    image, mask = planted
    # the 8 x 8 grid over 32 px has 4 x 4 px blocks: brighten exactly one block by 30 (clipped at 255)
    moved = image.copy()
    moved[:4, :4] = np.clip(image[:4, :4].astype(np.int16) + 30, 0, 255)
    by_hand = float(np.abs(moved[:4, :4].astype(float) - image[:4, :4]).mean(axis=(0, 1)).max())
    runs = []
    for name, seed, picture in (("t2", 0, image), ("t1", 0, moved), ("s1", 1, image)):
        run = tmp_path / name
        _write_set(run / "synthetic", {"p": picture}, {"p": mask})
        mean = {"pixel": {"ap": 0.3 + 0.01 * seed, "iou": 0.1}}
        (run / "results.json").write_text(json.dumps({"config": {"seed": seed}, "categories": {"x": mean},
                                                      "mean": mean}))
        runs.append(str(run))
    out = tmp_path / "baseline.json"
    assert main(["record", "--name", "g", "--runs", *runs, "--out", str(out)]) == 0
    entry = json.loads(out.read_text())["entries"]["g"]
    assert 20 < by_hand <= 30 and entry["pair_tolerance"] == pytest.approx(2 * by_hand, abs=0.02)
    assert main(["check", "--baseline", str(out), "--name", "g", "--run", runs[1]]) == 0  # the 1-thread run
    # a real change elsewhere: the brightest block goes black, a move far beyond twice 30
    blocks = image.reshape(8, 4, 8, 4, 3).mean(axis=(1, 3)).max(axis=2)
    r, c = np.unravel_index(blocks.argmax(), blocks.shape)
    assert blocks[r, c] > 2 * by_hand + 10
    worse = moved.copy()
    worse[4 * r:4 * r + 4, 4 * c:4 * c + 4] = 0
    _write_set(tmp_path / "t1" / "synthetic", {"p": worse}, {"p": mask})
    assert main(["check", "--baseline", str(out), "--name", "g", "--run", runs[1]]) == 1
    assert "image moved" in capsys.readouterr().out


def test_add_widens_the_band_with_runs_whose_pairs_pass_and_refuses_changed_pairs(tmp_path, planted, capsys):
    """Three recorded runs (pixel AP .30/.34/.26: mean .30, std .04); a fourth from another machine
    with AP .10 and the same pairs joins them: mean 1.00 / 4 = .25, sample std by hand
    sqrt((.05^2 + .09^2 + .01^2 + .15^2) / 3) = sqrt(.0332 / 3) = .105198; a run whose pairs changed is refused and leaves the file as it was."""
    image, mask = planted
    runs = []
    for i, ap in enumerate((0.30, 0.34, 0.26, 0.10)):
        run = tmp_path / f"run{i}"
        _write_set(run / "synthetic", {"p": image}, {"p": mask})
        mean = {"pixel": {"ap": ap}}
        (run / "results.json").write_text(json.dumps({"config": {"seed": 0}, "categories": {"x": mean}, "mean": mean}))
        runs.append(str(run))
    out = tmp_path / "baseline.json"
    assert main(["record", "--name", "g", "--runs", *runs[:3], "--k", "3", "--out", str(out)]) == 0
    assert main(["check", "--baseline", str(out), "--name", "g", "--run", runs[3]]) == 1  # .10 < .30 - 3 x .04
    assert main(["add", "--baseline", str(out), "--name", "g", "--runs", runs[3], "--threads", "1",
                 "--note", "another machine"]) == 0
    entry = json.loads(out.read_text())["entries"]["g"]
    assert entry["band"]["pixel.ap"]["mean"] == pytest.approx(0.25)
    assert entry["band"]["pixel.ap"]["std"] == pytest.approx(0.105198, abs=1e-6)
    assert entry["runs"][-1] == {"seed": 0, "threads": 1, "mean": {"pixel.ap": 0.10}, "note": "another machine"}
    assert main(["check", "--baseline", str(out), "--name", "g", "--run", runs[3]]) == 0

    changed = tmp_path / "changed"
    _write_set(changed / "synthetic", {"p": 255 - image}, {"p": mask})
    (changed / "results.json").write_text((tmp_path / "run0" / "results.json").read_text())
    before = out.read_text()
    assert main(["add", "--baseline", str(out), "--name", "g", "--runs", str(changed)]) == 2
    assert "needs `record`" in capsys.readouterr().err and out.read_text() == before
