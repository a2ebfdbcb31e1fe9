"""The metric engine against hand-computed tiny cases, scikit-learn and MVTec AD's exact PRO."""

from __future__ import annotations

import json
import math
from bisect import bisect

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from benchmark.errors import BenchError
from benchmark.metrics import AnomalyMetrics, MetricOptions, evaluate

EXACT = MetricOptions(mode="exact")
BINNED = MetricOptions(mode="binned")
KEYS = {
    "image": {"auroc", "ap", "f1_max"},
    "pixel": {"auroc", "ap", "f1_max", "pro", "iou", "iou_best_per_image", "f1"},
}


def assert_results_equal(got: dict, expected: dict, abs: float = 1e-12) -> None:
    """Equal up to float summation order (image order changes the order of sums)."""
    assert set(got) == set(expected)
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_results_equal(got[key], value, abs)
        else:
            assert got[key] == pytest.approx(value, abs=abs, nan_ok=True), key


def run(maps, masks, **opts):
    return evaluate([np.asarray(maps, dtype=np.float32)], [np.asarray(masks, dtype=bool)], MetricOptions(**opts))


# ----------------------------------------------------------------------------- references


def mvtec_pro(maps, masks, x_max: float = 0.3) -> float:
    """MVTec AD's `compute_pro` + `trapezoid(x, y, x_max) / x_max`, written out the plain way.
    maps, masks: sequences of HxW arrays (sizes may differ)."""
    fp_change, pro_change, flat_scores = [], [], []
    n_ok = n_regions = 0
    for score, gt in zip(maps, masks):
        labeled, n = ndimage.label(gt, np.ones((3, 3), dtype=int))
        n_regions += n
        ok = labeled == 0
        n_ok += ok.sum()
        pro = np.zeros(gt.shape)
        for k in range(n):
            region = labeled == k + 1
            pro[region] = 1.0 / region.sum()
        fp_change.append(ok.ravel().astype(float))
        pro_change.append(pro.ravel())
        flat_scores.append(np.asarray(score, dtype=np.float64).ravel())
    scores = np.concatenate(flat_scores)
    order = np.argsort(scores)[::-1]
    scores = scores[order]
    fprs = np.cumsum(np.concatenate(fp_change)[order]) / n_ok
    pros = np.cumsum(np.concatenate(pro_change)[order]) / n_regions
    keep = np.append(np.diff(scores) != 0, True)
    x = np.concatenate(([0.0], np.clip(fprs[keep], None, 1), [1.0]))
    y = np.concatenate(([0.0], np.clip(pros[keep], None, 1), [1.0]))
    correction = 0.0
    if x_max not in x:
        ins = bisect(x, x_max)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return (np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)) + correction) / x_max


def sklearn_f1_max(labels, scores) -> tuple[float, float]:
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
    i = int(np.argmax(f1))
    return float(f1[i]), float(thresholds[i])


def brute_best_iou(score: np.ndarray, mask: np.ndarray) -> float:
    return max(np.sum((score >= t) & mask) / np.sum((score >= t) | mask) for t in np.unique(score))


