"""The papers' own metric variants (issue 17, part 4), each against an independent implementation.

- `pixel_score="logit"`: STAGE scores the raw anomaly-channel logits of SegFormer (Sec. IV-B 2).
- `pro_curve="quantile-100"`: the MVTec 3D-AD `au_pro_util` curve of AnomalyDiffusion's code.
- `pixel_f1_max="grid-21"`: AnomalyDiffusion's pixel F1-max over 0, 0.05, ..., 1 with score > t.
"""

from __future__ import annotations

from bisect import bisect

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, jaccard_score, roc_auc_score

from benchmark.errors import BenchError
from benchmark.evaluation import MetricsCollector
from benchmark.metrics import AnomalyMetrics, MetricOptions, evaluate
from benchmark.metrics.curves import pack_keys, unpack_keys
from test_metrics import blob_dataset, mvtec_pro, sklearn_f1_max  # tests/ is on sys.path (pytest rootdir conftest)


# ------------------------------------------------------------------------------ references


def quantile_pro_reference(maps, masks, n_thresholds: int = 100, x_max: float = 0.3) -> float:
    """MVTec 3D-AD's quantile PRO written out per region: per-region sorted scores walked with
    increasing thresholds, FPR from the threshold's position, `trapezoid` with `bisect`."""
    regions, ok = [], []
    for score, gt in zip(maps, masks):
        labeled, n = ndimage.label(gt, np.ones((3, 3), dtype=int))
        ok.extend(np.asarray(score, dtype=np.float64)[labeled == 0].tolist())
        regions += [np.sort(np.asarray(score, dtype=np.float64)[labeled == k + 1]) for k in range(n)]
    ok = np.sort(np.array(ok))
    fprs, pros = [1.0], [1.0]
    for pos in np.linspace(0, len(ok) - 1, num=n_thresholds, dtype=int):
        threshold = ok[pos]
        fprs.append(1.0 - (pos + 1) / len(ok))
        # overlap: fraction of the region strictly above the threshold
        pros.append(sum(np.count_nonzero(r > threshold) / r.size for r in regions) / len(regions))
    x, y = np.array(fprs[::-1]), np.array(pros[::-1])
    correction = 0.0
    if x_max not in x:
        ins = bisect(x, x_max)
        y_at = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_at + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return (np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)) + correction) / x_max


def grid_f1_reference(maps, masks) -> float:
    """AnomalyDiffusion's loop, with sklearn's F1 at each of the 21 thresholds (score > t)."""
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([s.ravel() for s in maps]).astype(np.float64)
    return max(f1_score(labels, scores > t, zero_division=0) for t in np.arange(0.0, 1.0 + 1e-3, 0.05))


def two_class_logits(seed: int = 3, n: int = 8, size: int = 32):
    """Two-channel logits whose softmax ranks pixels differently from the anomaly logit alone."""
    maps, masks = blob_dataset(seed, n=n, size=size)
    rng = np.random.default_rng(seed)
    anomaly = (6 * maps - 3 + rng.normal(0, 1.5, maps.shape)).astype(np.float32)
    normal = rng.normal(0, 3, maps.shape).astype(np.float32)  # varies independently
    prob = (1 / (1 + np.exp(normal - anomaly))).astype(np.float32)
    return anomaly, prob, masks


# ------------------------------------------------------------------------------ quantile PRO


@pytest.mark.parametrize("seed, quantize", [(0, None), (1, 255), (2, 20)])  # ties: 8-bit and coarse maps
def test_quantile_pro_matches_an_independent_au_pro_util(seed, quantize):
    maps, masks = blob_dataset(seed, quantize=quantize)
    got = evaluate([maps[:5], maps[5:]], [masks[:5], masks[5:]], MetricOptions(pro_curve="quantile-100"))
    assert got["pixel"]["pro"] == pytest.approx(quantile_pro_reference(maps, masks), abs=1e-12)
    exact = evaluate([maps], [masks])["pixel"]["pro"]
    assert exact == pytest.approx(mvtec_pro(maps, masks), abs=1e-9)
    assert got["pixel"]["pro"] != pytest.approx(exact, abs=1e-6)  # the variant is a different number


def test_quantile_pro_keeps_exact_state_and_refuses_binned():
    maps, masks = blob_dataset(4)
    metric = AnomalyMetrics(MetricOptions(pro_curve="quantile-100", exact_max_pixels=10))
    metric.update(maps, masks)
    assert metric.compute()["pixel"]["pro"] == pytest.approx(quantile_pro_reference(maps, masks), abs=1e-12)
    assert metric.resolved_mode == "exact"  # auto does not switch to bins for this variant
    with pytest.raises(BenchError, match="binned"):
        MetricOptions(pro_curve="quantile-100", mode="binned")


# ------------------------------------------------------------------------------ 21-threshold F1


@pytest.mark.parametrize("mode, quantize", [("exact", None), ("binned", None), ("exact", 20)])
def test_grid_f1_max_matches_the_21_threshold_loop_in_every_mode(mode, quantize):
    maps, masks = blob_dataset(5, quantize=quantize)  # quantize=20 puts scores exactly on the grid
    got = evaluate([maps[:4], maps[4:]], [masks[:4], masks[4:]], MetricOptions(pixel_f1_max="grid-21", mode=mode))
    assert got["pixel"]["f1_max"] == pytest.approx(grid_f1_reference(maps, masks), abs=1e-12)
    labels = masks.ravel()
    assert got["pixel"]["f1_max"] <= sklearn_f1_max(labels, maps.ravel())[0] + 1e-12  # a subset of thresholds


def test_grid_f1_predicts_strictly_above_the_threshold():
    """A pixel scoring exactly t is not predicted at t (AnomalyDiffusion's `pr_px_norm > score`):
    the defects score 1.0, a grid value, and normal pixels 0.97, so no grid threshold separates them."""
    maps = np.array([[[1.0, 1.0, 0.97, 0.97], [0.0, 0.0, 0.0, 0.0]]], dtype=np.float32)
    masks = np.array([[[1, 1, 0, 0], [0, 0, 0, 0]]], dtype=bool)
    got = evaluate([maps], [masks], MetricOptions(pixel_f1_max="grid-21"))["pixel"]["f1_max"]
    assert got == pytest.approx(grid_f1_reference(maps, masks), abs=1e-12)
    assert got == pytest.approx(2 * 2 / (4 + 2))  # t = 0 ... 0.95: 4 predicted, 2 hits; t = 1: none
    assert evaluate([maps], [masks])["pixel"]["f1_max"] == 1.0  # the exact curve has t = 1.0 with >=


def test_quantile_pro_over_the_whole_fpr_range_uses_the_curve_end_point():
    maps, masks = blob_dataset(9)
    got = evaluate([maps], [masks], MetricOptions(pro_curve="quantile-100", max_fpr=1.0))["pixel"]["pro"]
    assert got == pytest.approx(quantile_pro_reference(maps, masks, x_max=1.0), abs=1e-12)


# ------------------------------------------------------------------------------ raw logits


def test_logit_scoring_ranks_the_anomaly_logit_and_thresholds_the_probability():
    logit, prob, masks = two_class_logits()
    metric = AnomalyMetrics(MetricOptions(pixel_score="logit", iou_threshold=0.5))
    metric.update(logit[:3], masks[:3], probabilities=prob[:3])
    metric.update(logit[3:], masks[3:], probabilities=prob[3:])
    got = metric.compute()
    labels, scores = masks.ravel(), logit.ravel().astype(np.float64)
    assert got["pixel"]["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["pixel"]["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert got["pixel"]["f1_max"] == pytest.approx(sklearn_f1_max(labels, scores)[0], abs=1e-12)
    # the exact PRO does not depend on the scores' range: the MVTec reference on logits
    assert got["pixel"]["pro"] == pytest.approx(mvtec_pro(logit, masks), abs=1e-9)
    assert got["image"]["auroc"] == pytest.approx(roc_auc_score(masks.any((1, 2)), logit.max((1, 2))), abs=1e-12)
    predicted = prob.ravel() >= 0.5  # the 2-class argmax, as mmseg's mIoU
    assert got["pixel"]["iou"] == pytest.approx(jaccard_score(labels, predicted), abs=1e-12)
    assert got["pixel"]["f1"] == pytest.approx(f1_score(labels, predicted), abs=1e-12)
    on_probabilities = evaluate([prob], [masks])["pixel"]["auroc"]
    assert abs(on_probabilities - got["pixel"]["auroc"]) > 1e-3  # the two rank pixels differently


def test_logit_scoring_with_the_f1_threshold_needs_no_probabilities():
    logit, _, masks = two_class_logits(6)
    got = evaluate([logit], [masks], MetricOptions(pixel_score="logit", iou_threshold="f1", pro_curve="quantile-100"))
    assert got["pixel"]["f1"] == pytest.approx(got["pixel"]["f1_max"], abs=1e-12)
    assert got["pixel"]["pro"] == pytest.approx(quantile_pro_reference(logit, masks), abs=1e-12)
    _, threshold = sklearn_f1_max(masks.ravel(), logit.ravel().astype(np.float64))
    assert got["threshold"] == pytest.approx(threshold, abs=1e-6)


def test_logit_scoring_checks_its_inputs():
    logit, prob, masks = two_class_logits(7)
    with pytest.raises(BenchError, match="probabilities"):
        evaluate([logit], [masks], MetricOptions(pixel_score="logit"))  # numeric threshold, no probabilities
    with pytest.raises(BenchError, match=r"\[0, 1\]"):
        evaluate([logit], [masks])  # the default still refuses logits
    bad = logit.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(BenchError, match="finite"):
        evaluate([bad], [masks], MetricOptions(pixel_score="logit", iou_threshold="f1"))
    for wrong in ({"mode": "binned"}, {"pixel_f1_max": "grid-21"}):
        with pytest.raises(BenchError):
            MetricOptions(pixel_score="logit", **wrong)


def test_packed_keys_sort_like_signed_scores():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0, 30, 500), [-0.0, 0.0, -1e-30, 1e-30, -3e38, 3e38, 1.0]]).astype(np.float32)
    payload = rng.integers(0, 2**31 - 1, scores.size).astype(np.uint32)
    keys = pack_keys(scores, payload)
    order = np.argsort(keys, kind="stable")
    assert np.all(np.diff(scores[order].astype(np.float64)) >= 0)
    back, back_payload = unpack_keys(keys)
    assert np.array_equal(back, scores + np.float32(0.0)) and np.array_equal(back_payload, payload)


# ------------------------------------------------------------------------------ the runner


def test_the_collector_feeds_logits_and_probabilities_when_the_protocol_asks():
    import torch

    logit, prob, masks = two_class_logits(8)
    prediction = {"prob": torch.from_numpy(prob), "logit": torch.from_numpy(logit), "mask": torch.from_numpy(masks)}
    for cfg, maps in ((MetricOptions(preset="stage", pixel_score="logit"), logit), (MetricOptions(), prob)):
        collector = MetricsCollector(cfg)
        collector.write_on_batch_end(None, None, prediction, None, None, 0)
        got = collector.compute()["pixel"]["auroc"]
        assert got == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel().astype(np.float64)), abs=1e-12)


def test_segmenters_predict_the_anomaly_logit_beside_the_probability():
    import torch

    from benchmark.registry import SEGMENTERS

    torch.manual_seed(0)
    cls = SEGMENTERS.get("unet").load()
    segmenter = cls(cls.Options()).eval()
    images = torch.rand(2, 3, 32, 32)
    batch = {"image": images, "mask": torch.zeros(2, 32, 32, dtype=torch.bool), "category": ["a", "a"], "id": ["0", "1"]}
    out = segmenter.predict_step(batch)
    logits = segmenter.class_logits(images)
    assert torch.equal(out["logit"], logits[:, 1])
    assert torch.allclose(out["prob"], torch.sigmoid(logits[:, 1] - logits[:, 0]), atol=1e-6)  # 2-class softmax
