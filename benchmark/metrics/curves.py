"""Threshold curves from one sort: ROC, precision-recall and PRO share the same operating points.

Convention everywhere: a sample is predicted positive iff its score >= the threshold, and every
distinct score is a threshold (scikit-learn's `_binary_clf_curve`; MVTec AD's `compute_pro`).

A `Curve` keeps only the thresholds at which some positive sample sits ("positive groups"), in
decreasing order, and for each one the counts strictly above it and at-or-above it. That is enough
to rebuild every curve exactly: between two positive groups only negatives enter, so ROC and PRO
move horizontally there (recall and overlap do not change), and within a group of tied scores
they move along one straight segment. With P positive samples the curve has at most P groups, so
after the sort everything is O(P), whatever the number of negatives.

Pixel scores are packed with their payload into sortable int64 keys
(`score float32 bits << 32 | payload`): non-negative scores' IEEE bit patterns sort like the
numbers (negative raw logits get all but their sign bit flipped, which keeps the order). The
payload is 0 for a negative pixel and the area of its ground-truth region for a positive one,
which gives PRO its per-pixel weight 1/area without any region ids. At compute the keys' high
words (int32, they sort like the scores) are sorted alone, half the bytes of the keys, moved
into the first half of the keys' own memory and the keys restored afterwards
(`compact_high_words`, `restore_sorted_keys`); an argsort shared by the curves measured 8x
slower than `np.sort` (docs/metrics.md). The few positive keys are sorted apart.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from benchmark.metrics.confusion import confusion_from_counts

_LITTLE_ENDIAN = sys.byteorder == "little"


@dataclass(frozen=True)
class Curve:
    """Operating points at the thresholds of positive groups, highest threshold first.

    `at_*` count samples with score >= threshold, `above_*` samples with score > threshold
    (for a histogram: the bins above). `*_n` all samples, `*_pos` positives, `*_w` the summed
    positive weights (PRO: 1/region area). `n_pos`, `n_neg`: totals.
    """

    threshold: np.ndarray
    at_n: np.ndarray
    at_pos: np.ndarray
    at_w: np.ndarray
    above_n: np.ndarray
    above_pos: np.ndarray
    above_w: np.ndarray
    n_pos: int
    n_neg: int

    @classmethod
    def without_positives(cls, n_neg: int) -> "Curve":
        empty = np.zeros(0)
        return cls(empty, empty, empty, empty, empty, empty, empty, 0, int(n_neg))


# ----------------------------------------------------------------------------- packing


def _order_bits(bits: np.ndarray) -> np.ndarray:
    """int32 IEEE bit patterns <-> int32 that sort like the floats (its own inverse): non-negative
    floats keep their bits, negative ones (raw logits) flip all but the sign bit."""
    if bits.size and int(bits.min()) < 0:
        return np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits)
    return bits


def pack_keys(scores: np.ndarray, payload: np.ndarray) -> np.ndarray:
    """int64 keys `order(score) << 32 | payload` that sort like (score, payload); scores finite
    float32 (probabilities, or raw logits of either sign), payload uint32 < 2**31."""
    payload = np.ascontiguousarray(payload).ravel()
    index = np.flatnonzero(payload)
    return pack_sparse_keys(scores, index, payload[index])


def pack_sparse_keys(scores: np.ndarray, index: np.ndarray, payload: np.ndarray, positive: bool = False,
                     out: np.ndarray | None = None) -> np.ndarray:
    """`pack_keys` with the payload given where it is non-zero: at `index` of the flattened scores.
    `positive`: the caller knows every score is > 0, which saves the pass looking for sign bits.
    `out`: int64 array of scores.size to write the keys into (returned)."""
    scores = np.ascontiguousarray(scores, dtype=np.float32).ravel()
    bits = scores.view(np.int32)
    if not positive and bits.size and int(bits.min()) < 0:  # negative logits or -0.0 (-> +0.0: one key for one number)
        bits = _order_bits((scores + np.float32(0.0)).view(np.int32))
    keys = np.left_shift(bits, 32, dtype=np.int64, out=out)  # one pass, whatever the byte order
    keys[index] |= payload.astype(np.int64)
    return keys


def scores_of_high_words(high: np.ndarray) -> np.ndarray:
    """float32 scores back from the high words (int32 or int64 `key >> 32`) of packed keys."""
    return _order_bits(np.asarray(high).astype(np.int32)).view(np.float32)


def unpack_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32, payload uint32) views/copies of packed keys."""
    if not _LITTLE_ENDIAN:  # pragma: no cover
        return (scores_of_high_words(keys >> 32), (keys & 0xFFFFFFFF).astype(np.uint32))
    words = keys.view(np.uint32).reshape(-1, 2)
    high = words[:, 1].view(np.int32)
    if high.size and int(high.min()) < 0:
        return scores_of_high_words(high), words[:, 0]
    return words[:, 1].view(np.float32), words[:, 0]


