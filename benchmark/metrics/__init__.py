"""The metric engine every SIAS-Bench table uses.

    from benchmark.metrics import MetricOptions, AnomalyMetrics, evaluate
    m = AnomalyMetrics(MetricOptions(image_score="pooled-max", pool_kernel=21))
    m.update(maps, masks)        # float BxHxW probabilities in [0, 1], bool/0-1 BxHxW masks
    m.compute()                  # {"image": {...}, "pixel": {...}, "miou", "acc", "acc_anomaly", "threshold"}

Definitions (docs/metrics.md has the long form and which paper uses which). All metrics are
fractions in [0, 1], over all evaluated images of one category, normal test images included.
A pixel or image is predicted anomalous iff its score >= the threshold.

- Pixel AUROC / AP / F1-max: over every pixel; every distinct score is a threshold. AUROC and AP
  are scikit-learn's `roc_auc_score` / `average_precision_score` (AP = sum_k (R_k - R_k-1) P_k,
  no interpolation); F1-max = max over thresholds of 2PR/(P+R) (SeaS, AnomalyDiffusion, BADG,
  anomalib's F1Max). SeaS/LFD compute them with scikit-learn exactly like this;
  AnomalyDiffusion's code takes pixel F1-max on 21 fixed thresholds only.
- Image AUROC / AP / F1-max: the same on one score per image; the score rule is an option:
  `max` (default; SeaS/LFD), `mean`, `pooled-max` = max of the KxK average-pooled map (K = 21:
  AnomalyDiffusion/DRAEM; ADer uses 16). An image is anomalous iff its mask has a pixel.
- PRO: area under the per-region-overlap curve for FPR in [0, max_fpr=0.3], divided by 0.3.
  Regions are 8-connected components of each mask; overlap = mean over all regions of the
  dataset of the fraction of the region above the threshold; FPR over the normal pixels of all
  images (normal images included). Exact curve at every distinct score, linearly interpolated at
  0.3: MVTec AD's `compute_pro` + `trapezoid` (NOTES.md B.1). Not the MVTec 3D-AD quantile PRO
  (AnomalyDiffusion, STAGE: 100 thresholds), not anomalib's AUPRO (divided by the last FPR), not
  ADer's min-max rescaled FPR (B.2-B.4).
- IoU: anomaly-class IoU TP/(TP+FP+FN) of the thresholded maps, TP/FP/FN summed over the dataset
  (SeaS "IoU"; DefectDiffu's "mIoU" reads as this). Threshold option: 0.5 (default) or "f1" = the
  pixel F1-max threshold. `iou_best_per_image`: for each anomalous image the IoU at its own best
  threshold, averaged over anomalous images -- what the LFD code used for SeaS' tables computes.
- mIoU / Acc: dataset confusion matrix over {normal, anomaly} at the IoU threshold; mIoU = mean of
  the two class IoUs, Acc = mean class accuracy (mmseg IoUMetric mIoU / mAcc); `acc_anomaly` =
  anomaly-class accuracy (recall), the figure STAGE's "Acc" appears to be.
- Pixel F1 (`pixel.f1`): anomaly-class F1 (Dice) at the IoU threshold, 2 IoU / (1 + IoU)
  (DefectDiffu "F1"). Not F1-max.
- The papers' own variants, named options recorded with the numbers (docs/metrics.md):
  `pixel_score="logit"` ranks raw anomaly-channel logits (STAGE); `pro_curve="quantile-100"` is
  MVTec 3D-AD's au_pro_util and `pixel_f1_max="grid-21"` the 21-threshold F1 (AnomalyDiffusion's
  code). `METRIC_PRESETS` bundles each paper's options; `RESULT_KEYS` lists every metric.
- Undefined values are NaN: AUROC needs both classes; AP, F1-max, PRO, acc_anomaly need an
  anomalous pixel (image metrics: an anomalous image); PRO also needs a normal pixel; IoU is NaN
  when nothing is anomalous in either mask or prediction; means over classes skip NaN classes
  (mmseg's nanmean); with iou_threshold="f1" and no anomalous pixel, threshold/IoU/mIoU/Acc are NaN.

Modes: `exact` keeps 8 bytes per pixel and sorts once at compute (scikit-learn / MVTec values);
`binned` keeps `bins` (>= 1000, default 2^16) uniform histogram bins over [0, 1] (memory independent of the
pixel count; identical to exact for 8-bit maps k/255); `auto` is exact up to
`exact_max_pixels` (5e7) pixels in total and binned above. Inputs must be probabilities: the
engine raises on values outside [0, 1] or NaN and never applies a sigmoid (torchmetrics does,
per batch: NOTES.md B.3).
"""

from benchmark.metrics.options import METRIC_PRESETS, RESULT_KEYS, MetricOptions, metric_definition

__all__ = ["AnomalyMetrics", "METRIC_PRESETS", "MetricOptions", "RESULT_KEYS", "evaluate", "metric_definition"]


def __getattr__(name: str):
    """The engine (torch, torchmetrics, scipy) loads on first use: the leaderboard needs only the
    metric keys and options, and the config loader must answer a bad flag before torch loads."""
    if name in {"AnomalyMetrics", "evaluate"}:
        from benchmark.metrics import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