def blob_dataset(seed: int, n: int = 12, size: int = 48, quantize: int | None = None, max_radius: int = 7):
    """Smooth maps correlated with blob masks; half the images normal; one-pixel regions too."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.ogrid[:size, :size]
    for i in range(n // 2):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            r = rng.integers(0, max_radius)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    maps = ndimage.gaussian_filter(rng.random((n, size, size)), (0, 1.5, 1.5))
    maps += 0.4 * ndimage.gaussian_filter(masks.astype(float), (0, 1.5, 1.5)) + 0.05 * rng.random(maps.shape)
    maps = ((maps - maps.min()) / (maps.max() - maps.min())).astype(np.float32)
    if quantize:
        maps = (np.round(maps * quantize) / quantize).astype(np.float32)
    return maps, masks


# ----------------------------------------------------------------------------- API shape


def test_result_keys_are_plain_floats():
    maps, masks = blob_dataset(0, n=4, size=16)
    result = evaluate([maps], [masks])
    assert set(result) == {"image", "pixel", "miou", "acc", "acc_anomaly", "threshold"}
    assert set(result["image"]) == KEYS["image"] and set(result["pixel"]) == KEYS["pixel"]
    flat = [*result["image"].values(), *result["pixel"].values(), result["miou"], result["acc"], result["acc_anomaly"]]
    assert all(type(v) is float and 0.0 <= v <= 1.0 for v in flat)
    json.dumps(result)


def test_options_validate_and_round_trip():
    opts = MetricOptions(image_score="pooled-max", pool_kernel=16, iou_threshold="f1", mode="binned", bins=2048)
    assert MetricOptions.from_json(json.loads(json.dumps(opts.to_json()))) == opts
    assert MetricOptions.parse_image_score("pooled-max:21") == {"image_score": "pooled-max", "pool_kernel": 21}
    for bad in [
        dict(image_score="median"),
        dict(pool_kernel=0),
        dict(iou_threshold=1.5),
        dict(iou_threshold="best"),
        dict(mode="fast"),
        dict(bins=100),
        dict(max_fpr=0.0),
    ]:
        with pytest.raises(BenchError):
            MetricOptions(**bad)
    with pytest.raises(BenchError):
        MetricOptions.parse_image_score("max:3")


@pytest.mark.parametrize(
    "maps, masks, message",
    [
        (np.full((1, 4, 4), 1.5, np.float32), np.zeros((1, 4, 4), bool), "[0, 1]"),
        (np.full((1, 4, 4), -0.1, np.float32), np.zeros((1, 4, 4), bool), "softmax/sigmoid"),
        (np.full((1, 4, 4), np.nan, np.float32), np.zeros((1, 4, 4), bool), "NaN"),
        (np.zeros((1, 4, 4), np.uint8), np.zeros((1, 4, 4), bool), "dtype uint8"),
        (np.zeros((1, 4, 4), np.float32), np.zeros((1, 4, 5), bool), "differ in shape"),
        (np.zeros((1, 4, 4), np.float32), np.full((1, 4, 4), 255, np.uint8), "binary"),
        (np.zeros((4,), np.float32), np.zeros((4,), bool), "BxHxW"),
    ],
)
def test_invalid_inputs_raise(maps, masks, message):
    with pytest.raises(BenchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        AnomalyMetrics().update(maps, masks)


def test_torch_inputs_and_shapes_are_accepted():
    maps, masks = blob_dataset(1, n=4, size=16)
    reference = evaluate([maps], [masks], EXACT)
    m = AnomalyMetrics(EXACT)
    m.update(torch.from_numpy(maps[:2]).unsqueeze(1), torch.from_numpy(masks[:2]).unsqueeze(1).float())
    for i in (2, 3):
        m.update(torch.from_numpy(maps[i]).double(), torch.from_numpy(masks[i]).long())
    assert m.compute() == reference
    assert m.resolved_mode == "exact"


# ----------------------------------------------------------------------------- hand-computed cases


def two_image_case():
    """Image 0: 2x2 defect in a 4x4 map, half of it and two normal pixels scored 1. Image 1: normal, all 0."""
    maps = np.zeros((2, 4, 4), np.float32)
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2, :2] = True
    maps[0, 0, :2] = 1.0  # 2 of the 4 defect pixels
    maps[0, 3, 2:] = 1.0  # 2 false positives
    return maps, masks


@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_hand_computed_binary_maps(mode):
    maps, masks = two_image_case()
    r = run(maps, masks, mode=mode)
    n_normal, p = 28, 4
    fpr = 2 / n_normal
    assert r["pixel"]["auroc"] == pytest.approx((0.5 + (1 - fpr)) / 2)  # (TPR + TNR) / 2 for a binary map
    assert r["pixel"]["ap"] == pytest.approx(0.5 * 0.5 + 0.5 * (4 / 32))
    assert r["pixel"]["f1_max"] == pytest.approx(0.5)
    # PRO: (0,0) -> (2/28, 0.5) -> (1, 1), integrated to 0.3 with the point at 0.3 interpolated
    y03 = 0.5 + 0.5 * (0.3 - fpr) / (1 - fpr)
    expected_pro = (0.5 * 0.5 * fpr + 0.5 * (0.5 + y03) * (0.3 - fpr)) / 0.3
    assert r["pixel"]["pro"] == pytest.approx(expected_pro)
    assert r["pixel"]["iou"] == pytest.approx(2 / 6)
    assert r["pixel"]["iou_best_per_image"] == pytest.approx(2 / 6)  # t=1: 2/6 beats t=0: 4/16
    assert r["miou"] == pytest.approx((2 / 6 + 26 / 30) / 2)
    assert r["acc"] == pytest.approx((2 / p + 26 / n_normal) / 2)
    assert r["acc_anomaly"] == pytest.approx(0.5)
    assert r["threshold"] == 0.5
    assert r["image"] == {"auroc": 1.0, "ap": 1.0, "f1_max": 1.0}


def test_perfect_maps_exactly_zero_one():
    maps, masks = two_image_case()
    r = run(masks.astype(np.float32), masks)
    assert all(v == pytest.approx(1.0) for v in r["pixel"].values())
    assert r["miou"] == r["acc"] == r["acc_anomaly"] == pytest.approx(1.0)
    assert r["image"]["auroc"] == 1.0


def test_inverted_maps_score_zero():
    maps, masks = two_image_case()
    r = run(1.0 - masks.astype(np.float32), masks)
    assert r["pixel"]["auroc"] == 0.0
    assert r["pixel"]["pro"] == 0.0
    assert r["pixel"]["iou"] == 0.0


@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_all_scores_tied(mode):
    _, masks = two_image_case()
    r = run(np.full(masks.shape, 0.5), masks, mode=mode)
    p, n = 4, 32
    assert r["pixel"]["auroc"] == pytest.approx(0.5)
    assert r["pixel"]["ap"] == pytest.approx(p / n)
    assert r["pixel"]["f1_max"] == pytest.approx(2 * p / (n + p))
    assert r["pixel"]["pro"] == pytest.approx(0.15)  # diagonal: 0.3^2 / 2 / 0.3
    assert r["pixel"]["iou"] == pytest.approx(p / n)  # 0.5 >= 0.5: everything predicted anomalous
    assert r["image"]["auroc"] == pytest.approx(0.5)
    assert r["image"]["ap"] == pytest.approx(0.5)


def test_ties_between_normal_and_anomalous_match_sklearn():
    rng = np.random.default_rng(3)
    maps = rng.integers(0, 4, (6, 8, 8)).astype(np.float32) / 3  # 4 levels: many mixed ties
    masks = rng.random((6, 8, 8)) < 0.2
    r = run(maps, masks, mode="exact")
    assert r["pixel"]["auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert r["pixel"]["ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert r["pixel"]["pro"] == pytest.approx(mvtec_pro(maps, masks), abs=1e-12)


def test_no_anomalous_pixel_in_category():
    rng = np.random.default_rng(4)
    maps = rng.random((3, 8, 8)).astype(np.float32) * 0.4  # all below 0.5: nothing predicted
    r = run(maps, np.zeros(maps.shape, bool))
    assert all(math.isnan(v) for v in r["image"].values())
    assert all(math.isnan(v) for v in r["pixel"].values())
    assert r["miou"] == 1.0 and r["acc"] == 1.0  # the normal class alone (mmseg's nanmean)
    assert math.isnan(r["acc_anomaly"])
    maps[0, 0, 0] = 0.9  # one false positive: anomaly IoU is 0, not undefined
    r = run(maps, np.zeros(maps.shape, bool))
    assert r["pixel"]["iou"] == 0.0 and r["miou"] == pytest.approx((0 + 191 / 192) / 2)
    r = run(maps, np.zeros(maps.shape, bool), iou_threshold="f1")  # no F1 threshold exists
    assert math.isnan(r["threshold"]) and math.isnan(r["miou"]) and math.isnan(r["pixel"]["iou"])


def test_all_normal_images_count_in_pro_fpr():
    maps = np.zeros((2, 4, 4), np.float32)
    masks = np.zeros((2, 4, 4), bool)
    masks[0, 0, 0] = True  # a one-pixel region
    maps[0] = 0.1
    maps[0, 0, 0] = 0.9
    maps[1, 2, 2] = 0.95  # one normal pixel of the good image outranks the defect
    alone = run(maps[:1], masks[:1])
    assert alone["pixel"]["pro"] == 1.0
    both = run(maps, masks)
    n_normal = 15 + 16
    assert both["pixel"]["pro"] == pytest.approx((0.3 - 1 / n_normal) / 0.3)
    assert both["pixel"]["pro"] == pytest.approx(mvtec_pro(maps, masks))
    assert both["image"]["auroc"] == 0.0  # the good image has the higher max


def test_pro_regions_are_8_connected_and_weighted_per_region():
    maps = np.full((1, 5, 5), 0.1, np.float32)
    masks = np.zeros((1, 5, 5), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one region of area 2
    masks[0, 4, 4] = True  # a one-pixel region
    maps[0, 0, 0], maps[0, 1, 1], maps[0, 4, 4] = 0.9, 0.2, 0.8
    maps[0, 2, 2] = 0.85  # the one normal pixel above 0.1
    r = run(maps, masks)
    # overlap 0.25 at FPR 0, jumps to 0.75 then 1 at FPR 1/22; 4-connectivity would give 1/3, 2/3
    assert r["pixel"]["pro"] == pytest.approx((0.25 / 22 + (0.3 - 1 / 22)) / 0.3)
    assert r["pixel"]["pro"] == pytest.approx(mvtec_pro(maps, masks))


def test_max_fpr_option():
    maps, masks = blob_dataset(5, n=6, size=24)
    for limit in (0.05, 0.3, 1.0):
        r = evaluate([maps], [masks], MetricOptions(mode="exact", max_fpr=limit))
        assert r["pixel"]["pro"] == pytest.approx(mvtec_pro(maps, masks, limit), abs=1e-9)


def test_image_score_rules():
    maps = np.zeros((2, 30, 30), np.float32)
    masks = np.zeros((2, 30, 30), bool)
    maps[0, 15, 15] = 1.0  # image 0: one hot pixel, normal
    maps[1, :3, :3] = 0.5  # image 1: a dim 3x3 patch at the corner, anomalous
    masks[1, :3, :3] = True
    assert run(maps, masks, image_score="max")["image"]["auroc"] == 0.0  # 1.0 > 0.5
    assert run(maps, masks, image_score="mean")["image"]["auroc"] == 1.0  # 1/900 < 4.5/900
    # pooled 21x21 with zero padding counted: 1/441 vs 0.5 * 9/441
    assert run(maps, masks, image_score="pooled-max", pool_kernel=21)["image"]["auroc"] == 1.0
    from benchmark.metrics.image_score import image_scores

    np.testing.assert_allclose(image_scores(maps, "pooled-max", 21), [1 / 441, 4.5 / 441])
    np.testing.assert_allclose(image_scores(maps, "mean"), [1 / 900, 4.5 / 900])


def test_iou_threshold_f1_is_consistent_with_f1_max():
    maps, masks = blob_dataset(6)
    r = evaluate([maps], [masks], MetricOptions(mode="exact", iou_threshold="f1"))
    f1, threshold = sklearn_f1_max(masks.ravel(), maps.ravel())
    assert r["threshold"] == pytest.approx(threshold)
    assert r["pixel"]["f1_max"] == pytest.approx(f1, abs=1e-9)
    iou = r["pixel"]["iou"]
    assert r["pixel"]["f1_max"] == pytest.approx(2 * iou / (1 + iou))  # Dice = 2 IoU / (1 + IoU)
    pred = maps >= threshold
    assert iou == pytest.approx(np.sum(pred & masks) / np.sum(pred | masks))


def test_iou_best_per_image_matches_brute_force():
    maps, masks = blob_dataset(7, n=8, size=20, quantize=50)
    expected = np.mean([brute_best_iou(maps[i], masks[i]) for i in range(len(maps)) if masks[i].any()])
    for mode in ("exact", "binned"):
        r = evaluate([maps], [masks], MetricOptions(mode=mode))
        assert r["pixel"]["iou_best_per_image"] == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------- random cases


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_exact_mode_matches_sklearn_and_mvtec(seed):
    maps, masks = blob_dataset(seed, quantize=200 if seed == 12 else None)
    small_maps, small_masks = blob_dataset(seed + 100, n=5, size=20)  # a second image size
    r = evaluate([maps[:5], maps[5:], small_maps], [masks[:5], masks[5:], small_masks], EXACT)
    labels = np.concatenate([masks.ravel(), small_masks.ravel()])
    scores = np.concatenate([maps.ravel(), small_maps.ravel()])
    assert r["pixel"]["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert r["pixel"]["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert r["pixel"]["f1_max"] == pytest.approx(sklearn_f1_max(labels, scores)[0], abs=1e-9)
    expected_pro = mvtec_pro([*maps, *small_maps], [*masks, *small_masks])
    assert r["pixel"]["pro"] == pytest.approx(expected_pro, abs=1e-9)
    image_labels = np.concatenate([masks.any((1, 2)), small_masks.any((1, 2))])
    image_scores = np.concatenate([maps.max((1, 2)), small_maps.max((1, 2))])
    assert r["image"]["auroc"] == pytest.approx(roc_auc_score(image_labels, image_scores), abs=1e-12)
    assert r["image"]["ap"] == pytest.approx(average_precision_score(image_labels, image_scores), abs=1e-12)
    assert r["image"]["f1_max"] == pytest.approx(sklearn_f1_max(image_labels, image_scores)[0], abs=1e-12)
    pred, gt = scores >= 0.5, labels
    tp, fp, fn = np.sum(pred & gt), np.sum(pred & ~gt), np.sum(~pred & gt)
    tn = np.sum(~pred & ~gt)
    assert r["pixel"]["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert r["miou"] == pytest.approx((tp / (tp + fp + fn) + tn / (tn + fp + fn)) / 2)
    assert r["acc"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)


@pytest.mark.parametrize("seed", [20, 21])
def test_binned_mode_is_within_1e3_of_exact(seed):
    maps, masks = blob_dataset(seed, n=16, size=128, max_radius=20)  # defects of MVTec-like size
    exact = evaluate([maps], [masks], EXACT)
    binned = evaluate([maps], [masks], BINNED)
    for level in ("image", "pixel"):
        for key, value in exact[level].items():
            assert binned[level][key] == pytest.approx(value, abs=1e-3), (level, key)
    for key in ("miou", "acc", "acc_anomaly"):
        assert binned[key] == pytest.approx(exact[key], abs=1e-12)  # fixed threshold: counted exactly


def test_binned_equals_exact_for_8bit_maps():
    maps, masks = blob_dataset(22, quantize=255)
    for threshold in (0.5, "f1"):
        exact = evaluate([maps], [masks], MetricOptions(mode="exact", iou_threshold=threshold))
        binned = evaluate([maps], [masks], MetricOptions(mode="binned", iou_threshold=threshold))
        for level in ("image", "pixel"):
            for key, value in exact[level].items():
                assert binned[level][key] == pytest.approx(value, abs=1e-12), (level, key)
        assert binned["miou"] == pytest.approx(exact["miou"], abs=1e-12)


def test_batching_order_and_reset_do_not_change_results():
    maps, masks = blob_dataset(30)
    whole = evaluate([maps], [masks], EXACT)
    m = AnomalyMetrics(EXACT)
    for i in reversed(range(len(maps))):
        m.update(maps[i], masks[i])
    assert_results_equal(m.compute(), whole)
    m.reset()
    m.update(maps[:3], masks[:3])
    assert_results_equal(m.compute(), evaluate([maps[:3]], [masks[:3]], EXACT))


def test_auto_mode_switches_to_histograms_above_the_size_limit():
    maps, masks = blob_dataset(31)
    small_limit = MetricOptions(mode="auto", exact_max_pixels=3 * 48 * 48)
    m = AnomalyMetrics(small_limit)
    for i in range(len(maps)):
        m.update(maps[i : i + 1], masks[i : i + 1])
        assert bool(m.pixel_keys) == (i < 3)  # the exact state is dropped once the limit is passed
    assert_results_equal(m.compute(), evaluate([maps], [masks], BINNED))
    assert m.resolved_mode == "binned"
    m = AnomalyMetrics(MetricOptions(mode="auto"))
    m.update(maps, masks)
    assert_results_equal(m.compute(), evaluate([maps], [masks], EXACT))
    assert m.resolved_mode == "exact"


def test_binned_state_does_not_grow_with_images():
    maps, masks = blob_dataset(32, n=4, size=32)

    def pixel_state_bytes(metric):
        return sum(
            t.numel() * t.element_size()
            for name in ("pixel_keys", "hist_normal", "hist_anomalous", "hist_region_weight")
            for t in (getattr(metric, name) if isinstance(getattr(metric, name), list) else [getattr(metric, name)])
        )

    binned, exact = AnomalyMetrics(BINNED), AnomalyMetrics(EXACT)
    sizes = []
    for _ in range(5):
        binned.update(maps, masks)
        exact.update(maps, masks)
        sizes.append((pixel_state_bytes(binned), pixel_state_bytes(exact)))
    assert len({b for b, _ in sizes}) == 1
    assert sizes[-1][1] - sizes[0][1] == 4 * maps.size * 8  # exact: 8 bytes per pixel


# ----------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    maps, masks = blob_dataset(40)
    results = {}
    for mode in ("exact", "binned"):
        m = AnomalyMetrics(MetricOptions(mode=mode))
        m.update(maps[rank::world_size], masks[rank::world_size])
        results[mode] = m.compute()
        lonely = AnomalyMetrics(MetricOptions(mode=mode))  # rank 1 sees no data at all
        if rank == 0:
            lonely.update(maps, masks)
        results[mode + "_empty_rank"] = lonely.compute()
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_ddp_sync_matches_single_process(tmp_path):
    import torch.multiprocessing as mp

    # spawn, not fork: gloo in a child forked from a process that already runs torch/OpenMP
    # threads deadlocked in all_gather when this ran after other tests in one session
    mp.start_processes(
        _ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="spawn", join=True
    )
    maps, masks = blob_dataset(40)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for mode in ("exact", "binned"):
            expected = evaluate([maps], [masks], MetricOptions(mode=mode))
            assert_results_equal(got[mode], expected)
            assert_results_equal(got[mode + "_empty_rank"], expected)