# ----------------------------------------------------------------------------- building curves


def high_words(keys: np.ndarray) -> np.ndarray:
    """The high words of int64 packed keys (`order(score)`, see `pack_keys`), a strided int32 view:
    they sort like the scores, and equal scores have equal words."""
    return keys.view(np.int32)[1::2] if _LITTLE_ENDIAN else keys.view(np.int32)[0::2]


def high_words_of_chunks(chunks, n_keys: int) -> np.ndarray:
    """The high words of every key of packed-key chunks, in one new int32 buffer of 4 bytes per
    key (next to the chunks' 8), without concatenating the chunks."""
    words = np.empty(n_keys, dtype=np.int32)
    filled = 0
    for keys in chunks:
        words[filled : filled + keys.size] = high_words(keys)
        filled += keys.size
    return words


_BLOCK = 1 << 20  # keys moved per step by compact_high_words / expand_high_words


def compact_high_words(keys: np.ndarray) -> np.ndarray:
    """Move the high words of contiguous int64 keys into the first half of the keys' own memory
    and return that int32 view (4 bytes per key, no new memory). The keys are garbage until
    `restore_sorted_keys`. Word i comes from word 2i + h of the int32 view (h: the high word's
    place), so copying blocks [i0, i1) with i1 <= 2 * i0 + h front to back never reads a word
    that was already overwritten (the block's source starts at 2 * i0 + h)."""
    words, n = keys.view(np.int32), keys.size
    h = 1 if _LITTLE_ENDIAN else 0
    i0 = 0
    while i0 < n:
        i1 = max(i0 + 1, min(n, 2 * i0 + h, i0 + _BLOCK))
        words[i0:i1] = words[2 * i0 + h : 2 * i1 : 2]
        i0 = i1
    return words[:n]


def restore_sorted_keys(keys: np.ndarray, high: np.ndarray, positive_keys: np.ndarray, first: np.ndarray,
                        threshold_bits: np.ndarray, stop, bounds=None, start=None) -> None:
    """Undo `compact_high_words` after `high` (its view) was sorted: the keys become the original
    keys in ascending order, a permutation of the state, which no metric depends on. Each key is
    rebuilt as `high << 32` (back to front, blocks [i0, i1) with 2 * i0 >= i1, so a block's
    8-byte keys land on words already read), then the anomalous keys (`positive_keys`, sorted,
    grouped by `positive_groups` as `first` / `threshold_bits`) take the last slots of their
    score's run [start, stop): with equal scores, payload 0 sorts first. `stop`: from
    `positions_in_sorted`, or None (an error came before it): sort and search again.

    `bounds` [0, ..., n]: `high` was sorted in parts [bounds[i], bounds[i + 1]) (by several
    threads); `start` / `stop` are then lists of each part's positions, and the keys end as one
    ascending run per part, each score's anomalous keys filling its runs part after part."""
    n = keys.size
    bounds = [0, n] if bounds is None else list(bounds)
    if stop is None:
        start, stop = [], []
        for a, b in zip(bounds[:-1], bounds[1:]):
            high[a:b].sort()
            start.append(np.searchsorted(high[a:b], threshold_bits, side="left"))
            stop.append(np.searchsorted(high[a:b], threshold_bits, side="right"))
    elif isinstance(stop, np.ndarray):  # one sorted array
        start, stop = [start], [stop]
    i1 = n
    while i1 > 0:
        i0 = min(i1 - 1, max((i1 + 1) // 2, i1 - _BLOCK))
        np.left_shift(high[i0:i1], 32, dtype=np.int64, out=keys[i0:i1])
        i1 = i0
    if positive_keys.size:
        remaining = np.diff(np.append(first, positive_keys.size))  # each score's anomalous keys
        placed = np.zeros_like(remaining)
        for offset, part_start, part_stop in zip(bounds[:-1], start, stop):
            part_stop = part_stop.astype(np.int64)
            # one part holds them all (its run [start, stop) has every key of the score)
            here = remaining if part_start is None else np.minimum(remaining, part_stop - part_start)
            keys[_ranges(offset + part_stop - here, here)] = positive_keys[_ranges(first + placed, here)]
            placed += here
            remaining = remaining - here


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices start, start + 1, ..., start + length - 1 of every (start, length), one array."""
    lengths = lengths.astype(np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(starts.astype(np.int64) - ends + lengths, lengths) + np.arange(int(ends[-1]) if ends.size else 0)


def normal_scores(chunks) -> np.ndarray:
    """float32 scores of the normal pixels (payload 0) of packed-key chunks, unsorted."""
    parts = [scores[payload == 0] for scores, payload in map(unpack_keys, chunks)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def positive_groups(positive_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, threshold_bits) of the sorted anomalous pixels' keys: the index of each distinct
    score's first key and its high word (int32, sorts like the score; `scores_of_high_words`)."""
    if positive_keys.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    pos_bits = high_words(positive_keys)
    first = np.flatnonzero(np.concatenate(([True], pos_bits[1:] != pos_bits[:-1])))
    return first, pos_bits[first]


_SEARCH_CHUNK = 1 << 16  # thresholds per binary search: its int64 output stays small


def positions_in_sorted(scores: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, stop): every sample scoring a threshold lies in sorted positions [start, stop),
    `scores` and `thresholds` sorted ascending (a threshold absent from `scores`, as from one part
    of them, gets start = stop). One binary search per threshold: stop = start + 1 unless the next
    sorted score is the same (only those get a second search). Positions are kept in int32 below
    2^31 pixels (they live next to the 4 B/pixel scores)."""
    n = scores.size
    start = np.empty(thresholds.size, np.int32 if n < 2**31 else np.int64)
    for lo in range(0, thresholds.size, _SEARCH_CHUNK):
        start[lo : lo + _SEARCH_CHUNK] = np.searchsorted(scores, thresholds[lo : lo + _SEARCH_CHUNK], side="left")
    if n == 0:
        return start, start.copy()
    present = (start < n) & (scores[np.minimum(start, n - 1)] == thresholds)
    stop = start + present
    tied = np.flatnonzero(present & (stop < n) & (scores[np.minimum(stop, n - 1)] == thresholds))
    stop[tied] = np.searchsorted(scores, thresholds[tied], side="right")
    return start, stop


def confusion_in_sorted(high, positive_keys: np.ndarray, threshold: float) -> np.ndarray:
    """`confusion.confusion_at_threshold` of every pixel's sorted high words (`high_words`; one
    sorted array, or a list of sorted parts) and the anomalous pixels' keys: a binary search per
    part instead of a pass."""
    parts = [high] if isinstance(high, np.ndarray) else list(high)
    n = sum(part.size for part in parts)
    below = sum(_count_below(part, threshold) for part in parts)
    return confusion_from_counts(n - below, unpack_keys(positive_keys)[0], n, threshold)


def _count_below(high: np.ndarray, threshold: float) -> int:
    """Sorted high words whose score is < threshold. The comparison is `score >= threshold` as in
    `confusion_at_threshold` (numpy compares a float32 array with a Python float in float32),
    searched as the float32 threshold's high word; the search checks that its neighbours' scores
    agree and counts by a pass if they do not."""
    n = high.size
    target = high_words(pack_keys(np.float32([threshold]), np.zeros(1, np.uint32)))
    below = int(np.searchsorted(high, target[0], side="left"))
    neighbours = scores_of_high_words(high[max(below - 1, 0) : below + 1])  # [below - 1], [below]
    if (below < n and not neighbours[-1] >= threshold) or (below > 0 and neighbours[0] >= threshold):
        below = n - int(np.count_nonzero(scores_of_high_words(high) >= threshold))
    return below


def curve_from_sorted_parts(n: int, start: np.ndarray, stop: np.ndarray, first: np.ndarray,
                            threshold_bits: np.ndarray, positive_keys: np.ndarray) -> Curve:
    """Exact curve from `positions_in_sorted` of the `positive_groups` (first, threshold_bits) of
    the sorted anomalous pixels' keys among n sorted high words: one int32 `np.sort` over the
    pixels made it, the keys are few."""
    if positive_keys.size == 0:
        return Curve.without_positives(n)
    weights = 1.0 / (positive_keys & 0xFFFFFFFF).astype(np.float64)
    return _curve_from_groups(n, start.astype(np.int64), stop.astype(np.int64), first, weights,
                              scores_of_high_words(threshold_bits).astype(np.float64))


def curve_from_scores(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None) -> Curve:
    """Exact curve from unsorted float scores (image level: few samples, float64 kept)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    pos_idx = np.flatnonzero(positive[order])
    if pos_idx.size == 0:
        return Curve.without_positives(s.size)
    pos_scores = s[pos_idx]
    first = np.flatnonzero(np.concatenate(([True], pos_scores[1:] != pos_scores[:-1])))
    group_scores = pos_scores[first]
    start = np.searchsorted(s, group_scores, side="left")
    stop = np.searchsorted(s, group_scores, side="right")
    w = np.ones(pos_idx.size) if weights is None else np.asarray(weights, dtype=np.float64).ravel()[order][pos_idx]
    return _curve_from_groups(s.size, start, stop, first, w, group_scores)


def _curve_from_groups(n, start, stop, first, weights, thresholds) -> Curve:
    """Groups in ascending order: positions [start, stop) in the sorted array; `first[g]` = index of
    the group's first positive among the positives (ascending); `weights` per positive."""
    n_pos = weights.size
    pos_below_next = np.concatenate((first[1:], [n_pos]))  # positives with score <= threshold
    cum_w = np.concatenate(([0.0], np.cumsum(weights)))
    total_w = cum_w[-1]
    rev = slice(None, None, -1)  # descending thresholds
    return Curve(
        threshold=thresholds[rev],
        at_n=(n - start)[rev].astype(np.float64),
        at_pos=(n_pos - first)[rev].astype(np.float64),
        at_w=(total_w - cum_w[first])[rev],
        above_n=(n - stop)[rev].astype(np.float64),
        above_pos=(n_pos - pos_below_next)[rev].astype(np.float64),
        above_w=(total_w - cum_w[pos_below_next])[rev],
        n_pos=int(n_pos),
        n_neg=int(n - n_pos),
    )


def curve_from_histograms(negative: np.ndarray, positive: np.ndarray, weight: np.ndarray) -> Curve:
    """Binned curve: bin i holds scores in [i/B, (i+1)/B) (the last bin includes 1) and its
    threshold is its lower edge i/B; ties within a bin are treated as tied scores."""
    negative = np.asarray(negative, dtype=np.float64)
    positive = np.asarray(positive, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    bins = negative.size
    n_pos, n_neg = int(positive.sum()), int(negative.sum())
    nz = np.flatnonzero(positive)
    if nz.size == 0:
        return Curve.without_positives(n_neg)

    def suffix(h):  # suffix[i] = sum of h[i:], suffix[bins] = 0
        return np.concatenate((np.cumsum(h[::-1])[::-1], [0.0]))

    all_n, pos_n, w_n = suffix(negative + positive), suffix(positive), suffix(weight)
    rev = nz[::-1]
    return Curve(
        threshold=rev / bins,
        at_n=all_n[rev],
        at_pos=pos_n[rev],
        at_w=w_n[rev],
        above_n=all_n[rev + 1],
        above_pos=pos_n[rev + 1],
        above_w=w_n[rev + 1],
        n_pos=n_pos,
        n_neg=n_neg,
    )


# ----------------------------------------------------------------------------- metrics


def false_positive_rates(c: Curve) -> np.ndarray:
    """x of the curve polyline: (0, above_0, at_0, above_1, at_1, ..., 1)."""
    x = np.empty(2 * c.threshold.size + 2)
    x[0], x[-1] = 0.0, 1.0
    x[1:-1:2] = (c.above_n - c.above_pos) / c.n_neg
    x[2:-1:2] = (c.at_n - c.at_pos) / c.n_neg
    return np.minimum(x, 1.0)


def _polyline_y(above: np.ndarray, at: np.ndarray, total: float) -> np.ndarray:
    y = np.empty(2 * at.size + 2)
    y[0], y[-1] = 0.0, 1.0
    y[1:-1:2] = above / total
    y[2:-1:2] = at / total
    return np.minimum(y, 1.0)


def area_under(x: np.ndarray, y: np.ndarray, x_max: float | None = None) -> float:
    """Trapezoidal area; with `x_max`, up to x_max with y linearly interpolated there
    (MVTec AD's `trapezoid(x, y, x_max)`). x must be non-decreasing."""
    if x_max is None or x_max >= x[-1]:
        return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))
    ins = int(np.searchsorted(x, x_max, side="right"))  # first x > x_max (bisect_right)
    area = float(np.sum(0.5 * (y[1:ins] + y[: ins - 1]) * np.diff(x[:ins])))
    x0, y0 = x[ins - 1], y[ins - 1]
    if x0 < x_max:
        y_max = y0 + (y[ins] - y0) * (x_max - x0) / (x[ins] - x0)
        area += 0.5 * (y_max + y0) * (x_max - x0)
    return float(area)


def roc_auc(c: Curve) -> float:
    """sklearn `roc_auc_score`: trapezoidal area under the exact ROC (ties = diagonal segments)."""
    if c.n_pos == 0 or c.n_neg == 0:
        return float("nan")
    return area_under(false_positive_rates(c), _polyline_y(c.above_pos, c.at_pos, c.n_pos))


def average_precision(c: Curve) -> float:
    """sklearn `average_precision_score`: sum over thresholds of (R_k - R_{k-1}) * P_k (no
    interpolation); recall only moves at positive groups."""
    if c.n_pos == 0:
        return float("nan")
    return float(np.sum((c.at_pos - c.above_pos) * (c.at_pos / c.at_n)) / c.n_pos)


def f1_max(c: Curve) -> tuple[float, float, int]:
    """(max F1 over all thresholds, its threshold, its index in `c`). F1 = 2TP / (2TP + FP + FN)
    = 2TP / (#predicted + P), never 0/0 when P > 0; F1 only peaks at positive groups. On equal
    F1 the highest threshold wins."""
    if c.n_pos == 0:
        return float("nan"), float("nan"), -1
    f1 = 2.0 * c.at_pos / (c.at_n + c.n_pos)
    i = int(np.argmax(f1))
    return float(f1[i]), float(c.threshold[i]), i


def confusion_at(c: Curve, i: int) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) when predicting `score >= c.threshold[i]`."""
    tp = int(c.at_pos[i])
    fp = int(c.at_n[i]) - tp
    return tp, fp, c.n_pos - tp, c.n_neg - fp


def pro_auc(c: Curve, n_regions: int, max_fpr: float) -> float:
    """Area under the PRO curve (mean per-region overlap vs FPR) for FPR in [0, max_fpr], divided
    by max_fpr. `at_w`/`above_w` hold summed 1/area weights, so weight / n_regions is the mean
    overlap over all regions (MVTec AD's `compute_pro`)."""
    if n_regions == 0 or c.n_neg == 0:
        return float("nan")
    y = _polyline_y(c.above_w, c.at_w, float(n_regions))
    return float(area_under(false_positive_rates(c), y, max_fpr) / max_fpr)


def best_iou(c: Curve) -> float:
    """max over thresholds of TP / (TP + FP + FN) = TP / (#predicted - TP + P)."""
    if c.n_pos == 0:
        return float("nan")
    return float(np.max(c.at_pos / (c.at_n - c.at_pos + c.n_pos)))


_IOU_SAMPLE = 1 << 14  # pixels of an image sampled to guess how many of its highest scores to sort


def best_iou_of_image(scores: np.ndarray, positive: np.ndarray) -> float:
    """`best_iou` of one image (float32 scores, flat; `positive` the anomalous pixels' indices)
    without sorting every pixel, exact whatever the maps.

    IoU = TP / (predicted - TP + P) <= P / predicted, so once the best IoU L among the thresholds
    >= some score c is known exactly, every threshold below c, which predicts at least the S
    pixels >= c, is bounded by P / S; if P / S <= L, L is the answer. Only the S pixels >= c
    are sorted. c comes from a sorted sample of every k-th pixel, chosen so that S should be
    about 1.5 P / L (2 P / L sorted more and measured 10 % slower on the benchmark maps); when
    the check fails, c is lowered (in the end to every pixel)."""
    n_pos, n = positive.size, scores.size
    if n_pos == 0:
        return float("nan")
    pos = np.sort(scores[positive])
    first = np.flatnonzero(np.concatenate(([True], pos[1:] != pos[:-1])))  # one per distinct score
    thresholds, tp = pos[first], n_pos - first
    step = max(n // _IOU_SAMPLE, 1)
    sample = np.sort(scores[::step])
    guessed = (sample.size - np.searchsorted(sample, thresholds, side="left")) * step  # ~ pixels >= each
    wanted = 1.5 * n_pos * float(np.min(np.maximum(guessed - tp + n_pos, n_pos) / tp))  # 1.5 P / (best IoU guess)
    while True:
        rank = sample.size - int(wanted // step) - 1
        if rank <= 0:
            top, kept = np.sort(scores), 0
        else:
            top = np.sort(scores[scores >= sample[rank]])
            kept = int(np.searchsorted(thresholds, sample[rank], side="left"))  # groups below the cut
            if kept == thresholds.size:  # the cut is above every anomalous score: lower it
                wanted = 4 * max(wanted, top.size)
                continue
        predicted = top.size - np.searchsorted(top, thresholds[kept:], side="left")
        iou = tp[kept:] / (predicted - tp[kept:] + n_pos)
        best = int(np.argmax(iou))
        # below the cut every IoU is <= P / top.size <= L = tp / (predicted - tp + P), in integers
        if rank <= 0 or n_pos * int(predicted[best] - tp[kept + best] + n_pos) <= top.size * int(tp[kept + best]):
            return float(iou[best])
        wanted = 4 * max(wanted, top.size)


def best_iou_from_histogram(scores: np.ndarray, positive: np.ndarray, histogram: np.ndarray) -> float:
    """`best_iou` of one image from its own histogram (binned mode): `histogram[k]` counts the
    pixels with int(score * bins) = k, float32 product as `engine._bin_index`, bins a power of
    two (then score >= k / bins is exactly bin >= k), the last entry the scores equal to 1.

    With S[k] the pixels and T[k] the anomalous pixels in bins >= k, every threshold in bin b
    predicts at most S[b] pixels, and at least max(S[b + 1], TP) with TP <= T[b]; the lowest
    anomalous score of the bin has TP = T[b]. That bounds the best IoU within each bin from
    below (T / (S[b] - T + P), reached by that lowest score) and above (T / (max(S[b + 1], T) - T
    + P), IoU growing with TP). L, the best lower bound, is reached, so only bins whose upper
    bound reaches L can hold the best threshold; the thresholds and pixels of the bins between
    the first and last of them are taken (one compare pass) and sorted to count them exactly.
    On the benchmark maps: 2 thresholds and about 10 pixels per image; no sort of the image's
    anomalous scores (numpy's AVX-512 sort made that one slow on this machine)."""
    n_pos = positive.size
    if n_pos == 0:
        return float("nan")
    bins = histogram.size - 1
    pos_scores = scores[positive]
    pos_bin = (pos_scores * np.float32(bins)).astype(np.intp)
    at_or_above, pos_at_or_above = (_counts_at_or_above(h, bins) for h in
                                    (histogram, np.bincount(pos_bin, minlength=bins + 1)))
    occupied = np.flatnonzero(pos_at_or_above[:-1] > pos_at_or_above[1:])  # bins with an anomalous pixel
    tp = pos_at_or_above[occupied]
    lower = float(np.max(tp / (at_or_above[occupied] - tp + n_pos)))
    # relative slack: rounding can only add candidates, never drop the best
    candidates = occupied[tp / (np.maximum(at_or_above[occupied + 1], tp) - tp + n_pos) >= lower * (1 - 1e-9)]
    k_lo, k_hi = int(candidates[0]), int(candidates[-1])
    above = int(at_or_above[k_hi + 1])  # pixels in bins above every candidate, all >= each threshold
    in_bins = scores >= np.float32(k_lo / bins)
    if above:
        in_bins &= scores < np.float32((k_hi + 1) / bins)
    selected = np.sort(scores[in_bins])
    pos = np.sort(pos_scores[(pos_bin >= k_lo) & (pos_bin <= k_hi)])
    first = np.flatnonzero(np.concatenate(([True], pos[1:] != pos[:-1])))  # one per distinct score
    tp = int(pos_at_or_above[k_hi + 1]) + pos.size - first
    predicted = above + selected.size - np.searchsorted(selected, pos[first], side="left")
    return float(np.max(tp / (predicted - tp + n_pos)))


def _counts_at_or_above(histogram: np.ndarray, bins: int) -> np.ndarray:
    """[k]: the count in bins >= k, for k = 0 .. bins + 1, from a forward cumsum (a cumsum of the
    reversed histogram took 3x longer)."""
    out = np.empty(bins + 2, np.int64)
    out[0] = 0
    np.cumsum(histogram, out=out[1:])
    return np.subtract(out[-1], out, out=out)


def quantile_pro_auc(normal_scores: np.ndarray, positive_keys: np.ndarray, n_regions: int, max_fpr: float,
                     n_thresholds: int = 100) -> float:
    """PRO as the MVTec 3D-AD `au_pro_util` (AnomalyDiffusion's and STAGE's code) computes it: the
    thresholds are the normal-pixel scores at `n_thresholds` evenly spaced positions p of their
    ascending order (`np.linspace(0, N - 1, n, dtype=int)`), FPR = 1 - (p + 1) / N, the overlap
    counts region pixels scoring > the threshold, the curve starts at (1, 1), and the area up to
    `max_fpr` (linearly interpolated there) is divided by `max_fpr`. `normal_scores` float32 and
    `positive_keys` packed, both sorted ascending."""
    n_normal = normal_scores.size
    if n_regions == 0 or n_normal == 0:
        return float("nan")
    pos_scores, payload = unpack_keys(positive_keys)
    pos_scores = pos_scores.astype(np.float64)  # ascending, like the keys
    cum_w = np.concatenate(([0.0], np.cumsum(1.0 / payload.astype(np.float64))))
    positions = np.linspace(0, n_normal - 1, num=n_thresholds, dtype=int)
    thresholds = normal_scores[positions].astype(np.float64)
    above = cum_w[-1] - cum_w[np.searchsorted(pos_scores, thresholds, side="right")]
    fpr = np.concatenate(([1.0], 1.0 - (positions + 1) / n_normal))[::-1]
    pro = np.concatenate(([1.0], above / n_regions))[::-1]
    return area_under(fpr, pro, max_fpr) / max_fpr


# AnomalyDiffusion's pixel F1 grid: `np.arange(0, 1 + 1e-3, 0.05)`, a pixel is predicted iff score > t
F1_GRID = np.arange(21) * 0.05


def grid_counts(scores: np.ndarray, masks: np.ndarray, grid: np.ndarray = F1_GRID) -> tuple[np.ndarray, np.ndarray]:
    """(#predicted, #true positives) at each grid threshold, predicting score > threshold."""
    above = np.searchsorted(grid, scores.astype(np.float64).ravel(), side="left")  # thresholds < score
    predicted = np.cumsum(np.bincount(above, minlength=grid.size + 1)[::-1])[::-1][1:]
    hits = np.cumsum(np.bincount(above[masks.ravel()], minlength=grid.size + 1)[::-1])[::-1][1:]
    return predicted.astype(np.int64), hits.astype(np.int64)


def grid_f1_max(predicted: np.ndarray, hits: np.ndarray, n_pos: int) -> float:
    """max over the grid of F1 = 2TP / (#predicted + P); NaN without an anomalous pixel."""
    if n_pos == 0:
        return float("nan")
    return float(np.max(2.0 * hits / (predicted + n_pos)))
