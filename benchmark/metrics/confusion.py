"""Dataset-level confusion matrix over {normal, anomaly} -> IoU, mIoU, Acc (mmseg's IoUMetric)."""

from __future__ import annotations

import math

import numpy as np


def confusion_at_threshold(scores: np.ndarray, positive: np.ndarray, threshold: float) -> np.ndarray:
    """int64 [TP, FP, FN, TN] predicting anomaly iff score >= threshold; `positive`: the indices of
    the anomalous pixels in the flattened scores."""
    flat = scores.reshape(-1)
    return confusion_from_counts(int(np.count_nonzero(flat >= threshold)), flat[positive], flat.size, threshold)


def confusion_from_counts(n_predicted: int, positive_scores: np.ndarray, n: int, threshold: float) -> np.ndarray:
    """`confusion_at_threshold` when the number of pixels scoring >= threshold is known already."""
    n_pos = positive_scores.size
    tp = int(np.count_nonzero(positive_scores >= threshold))
    fp = n_predicted - tp
    return np.array([tp, fp, n_pos - tp, n - n_pos - fp], dtype=np.int64)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def _nanmean(*values: float) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def segmentation_scores(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """iou: anomaly-class IoU (SeaS "IoU", DefectDiffu "mIoU" read as defect-class IoU);
    miou: mean of the anomaly and normal class IoUs (mmseg IoUMetric, nanmean over classes);
    acc: mean class accuracy (mmseg mAcc); acc_anomaly: anomaly-class accuracy = recall (what
    STAGE's "Acc" appears to be); f1: anomaly-class F1 (Dice) 2TP / (2TP + FP + FN) at the same
    threshold (DefectDiffu "F1"). A class with an empty denominator is NaN and left out of means."""
    iou_anomaly = _ratio(tp, tp + fp + fn)
    iou_normal = _ratio(tn, tn + fn + fp)
    acc_anomaly = _ratio(tp, tp + fn)
    acc_normal = _ratio(tn, tn + fp)
    return {
        "iou": iou_anomaly,
        "miou": _nanmean(iou_anomaly, iou_normal),
        "acc": _nanmean(acc_anomaly, acc_normal),
        "acc_anomaly": acc_anomaly,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }
