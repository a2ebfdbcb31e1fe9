"""`AnomalyMetrics` (torchmetrics update/compute, states synced under DDP) and `evaluate`, its
functional twin. The definitions are in `benchmark/metrics/__init__.py` and docs/metrics.md.

States (and how they reduce across ranks):
  pixel_keys       list of int64 packed (score, region area) keys, "cat"   exact mode, 8 B/pixel; on the
                   CPU consecutive updates write into one reserved segment (`_key_buffer`), so compute
                   sorts in that memory; compute leaves the same keys, in ascending order (one
                   ascending run per thread's slice when the state was sorted in slices)
  positive_keys    the anomalous pixels' keys again, "cat"                  exact mode, 8 B/anomalous pixel
  hist_*           per-bin normal / anomalous counts, 1/area weights, "sum"  binned mode
  image_scores     list of float64, image_labels list of int64, "cat"     one entry per image
  confusion        [TP, FP, FN, TN] at a fixed IoU threshold, "sum"      (the exact state's pixels: at compute)
  grid_predicted, grid_hits   #predicted / TP at the 21 F1 grid thresholds, "sum"
  n_regions, n_pixels, best_iou_sum, best_iou_count                     "sum"
Update work is numpy on the CPU (scipy labels the regions there anyway); states live on the
metric's device so Lightning/torchmetrics can all-gather them. Batches and states of at least
`_PARALLEL_MIN_PIXELS` are split over `_threads()` threads (torch's thread count); every value is
the same to the bit whatever the number of threads.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch
from torchmetrics import Metric

from benchmark.errors import BenchError
from benchmark.metrics import curves
from benchmark.metrics.confusion import confusion_at_threshold, confusion_from_counts, segmentation_scores
from benchmark.metrics.image_score import image_scores
from benchmark.metrics.options import MetricOptions
from benchmark.metrics.pro import AnomalousPixels, anomalous_pixels

_HISTOGRAM_CHUNK = 1 << 20  # pixels; whole-batch temporaries measured 3x slower at 1024^2 (fresh pages)
# Keys of the exact state reserved per segment: 1 GiB of address space, whose pages are only
# touched as updates write them. One segment holds every key of a category up to 134 M pixels, so
# compute can sort them in their own memory (docs/metrics.md, "Exact compute").
_SEGMENT_KEYS = 1 << 27
# Work of at least this many pixels is split over the engine's threads (`_threads`): numpy's sort,
# searches, bincount and ufuncs and scipy's labelling release the GIL, so parts run on all cores.
_PARALLEL_MIN_PIXELS = 1 << 20
_MAX_THREADS = 8
_LIST_STATES = {"pixel_keys": torch.int64, "positive_keys": torch.int64, "image_scores": torch.float64,
                "image_labels": torch.int64}


class AnomalyMetrics(Metric):
    """Image- and pixel-level anomaly metrics of one category; see `benchmark.metrics`.

    `update(maps, masks)`: maps float BxHxW (or HxW, Bx1xHxW) probabilities in [0, 1]; masks
    bool or 0/1 of the same shape. Images of different sizes may go in different batches.
    `compute()` returns the result dict of plain floats; `resolved_mode` then says whether the
    pixel curves were exact or binned.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, options: MetricOptions | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.options = options if options is not None else MetricOptions()
        if not isinstance(self.options, MetricOptions):
            raise BenchError(f"AnomalyMetrics expects MetricOptions, got {type(self.options).__name__}")
        bins = self.options.bins
        for name in _LIST_STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.add_state("hist_normal", torch.zeros(bins, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("hist_anomalous", torch.zeros(bins, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("hist_region_weight", torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("confusion", torch.zeros(4, dtype=torch.int64), dist_reduce_fx="sum")
        grid = curves.F1_GRID.size
        self.add_state("grid_predicted", torch.zeros(grid, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("grid_hits", torch.zeros(grid, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("n_regions", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("n_pixels", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("best_iou_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("best_iou_count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.resolved_mode: str | None = None
        self._segment: np.ndarray | None = None  # memory behind pixel_keys (exact mode, CPU), see _key_buffer
        self._segment_used = 0

    # ------------------------------------------------------------------ update

    def update(self, maps, masks, probabilities=None) -> None:  # type: ignore[override]
        """`probabilities`: with `pixel_score="logit"` and a numeric `iou_threshold`, the softmax
        maps that the threshold applies to (IoU, F1, mIoU, Acc); the maps themselves are logits."""
        opts = self.options
        logit = opts.pixel_score == "logit"
        scores, gt, image_max, lowest = _check_inputs(maps, masks, logit)
        if scores.shape[0] == 0:
            return
        thresholded = scores
        if logit and opts.iou_threshold != "f1":
            if probabilities is None:
                raise BenchError("pixel_score='logit' with a numeric iou_threshold: pass the anomaly "
                                 "probabilities too, update(logits, masks, probabilities=...), or use iou_threshold='f1'")
            thresholded = _check_inputs(probabilities, masks)[0]
        self.n_pixels += scores.size
        binned = self._local_binned()
        if binned and self.pixel_keys:  # auto mode just crossed the size limit: fold the exact state
            for keys in self.pixel_keys:
                self._fold_keys(keys.cpu().numpy())
            self.pixel_keys, self.positive_keys = [], []
            self._segment, self._segment_used = None, 0

        # the images in consecutive slices, one per thread: labels, then each image's best IoU
        # (LFD/SeaS; exact in every mode, its state a running sum) and either its keys (exact) or
        # its histogram (binned: with large images each image's own, which also gives its best IoU)
        image_pixels = scores[0].size
        per_image = binned and _histogram_per_image(image_pixels, opts.bins)
        keys = None if binned else self._key_buffer(scores.size)
        if keys is None and not binned:
            keys = np.empty(scores.size, np.int64)

        def images(r0: int, r1: int):
            part = anomalous_pixels(gt[r0:r1])
            flat = scores[r0:r1].reshape(r1 - r0, -1)
            is_anomalous = part.image_start[1:] > part.image_start[:-1]
            total = None
            if per_image:
                total, ious = np.zeros(opts.bins + 1, np.int64), []
                for row in range(r1 - r0):
                    histogram = _histogram(flat[row], opts.bins)
                    total += histogram
                    if is_anomalous[row]:
                        ious.append(curves.best_iou_from_histogram(flat[row], _positive_of(part, row, image_pixels),
                                                                    histogram))
            else:
                ious = [curves.best_iou_of_image(flat[row], _positive_of(part, row, image_pixels))
                        for row in np.flatnonzero(is_anomalous)]
                if binned:
                    total = _histogram(flat.ravel(), opts.bins)
                else:
                    curves.pack_sparse_keys(scores[r0:r1], part.index, part.area, positive=lowest > 0,
                                            out=keys[r0 * image_pixels : r1 * image_pixels])
            return part, total, ious

        done = _in_threads([partial(images, r0, r1) for r0, r1 in _image_slices(scores.shape[0], scores.size)])
        pixels = AnomalousPixels.of_parts([part for part, _, _ in done], image_pixels)
        anomalous = pixels.image_start[1:] > pixels.image_start[:-1]
        iou_sum = 0.0
        for _, _, ious in done:
            for iou in ious:  # in image order, as one thread would add them
                iou_sum += iou
        confusion = None
        if binned:
            total = sum(part_total for _, part_total, _ in done)
            anomalous_bins = _bin_index(scores.ravel()[pixels.index], np.float32(opts.bins))
            self._add_to_histograms(*_split_histogram(total, anomalous_bins, pixels.area))
            edge = _threshold_bin(opts.iou_threshold, opts.bins)
            if edge is not None:  # the histogram already counted what the threshold predicts
                confusion = confusion_from_counts(int(total[edge:].sum()), scores.ravel()[pixels.index],
                                                  scores.size, opts.iou_threshold)
        else:
            self.pixel_keys.append(self._state(keys))
            self.positive_keys.append(self._state(keys[pixels.index]))

        self.image_scores.append(self._state(image_max.astype(np.float64) if opts.image_score == "max" else
                                             image_scores(scores, opts.image_score, opts.pool_kernel)))
        self.image_labels.append(self._state(anomalous.astype(np.int64)))
        if opts.iou_threshold != "f1" and (binned or logit):  # exact state: counted from the sort at compute
            if confusion is None:
                confusion = confusion_at_threshold(thresholded, pixels.index, opts.iou_threshold)
            self.confusion += self._state(confusion)
        if opts.pixel_f1_max == "grid-21":
            predicted, hits = curves.grid_counts(scores, gt)
            self.grid_predicted += self._state(predicted)
            self.grid_hits += self._state(hits)
        self.n_regions += pixels.n_regions
        self.best_iou_sum += iou_sum
        self.best_iou_count += int(anomalous.sum())

    def _state(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def _key_buffer(self, size: int) -> np.ndarray | None:
        """Where the next `size` keys of the exact state go: the next slice of the current segment,
        so that consecutive updates' keys are adjacent in memory (`_contiguous_keys`); a new
        segment of `_SEGMENT_KEYS` (or `size`) keys when it is full. None (new memory of its own)
        off the CPU, or if the address space cannot be reserved."""
        if self.device.type != "cpu":
            return None
        if self._segment is None or self._segment_used + size > self._segment.size:
            try:
                self._segment, self._segment_used = _reserve_keys(max(size, _SEGMENT_KEYS)), 0
            except (MemoryError, OSError):  # address space refused (strict overcommit)
                return None
        self._segment_used += size
        return self._segment[self._segment_used - size : self._segment_used]

    def _contiguous_keys(self, chunks: list) -> np.ndarray | None:
        """Every key of the exact state as one int64 array in the state's own memory: the only
        chunk, or consecutive chunks of the current segment (one view over them). None otherwise
        (several segments, copies): compute then sorts a 4 B/pixel copy of the high words."""
        if len(chunks) == 1:
            return chunks[0] if chunks[0].flags.c_contiguous and chunks[0].flags.writeable else None
        segment = self._segment
        if segment is None or not chunks:
            return None
        address = start = chunks[0].ctypes.data
        for keys in chunks:
            if keys.ctypes.data != address or keys.dtype != np.int64 or not keys.flags.c_contiguous:
                return None
            address += keys.nbytes
        offset = start - segment.ctypes.data
        if offset < 0 or address > segment.ctypes.data + segment.nbytes:
            return None
        return segment[offset // 8 : (address - segment.ctypes.data) // 8]

    def reset(self) -> None:
        super().reset()
        self._segment, self._segment_used = None, 0

    def __getstate__(self) -> dict:
        # a copy (clone, pickle) gets its state's own tensors; the reserved segment stays here
        return {**super().__getstate__(), "_segment": None, "_segment_used": 0}

    def _local_binned(self) -> bool:
        mode = self.options.mode
        return mode == "binned" or (mode == "auto" and not self.options.needs_exact_state
                                    and int(self.n_pixels) > self.options.exact_max_pixels)

    def _counts_confusion_at_compute(self) -> bool:
        """With probability maps, the exact state's pixels are counted at the fixed threshold by
        `compute` from its sorted scores (no pass at update); logits are thresholded on other maps."""
        return self.options.iou_threshold != "f1" and self.options.pixel_score != "logit"

    def _fold_keys(self, keys: np.ndarray) -> None:
        """Exact-state keys into the histograms (and the confusion counts the sort would have given)."""
        self._add_to_histograms(*_histograms_of_keys(keys, self.options.bins))
        if self._counts_confusion_at_compute():
            scores, areas = curves.unpack_keys(keys)
            self.confusion += self._state(confusion_at_threshold(scores, np.flatnonzero(areas), self.options.iou_threshold))

    def _add_to_histograms(self, normal: np.ndarray, anomalous: np.ndarray, weight: np.ndarray) -> None:
        for state, counts in ((self.hist_normal, normal), (self.hist_anomalous, anomalous),
                              (self.hist_region_weight, weight)):
            if state.device.type == "cpu":  # numpy, in the tensor's memory: torch splits a 2^16-bin add
                np.add(state.numpy(), counts, out=state.numpy())  # over its threads, which then spin
            else:
                state += self._state(counts)

    # ------------------------------------------------------------------ compute

    def compute(self) -> dict:  # type: ignore[override]
        opts = self.options
        chunks = [keys.cpu().numpy() for keys in _as_list(self.pixel_keys)]
        n_pixels = int(self.n_pixels)
        binned = opts.mode == "binned" or (opts.mode == "auto" and not opts.needs_exact_state
                                           and n_pixels > opts.exact_max_pixels)
        self.resolved_mode = "binned" if binned else "exact"
        confusion = self.confusion.cpu().numpy().copy()
        if binned:
            normal, anomalous, weight = (self.hist_normal.cpu().numpy(), self.hist_anomalous.cpu().numpy(),
                                         self.hist_region_weight.cpu().numpy())
            for keys in chunks:  # a rank below the size limit kept its exact state
                more = _histograms_of_keys(keys, opts.bins)
                normal, anomalous, weight = normal + more[0], anomalous + more[1], weight + more[2]
                if self._counts_confusion_at_compute():
                    scores, areas = curves.unpack_keys(keys)
                    confusion += confusion_at_threshold(scores, np.flatnonzero(areas), opts.iou_threshold)
            pixel_curve = curves.curve_from_histograms(normal, anomalous, weight)
        else:
            positive_keys = _cat(self.positive_keys, np.int64)
            positive_keys.sort()
            first, threshold_bits = curves.positive_groups(positive_keys)
            n = sum(keys.size for keys in chunks)
            region = self._contiguous_keys(chunks)
            # the one sort over every pixel, of int32 high words (4 B/pixel): in the state's own
            # memory when it is one array (then restored, sorted), else in a new buffer. Large
            # states are sorted in one slice per thread: the curves only count the pixels below
            # each threshold, which the slices' counts add up to, so they are never merged.
            high = curves.compact_high_words(region) if region is not None else curves.high_words_of_chunks(chunks, n)
            slices = _slices(n, _threads() if n >= _PARALLEL_MIN_PIXELS else 1)
            parts = [high[a:b] for a, b in slices]
            searched = None
            try:
                searched = _in_threads([partial(_sort_and_search, part, threshold_bits) for part in parts])
                start, stop = (np.sum([found[i].astype(np.int64) for found in searched], axis=0) for i in (0, 1))
                if self._counts_confusion_at_compute():
                    confusion += curves.confusion_in_sorted(parts, positive_keys, opts.iou_threshold)
            finally:
                if region is not None:
                    curves.restore_sorted_keys(region, high, positive_keys, first, threshold_bits,
                                               None if searched is None else [found[1] for found in searched],
                                               bounds=[0] + [b for _, b in slices],
                                               start=None if searched is None else [found[0] for found in searched])
            del high  # a new buffer: freed before the curves' arrays of the anomalous pixels
            pixel_curve = curves.curve_from_sorted_parts(n, start, stop, first, threshold_bits, positive_keys)
        if opts.pro_curve == "quantile-100":  # exact state only (MetricOptions refuses binned)
            normal = curves.normal_scores(chunks)
            normal.sort()
            pro = curves.quantile_pro_auc(normal, positive_keys, int(self.n_regions), opts.max_fpr)
            del normal
        else:
            pro = curves.pro_auc(pixel_curve, int(self.n_regions), opts.max_fpr)
        del chunks

        f1, f1_threshold, f1_index = curves.f1_max(pixel_curve)
        if opts.pixel_f1_max == "grid-21":
            reported_f1_max = curves.grid_f1_max(self.grid_predicted.cpu().numpy(), self.grid_hits.cpu().numpy(),
                                                 pixel_curve.n_pos)
        else:
            reported_f1_max = f1
        if opts.iou_threshold == "f1":
            threshold = f1_threshold
            tp, fp, fn, tn = curves.confusion_at(pixel_curve, f1_index) if f1_index >= 0 else (0, 0, 0, 0)
        else:
            threshold = opts.iou_threshold
            tp, fp, fn, tn = (int(v) for v in confusion)
        seg = segmentation_scores(tp, fp, fn, tn)
        if math.isnan(threshold):
            seg = dict.fromkeys(seg, float("nan"))

        img_scores = _cat(self.image_scores, np.float64)
        img_curve = curves.curve_from_scores(img_scores, _cat(self.image_labels, np.int64) > 0)
        n_best = int(self.best_iou_count)
        return {
            "image": {
                "auroc": curves.roc_auc(img_curve),
                "ap": curves.average_precision(img_curve),
                "f1_max": curves.f1_max(img_curve)[0],
            },
            "pixel": {
                "auroc": curves.roc_auc(pixel_curve),
                "ap": curves.average_precision(pixel_curve),
                "f1_max": reported_f1_max,
                "pro": pro,
                "iou": seg["iou"],
                "iou_best_per_image": float(self.best_iou_sum) / n_best if n_best else float("nan"),
                "f1": seg["f1"],
            },
            "miou": seg["miou"],
            "acc": seg["acc"],
            "acc_anomaly": seg["acc_anomaly"],
            "threshold": float(threshold),
        }

    def _sync_dist(self, *args, **kwargs) -> None:
        # torchmetrics fills an empty list state with a float32 tensor on a rank that saw no data,
        # which all_gather cannot mix with the int64/float64 of the other ranks.
        for name, dtype in _LIST_STATES.items():
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                setattr(self, name, [torch.zeros(0, dtype=dtype, device=self.device)])
        super()._sync_dist(*args, **kwargs)


def evaluate(maps_iterable: Iterable, masks_iterable: Iterable, opts: MetricOptions | None = None) -> dict:
    """Functional twin of `AnomalyMetrics`: one `update` per (maps, masks) pair, then `compute`."""
    metric = AnomalyMetrics(opts)
    maps_it, masks_it = iter(maps_iterable), iter(masks_iterable)
    sentinel = object()
    for i, maps in enumerate(maps_it):
        masks = next(masks_it, sentinel)
        if masks is sentinel:
            raise BenchError(f"evaluate: {i + 1} map batches but only {i} mask batches")
        metric.update(maps, masks)
    if next(masks_it, sentinel) is not sentinel:
        raise BenchError("evaluate: more mask batches than map batches")
    return metric.compute()


# ---------------------------------------------------------------------------- helpers


def _threads() -> int:
    """Threads for the engine's large passes: torch's intra-op count (OMP_NUM_THREADS, or
    torch.set_num_threads), at most the cores this process may use and `_MAX_THREADS`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), cores, _MAX_THREADS))


_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, threads, pool): a forked child makes its own


def _in_threads(tasks: list[Callable[[], object]]) -> list:
    """The tasks' results, in order; run on the engine's thread pool when there are several (the
    work inside releases the GIL), here otherwise. concurrent.futures is the whole machinery."""
    if len(tasks) == 1:
        return [tasks[0]()]
    global _pool
    threads = _threads()
    if _pool is None or _pool[:2] != (os.getpid(), threads):
        _pool = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix="sias-metrics"))
    return [future.result() for future in [_pool[2].submit(task) for task in tasks]]


def _slices(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) of `parts` consecutive slices of n items, as equal as they can be."""
    bounds = [n * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _image_slices(n_images: int, n_pixels: int) -> list[tuple[int, int]]:
    """One slice of a batch's images per thread, one slice for small batches."""
    return _slices(n_images, min(n_images, _threads()) if n_pixels >= _PARALLEL_MIN_PIXELS else 1)


def _sort_and_search(high: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort a slice of the high words in place; (start, stop) of every threshold in it."""
    high.sort()
    return curves.positions_in_sorted(high, thresholds)


def _positive_of(pixels: AnomalousPixels, row: int, image_pixels: int) -> np.ndarray:
    """Indices of image `row`'s anomalous pixels in its flattened scores."""
    return pixels.index[pixels.image_start[row] : pixels.image_start[row + 1]] - row * image_pixels


def _reserve_keys(n: int) -> np.ndarray:
    """An int64 segment of n keys in an anonymous mapping (its pages backed only as they are
    written), in 4 KiB pages: numpy asks for transparent huge pages on large arrays, and on this
    project's VM (which hands freed 2 MiB blocks back to its host) writing the state in huge pages
    took 0.50-0.57 s of system time per 252 MB against 0.08-0.12 s in 4 KiB pages
    (docs/metrics.md). A hint only: where the platform has no MADV_NOHUGEPAGE it is left out."""
    segment = mmap.mmap(-1, n * 8)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        segment.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(segment, np.int64)


def _cat(state, dtype) -> np.ndarray:
    """A list state as one numpy array (the state's own memory when it is one tensor on the CPU).
    numpy concatenates: torch.cat spreads a copy over its threads, which then spin and burn CPU."""
    if isinstance(state, list):
        if not state:
            return np.zeros(0, dtype=dtype)
        if len(state) > 1:
            return np.concatenate([t.cpu().numpy() for t in state])
        state = state[0]
    return state.cpu().numpy()


def _as_list(state) -> list:
    """A list state as a list of tensors: torchmetrics leaves one concatenated tensor after a sync."""
    return state if isinstance(state, list) else [state]


def _bin_index(scores: np.ndarray, scale: np.float32) -> np.ndarray:
    """Bin of each float32 score in [0, 1]: int(score * bins), float32 product (exact for a power-of-two
    number of bins), intp as np.bincount wants it. A score of 1 lands in an extra last bin."""
    return (scores * scale).astype(np.intp)


def _histogram(scores: np.ndarray, bins: int) -> np.ndarray:
    """Every pixel's count per bin, the scores equal to 1 in an extra last bin: one pass over the
    float32 scores."""
    scale = np.float32(bins)
    if scores.size <= _HISTOGRAM_CHUNK:  # one chunk (an image of up to 1024^2): no total to add to
        return np.bincount(_bin_index(scores, scale), minlength=bins + 1).astype(np.int64, copy=False)
    total = np.zeros(bins + 1, np.int64)
    for start in range(0, scores.size, _HISTOGRAM_CHUNK):  # temporaries stay in cache-sized chunks
        total += np.bincount(_bin_index(scores[start : start + _HISTOGRAM_CHUNK], scale), minlength=bins + 1)
    return total


def _histogram_per_image(image_pixels: int, bins: int) -> bool:
    """Binned mode counts each image apart (and takes its best IoU from that histogram) when the
    bins are a power of two (`curves.best_iou_from_histogram`) and the image has at least 4
    pixels per bin, so that clearing and adding its histogram costs little beside its pass."""
    return bins & (bins - 1) == 0 and image_pixels >= 4 * bins


def _split_histogram(total: np.ndarray, anomalous_index: np.ndarray, area: np.ndarray):
    """(normal, anomalous, 1/area weight) per bin from every pixel's counts and the anomalous
    pixels' bins; the extra bin of the scores equal to 1 joins the last bin [1 - 1/bins, 1]."""
    bins = total.size - 1
    anomalous_count = np.bincount(anomalous_index, minlength=bins + 1)
    weight = np.bincount(anomalous_index, weights=1.0 / area, minlength=bins + 1)
    normal = total - anomalous_count
    fold = [normal, anomalous_count, weight]
    for h in fold:
        h[bins - 1] += h[bins]
    return tuple(h[:bins] for h in fold)


def _threshold_bin(threshold, bins: int) -> int | None:
    """k such that `score >= threshold` (float32, as `confusion_at_threshold` compares) is exactly
    `bin >= k`: with a power-of-two number of bins, score * bins is exact, so this holds for any
    threshold on a bin edge (0.5 is one). None otherwise."""
    if threshold == "f1" or bins & (bins - 1):
        return None
    edge = float(np.float32(threshold)) * bins
    return int(edge) if edge == int(edge) else None


def _histograms_of_keys(keys: np.ndarray, bins: int):
    """(normal, anomalous, 1/area weight) per bin of packed keys (the exact state that auto mode folds)."""
    scores, areas = curves.unpack_keys(keys)
    positive = np.flatnonzero(areas)
    return _split_histogram(_histogram(scores, bins), _bin_index(scores[positive], np.float32(bins)),
                            areas[positive].astype(np.float64))


def _to_numpy(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001 - anything not array-like
        raise BenchError(f"{what} must be a tensor or array, got {type(x).__name__}") from e


def _as_batch(a: np.ndarray, what: str) -> np.ndarray:
    if a.ndim == 2:
        return a[None]
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    if a.ndim != 3:
        raise BenchError(f"{what} must be BxHxW (or HxW, Bx1xHxW), got shape {tuple(a.shape)}")
    return a


def _check_inputs(maps, masks, logit: bool = False):
    """-> (float32 BxHxW scores in [0, 1], or any finite numbers with `logit`; bool BxHxW masks;
    each image's highest score; the lowest score), or BenchError."""
    m = _as_batch(_to_numpy(maps, "anomaly maps"), "anomaly maps")
    g = _as_batch(_to_numpy(masks, "masks"), "masks")
    if m.shape != g.shape:
        raise BenchError(f"anomaly maps {tuple(m.shape)} and masks {tuple(g.shape)} differ in shape")
    if not np.issubdtype(m.dtype, np.floating):
        raise BenchError(
            f"anomaly maps must be float probabilities in [0, 1], got dtype {m.dtype}"
            " (8-bit maps: divide by 255)"
        )
    m = m.astype(np.float32, copy=False)
    image_max = m.reshape(m.shape[0], -1).max(axis=1) if m.size else np.zeros(m.shape[0], np.float32)
    lo = float("nan")
    if m.size:
        lo, hi = float(m.min()), float(image_max.max())
        if math.isnan(lo) or math.isnan(hi):  # min and max propagate NaN: no pass of its own
            raise BenchError(f"anomaly maps contain {int(np.count_nonzero(np.isnan(m)))} NaN value(s)")
        if logit and not (math.isfinite(lo) and math.isfinite(hi)):
            raise BenchError(f"anomaly logits must be finite, got values in [{lo:.6g}, {hi:.6g}]")
        if not logit and (lo < 0.0 or hi > 1.0):
            raise BenchError(
                f"anomaly maps must be probabilities in [0, 1], got values in [{lo:.6g}, {hi:.6g}];"
                " apply the softmax/sigmoid in the segmenter (the metric engine never applies one)"
            )
    if g.dtype != np.bool_:
        if g.size and not np.all((g == 0) | (g == 1)):
            bad = np.unique(g[(g != 0) & (g != 1)])[:5]
            raise BenchError(f"masks must be binary (bool or 0/1), found values such as {bad.tolist()}")
        g = g.astype(bool)
    return m, g, image_max, lo
