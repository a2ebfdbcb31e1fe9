"""The engine's fast paths (issue 21) against independent computations, and its values pinned.

`best_iou_of_image` prunes thresholds with an IoU bound, `anomalous_pixels` labels bounding-box
crops, the exact curve finds the anomalous scores in one sort of the keys' high words (in the
state's own memory), binned mode takes each image's best IoU from its histogram; each is
checked here against the plain way. `PINNED` holds values that the engine before issue 21 (main at c292c29, packed int64
keys, one sort per anomalous image) printed for these seeded sets; they were recorded from that
code, not derived here, so a change of any value shows up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from benchmark.metrics import AnomalyMetrics, MetricOptions, curves, engine, evaluate
from benchmark.metrics.curves import best_iou_from_histogram, best_iou_of_image, pack_keys
from benchmark.metrics.pro import anomalous_pixels
from test_metric_variants import two_class_logits
from test_metrics import blob_dataset, brute_best_iou  # tests/ is on sys.path (pytest rootdir conftest)


def _flat(result: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in result.items():
        if isinstance(value, dict):
            out.update(_flat(value, prefix + key + "."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("seed, quantize, quality", [(0, None, 1.0), (1, None, 0.2), (2, 16, 0.6), (3, None, 0.0)])
def test_best_iou_of_image_matches_every_threshold(seed, quantize, quality):
    """quality 1: good maps (the bound prunes most pixels); 0: maps unrelated to the mask (no pruning)."""
    rng = np.random.default_rng(seed)
    for _ in range(20):
        mask = ndimage.binary_dilation(rng.random((24, 24)) < 0.02, iterations=int(rng.integers(0, 3)))
        mask[tuple(rng.integers(0, 24, 2))] = True
        score = quality * ndimage.gaussian_filter(mask.astype(float), 1.0) + rng.random((24, 24)) * 0.3
        if quantize:
            score = np.round(score * quantize) / quantize
        score = score.astype(np.float32)
        got = best_iou_of_image(score.ravel(), np.flatnonzero(mask))
        assert got == pytest.approx(brute_best_iou(score, mask), abs=1e-12)


@pytest.mark.parametrize("bins", [4, 16, 256])
@pytest.mark.parametrize("seed, quantize, quality", [(5, None, 1.0), (6, None, 0.2), (7, "edges", 0.6), (8, None, 0.0)])
def test_best_iou_from_histogram_matches_every_threshold(bins, seed, quantize, quality):
    """Few bins put many thresholds and pixels in each bin; "edges" puts every score on a bin edge
    k / bins (and some at 0 and 1), where `score >= k / bins` and the bin index must agree."""
    rng = np.random.default_rng(seed)
    for _ in range(15):
        mask = ndimage.binary_dilation(rng.random((24, 24)) < 0.02, iterations=int(rng.integers(0, 3)))
        mask[tuple(rng.integers(0, 24, 2))] = True
        score = np.clip(quality * ndimage.gaussian_filter(mask.astype(float), 1.0) + rng.random((24, 24)) * 0.4, 0, 1)
        if quantize:
            score = np.round(score * bins) / bins
            score[0, :3] = (0.0, 1.0, 1.0)
        score = score.astype(np.float32).ravel()
        histogram = np.bincount((score * np.float32(bins)).astype(np.intp), minlength=bins + 1)
        got = best_iou_from_histogram(score, np.flatnonzero(mask), histogram)
        assert got == pytest.approx(brute_best_iou(score.reshape(24, 24), mask), abs=1e-12)


def test_binned_best_iou_per_image_histogram_equals_exact(monkeypatch):
    """Images of at least 4 pixels per bin take their best IoU from their own histogram; the value
    is the exact mode's, and the rest of the binned result equals the batch-histogram path."""
    maps, masks = blob_dataset(34, n=8, size=64, quantize=128)
    opts = MetricOptions(mode="binned", bins=1024)
    assert engine._histogram_per_image(64 * 64, 1024) and not engine._histogram_per_image(64 * 64, 1000)
    monkeypatch.setattr(curves, "best_iou_of_image", lambda *a: pytest.fail("sampled path"))
    per_image = evaluate([maps[:5], maps[5:]], [masks[:5], masks[5:]], opts)
    monkeypatch.undo()
    exact = evaluate([maps], [masks], MetricOptions(mode="exact"))
    assert per_image["pixel"]["iou_best_per_image"] == pytest.approx(exact["pixel"]["iou_best_per_image"], abs=1e-12)
    monkeypatch.setattr(engine, "_histogram_per_image", lambda *a: False)
    assert evaluate([maps[:5], maps[5:]], [masks[:5], masks[5:]], opts) == per_image


def test_best_iou_of_image_ranks_negative_logits():
    rng = np.random.default_rng(4)
    score = rng.normal(-5, 3, (20, 20)).astype(np.float32)
    mask = score > -2
    mask[0, 0] = True
    assert best_iou_of_image(score.ravel(), np.flatnonzero(mask)) == pytest.approx(brute_best_iou(score, mask), abs=1e-12)


def test_anomalous_pixels_match_labelling_every_whole_image():
    masks = blob_dataset(5, n=6, size=40)[1]
    masks[1, -1, -1] = masks[1, 0, 0] = True  # regions at the corners: the crop is the whole image
    pixels = anomalous_pixels(masks)
    assert np.array_equal(pixels.index, np.flatnonzero(masks))
    expected_area, n_regions = np.zeros(masks.size, np.int64), 0
    for b, mask in enumerate(masks):
        labels, n = ndimage.label(mask, np.ones((3, 3), int))
        sizes = np.bincount(labels.ravel())
        expected_area[b * mask.size : (b + 1) * mask.size] = np.where(labels > 0, sizes[labels], 0).ravel()
        n_regions += n
    assert np.array_equal(pixels.area, expected_area[pixels.index]) and pixels.n_regions == n_regions
    assert np.array_equal(np.diff(pixels.image_start), masks.reshape(len(masks), -1).sum(axis=1))


def _pinned_cases():
    maps, masks = blob_dataset(21, n=10, size=40)
    q_maps, q_masks = blob_dataset(22, n=10, size=40, quantize=64)
    anomaly, probability, l_masks = two_class_logits(23, n=10, size=40)

    def logit():
        m = AnomalyMetrics(MetricOptions(pixel_score="logit", pro_curve="quantile-100"))
        m.update(anomaly, l_masks, probabilities=probability)
        return m.compute()

    return {
        "exact": lambda: evaluate([maps[:4], maps[4:]], [masks[:4], masks[4:]], MetricOptions(mode="exact")),
        "exact-f1-quantile-grid": lambda: evaluate([maps], [masks], MetricOptions(
            mode="exact", iou_threshold="f1", pro_curve="quantile-100", pixel_f1_max="grid-21",
            image_score="pooled-max", pool_kernel=5)),
        "exact-ties": lambda: evaluate([q_maps], [q_masks], MetricOptions(mode="exact")),
        # 1000 bins, the default when these values were recorded (2^16 since issue 21)
        "binned": lambda: evaluate([maps[:4], maps[4:]], [masks[:4], masks[4:]], MetricOptions(mode="binned", bins=1000)),
        "logit-quantile": logit,
    }


# Printed by the engine at main c292c29 (before issue 21) for `_pinned_cases`; not recomputed here.
PINNED = {
    "exact": {
        "image.auroc": 1.0, "image.ap": 1.0, "image.f1_max": 1.0,
        "pixel.auroc": 0.997593398337255, "pixel.ap": 0.9579537626362628, "pixel.f1_max": 0.9095607235142119,
        "pixel.pro": 0.9770298801310094, "pixel.iou": 0.754054054054054,
        "pixel.iou_best_per_image": 0.8262463805510164, "pixel.f1": 0.8597842835130971,
        "miou": 0.8711340079880424, "acc": 0.9726800477710402, "acc_anomaly": 0.9554794520547946, "threshold": 0.5,
    },
    "exact-f1-quantile-grid": {
        "image.auroc": 1.0, "image.ap": 1.0, "image.f1_max": 1.0,
        "pixel.auroc": 0.997593398337255, "pixel.ap": 0.9579537626362628, "pixel.f1_max": 0.9035621198957429,
        "pixel.pro": 0.9713000075572344, "pixel.iou": 0.8341232227488151,
        "pixel.iou_best_per_image": 0.8262463805510164, "pixel.f1": 0.9095607235142119,
        "miou": 0.9136683849007778, "acc": 0.9504655366066922, "acc_anomaly": 0.9041095890410958,
        "threshold": 0.5456181764602661,
    },
    "exact-ties": {
        "image.auroc": 0.9800000000000001, "image.ap": 0.9666666666666666, "image.f1_max": 0.9090909090909091,
        "pixel.auroc": 0.977037441034915, "pixel.ap": 0.8379256523963058, "pixel.f1_max": 0.7987012987012987,
        "pixel.pro": 0.8279912392239817, "pixel.iou": 0.04116594221426745,
        "pixel.iou_best_per_image": 0.5685227657496565, "pixel.f1": 0.07907662082514735,
        "miou": 0.40220428558405774, "acc": 0.8695965018036378, "acc_anomaly": 0.9757575757575757, "threshold": 0.5,
    },
    "binned": {
        "image.auroc": 1.0, "image.ap": 1.0, "image.f1_max": 1.0,
        "pixel.auroc": 0.9975951199963035, "pixel.ap": 0.9576946743502317, "pixel.f1_max": 0.9087779690189329,
        "pixel.pro": 0.9769690346633207, "pixel.iou": 0.754054054054054,
        "pixel.iou_best_per_image": 0.8262463805510164, "pixel.f1": 0.8597842835130971,
        "miou": 0.8711340079880424, "acc": 0.9726800477710402, "acc_anomaly": 0.9554794520547946, "threshold": 0.5,
    },
    "logit-quantile": {
        "image.auroc": 0.8, "image.ap": 0.7861904761904762, "image.f1_max": 0.8333333333333334,
        "pixel.auroc": 0.8147072702233461, "pixel.ap": 0.17500799778584689, "pixel.f1_max": 0.2634315424610052,
        "pixel.pro": 0.602923597383181, "pixel.iou": 0.030344126123071708,
        "pixel.iou_best_per_image": 0.18050381422987555, "pixel.f1": 0.05890095426127016,
        "miou": 0.3343996719358169, "acc": 0.6219824944285299, "acc_anomaly": 0.6006711409395973, "threshold": 0.5,
    },
}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_values_equal_the_engine_before_issue_21(case):
    got = _flat(_pinned_cases()[case]())
    assert got.keys() == PINNED[case].keys()
    for key, value in PINNED[case].items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_binned_histograms_do_not_depend_on_the_chunk_size(monkeypatch):
    from benchmark.metrics import engine

    monkeypatch.setattr(engine, "_HISTOGRAM_CHUNK", 333)  # chunks that split images and regions
    got = _flat(_pinned_cases()["binned"]())
    for key, value in PINNED["binned"].items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_best_iou_of_image_when_the_sampled_cut_is_too_high(monkeypatch):
    """With 16 sampled pixels the guessed cut is often too high; the exact check must notice and
    lower it (down to sorting the whole image). Random maps, quantized every other time (ties)."""
    from benchmark.metrics import curves

    monkeypatch.setattr(curves, "_IOU_SAMPLE", 16)
    sort, sizes = np.sort, []

    def counting_sort(a, *args, **kwargs):
        sizes.append(a.size)
        return sort(a, *args, **kwargs)

    monkeypatch.setattr(np, "sort", counting_sort)
    retried = 0
    for seed in range(150):
        rng = np.random.default_rng(seed)
        mask = rng.random((32, 32)) < rng.uniform(0.01, 0.2)
        mask[0, 0] = True
        score = rng.random((32, 32)) ** rng.uniform(0.2, 5)
        score = np.clip(np.where(mask, rng.uniform(0, 1) + rng.random((32, 32)) * 0.5, score), 0, 1)
        if seed % 2:
            score = np.round(score * 16) / 16
        score = score.astype(np.float32)
        sizes.clear()
        got = best_iou_of_image(score.ravel(), np.flatnonzero(mask))
        retried += len(sizes) > 3  # anomalous scores, sample, then more than one cut
        assert got == pytest.approx(brute_best_iou(score, mask), abs=1e-12), seed
    assert retried >= 3  # a few percent of these seeds need a lower cut


def test_binned_confusion_read_from_the_histogram_counts_like_the_threshold():
    """A threshold on a bin edge of a power-of-two histogram is counted from the bins; scores at,
    just below and just above it must fall on the same side as `score >= threshold`."""
    maps, masks = blob_dataset(24, n=6, size=32)
    normal, anomalous = np.flatnonzero(~masks), np.flatnonzero(masks)
    for i, t in enumerate((0.5, 0.25, 1.0, 0.0, 0.3)):
        edge = np.float32(t)
        near = np.clip([edge, np.nextafter(edge, np.float32(-1)), np.nextafter(edge, np.float32(2))], 0, 1)
        maps.reshape(-1)[normal[40 * i : 40 * i + 3]] = near
        maps.reshape(-1)[anomalous[3 * i : 3 * i + 3]] = near
    for t in (0.5, 0.25, 1.0, 0.0, 0.3):
        for bins in (1 << 16, 1000):
            exact = evaluate([maps], [masks], MetricOptions(mode="exact", iou_threshold=t))
            binned = evaluate([maps], [masks], MetricOptions(mode="binned", iou_threshold=t, bins=bins))
            for key in ("miou", "acc", "acc_anomaly"):
                assert binned[key] == pytest.approx(exact[key], abs=1e-12, nan_ok=True), (t, bins, key)
            for key in ("iou", "f1"):
                assert binned["pixel"][key] == pytest.approx(exact["pixel"][key], abs=1e-12, nan_ok=True), (t, bins, key)


def test_threshold_bin_only_where_the_bins_count_it_exactly():
    from benchmark.metrics.engine import _threshold_bin

    assert _threshold_bin(0.5, 1 << 16) == 32768
    assert _threshold_bin(1.0, 1 << 16) == 65536  # the extra bin of the scores equal to 1
    assert _threshold_bin(0.3, 1 << 16) is None  # float32(0.3) is not on an edge
    assert _threshold_bin(0.5, 1000) is None  # score * 1000 rounds in float32
    assert _threshold_bin("f1", 1 << 16) is None


@pytest.mark.parametrize("seed", [20, 21])
def test_binned_mode_default_bins_within_1e4_of_exact(seed):
    """issue 21: binned pixel AP (the worst metric at 1000 bins, 3e-4 off) and every other value
    within 1e-4 of exact with the default 2^16 bins."""
    maps, masks = blob_dataset(seed, n=16, size=128, max_radius=20)
    exact = _flat(evaluate([maps], [masks], MetricOptions(mode="exact")))
    binned = _flat(evaluate([maps], [masks], MetricOptions(mode="binned")))
    for key, value in exact.items():
        if key != "threshold":
            assert binned[key] == pytest.approx(value, abs=1e-4), key


# ----------------------------------------------------------------------------- exact sort in the state's memory


def _packed(seed: int, n: int = 300, negative: bool = False):
    """Keys as the exact state packs them, the anomalous ones (payload > 0) apart and sorted: many
    tied scores, some shared by normal and several anomalous pixels with different areas."""
    rng = np.random.default_rng(seed)
    scores = (rng.integers(0, 40, n) / 40).astype(np.float32)
    if negative:
        scores -= np.float32(0.5)
    payload = np.where(rng.random(n) < 0.3, rng.integers(1, 9, n), 0).astype(np.uint32)
    keys = pack_keys(scores, payload)
    return keys, np.sort(keys[payload > 0])


@pytest.mark.parametrize("negative", [False, True])
@pytest.mark.parametrize("block", [1 << 20, 3])
def test_compact_then_restore_sorts_the_keys_in_their_own_memory(monkeypatch, negative, block):
    """`compact_high_words` puts each key's high word (the score's order, computed here with a shift)
    into the first half of the keys' memory; sorting those and `restore_sorted_keys` leave the keys
    sorted: the same keys as np.sort of a copy. Blocks of 3 keys cross every boundary case."""
    monkeypatch.setattr(curves, "_BLOCK", block)
    for seed in range(4):
        keys, positive_keys = _packed(seed, negative=negative)
        original = keys.copy()
        high = curves.compact_high_words(keys)
        assert np.shares_memory(high, keys) and high.dtype == np.int32
        assert np.array_equal(high, (original >> 32).astype(np.int32))
        high.sort()
        first, bits = curves.positive_groups(positive_keys)
        start, stop = curves.positions_in_sorted(high, bits)
        curves.restore_sorted_keys(keys, high, positive_keys, first, bits, stop)
        assert np.array_equal(keys, np.sort(original))
        # an error before the searches: restored all the same
        keys = original.copy()
        high = curves.compact_high_words(keys)
        curves.restore_sorted_keys(keys, high, positive_keys, first, bits, None)
        assert np.array_equal(keys, np.sort(original))


def _state_keys(metric) -> np.ndarray:
    return np.concatenate([k.numpy() for k in metric.pixel_keys])


def _batches():
    maps, masks = blob_dataset(31, n=9, size=40, quantize=32)  # ties between normal and anomalous
    return [(maps[i : i + 3], masks[i : i + 3]) for i in range(0, 9, 3)]


@pytest.mark.parametrize("threshold", [0.5, "f1"])
def test_exact_compute_sorts_in_the_state_and_leaves_it_equal(monkeypatch, threshold):
    """Consecutive updates are adjacent in one segment, so compute sorts the state's own memory
    (the 4 B/pixel copy is never made) and leaves the same keys, sorted; the values equal the copy
    path (state spread over segments) and a second compute."""
    opts = MetricOptions(mode="exact", iou_threshold=threshold)
    metric = AnomalyMetrics(opts)
    for maps, masks in _batches():
        metric.update(maps, masks)
    before = _state_keys(metric)
    copied = curves.high_words_of_chunks
    monkeypatch.setattr(curves, "high_words_of_chunks", lambda *a: pytest.fail("copied the high words"))
    first = metric.compute()
    after = _state_keys(metric)
    assert np.array_equal(after, np.sort(before))
    metric._computed = None  # torchmetrics' cache: compute again from the state
    assert metric.compute() == first

    monkeypatch.setattr(curves, "high_words_of_chunks", copied)
    shuffled = AnomalyMetrics(opts)  # chunks of one segment, listed out of order: not one array
    for maps, masks in _batches():
        shuffled.update(maps, masks)
    shuffled.pixel_keys = shuffled.pixel_keys[::-1]
    assert shuffled._contiguous_keys([k.numpy() for k in shuffled.pixel_keys]) is None
    assert shuffled.compute() == first

    monkeypatch.setattr(engine, "_SEGMENT_KEYS", 10)  # a segment per update: not one array
    spread = AnomalyMetrics(opts)
    for maps, masks in _batches():
        spread.update(maps, masks)
    assert spread._contiguous_keys([k.numpy() for k in spread.pixel_keys]) is None
    assert spread.compute() == first
    assert np.array_equal(np.sort(_state_keys(spread)), after)  # the copy path leaves the state as it was


def test_exact_state_restored_when_compute_fails(monkeypatch):
    metric = AnomalyMetrics(MetricOptions(mode="exact"))
    for maps, masks in _batches():
        metric.update(maps, masks)
    before = _state_keys(metric)

    def failing(*args):
        raise RuntimeError("search failed")

    monkeypatch.setattr(curves, "positions_in_sorted", failing)
    with pytest.raises(RuntimeError, match="search failed"):
        metric.compute()
    assert np.array_equal(_state_keys(metric), np.sort(before))


def test_exact_compute_needs_no_memory_per_pixel():
    """numpy reports its allocations to tracemalloc: with the state in one segment, compute's peak
    stays below the 4 bytes per pixel of a copy of the high words (issue 21: <= 12 B/pixel in all).
    Measured here: 1.2 B/pixel, the curves' arrays of the 0.7 % anomalous pixels (about 160 bytes
    each); the copy path 4.3 B/pixel."""
    import tracemalloc

    maps, masks = blob_dataset(32, n=8, size=256, max_radius=20)
    metric = AnomalyMetrics(MetricOptions(mode="exact"))
    metric.update(maps[:4], masks[:4])
    metric.update(maps[4:], masks[4:])
    tracemalloc.start()
    try:
        metric.compute()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * maps.size  # bytes


def test_clone_and_reset_leave_the_segment():
    maps, masks = blob_dataset(33, n=6, size=32)
    metric = AnomalyMetrics(MetricOptions(mode="exact"))
    metric.update(maps[:3], masks[:3])
    copy = metric.clone()
    assert copy._segment is None and metric._segment is not None
    metric.update(maps[3:], masks[3:])
    copy.update(maps[3:], masks[3:])
    assert copy.compute() == metric.compute() == evaluate([maps], [masks], MetricOptions(mode="exact"))
    metric.reset()
    assert metric._segment is None and metric.pixel_keys == []


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux only")
def test_state_segment_asks_for_small_pages():
    """The exact state's segment is madvised MADV_NOHUGEPAGE (the kernel shows the flag `nh` on
    its mapping): on this project's VM huge pages made the state's page faults 5x dearer."""
    keys = engine._reserve_keys(1 << 22)  # 32 MiB: numpy would ask for huge pages
    keys[:: 1 << 10] = 1
    address = keys.ctypes.data + keys.nbytes // 2
    flags = None
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        first = line.split()[0]
        if "-" in first and all(c in "0123456789abcdef-" for c in first):
            lo, hi = (int(x, 16) for x in first.split("-"))
            if lo <= address < hi:
                flags = next(l for l in lines[i + 1 :] if l.startswith("VmFlags:")).split()[1:]
                break
    assert flags is not None and "nh" in flags and "hg" not in flags


# ---------------------------------------------------------------------------- threads (issue 21)


def _in_threads_of(monkeypatch, threads: int) -> None:
    """Every batch and state split over `threads` threads, however small."""
    monkeypatch.setattr(engine, "_PARALLEL_MIN_PIXELS", 0)
    monkeypatch.setattr(engine, "_threads", lambda: threads)


@pytest.mark.parametrize("options", [
    dict(mode="exact"), dict(mode="exact", iou_threshold="f1"), dict(mode="exact", iou_threshold=0.3),
    dict(mode="exact", pro_curve="quantile-100", pixel_f1_max="grid-21"),
    dict(mode="binned", bins=1024), dict(mode="binned", bins=1000), dict(mode="auto", exact_max_pixels=4000),
])
def test_threads_change_no_value(monkeypatch, options):
    """Images labelled, packed and histogrammed in slices, the state sorted in slices whose counts
    add up: every value equals one thread's, to the last bit, for 2 and 3 threads (slices of
    unequal size, a slice of one image); the state keeps the same keys, one ascending run per
    slice, and a second compute gives the same values."""
    opts = MetricOptions(**options)
    maps, masks = blob_dataset(41, n=7, size=40, quantize=32)  # ties across slices
    batches = [(maps[:5], masks[:5]), (maps[5:], masks[5:])]
    serial = AnomalyMetrics(opts)
    for m, g in batches:
        serial.update(m, g)
    expected = serial.compute()
    for threads in (2, 3):
        with monkeypatch.context() as patch:
            _in_threads_of(patch, threads)
            metric = AnomalyMetrics(opts)
            for m, g in batches:
                metric.update(m, g)
            before = _state_keys(metric) if metric.pixel_keys else None
            assert metric.compute() == expected
            if before is not None:
                after = _state_keys(metric)
                assert np.array_equal(np.sort(after), np.sort(before))
                assert all(np.all(np.diff(after[a:b]) >= 0) for a, b in engine._slices(after.size, threads))
            metric._computed = None
            assert metric.compute() == expected


def test_restore_in_slices_puts_each_anomalous_key_back(monkeypatch):
    """Slices of the high words sorted apart: each slice becomes an ascending run of int64 keys,
    together exactly the original keys; a score's anomalous keys may fall in several slices (only
    the total count per score is known), so they fill its runs slice after slice. Also after an
    error before the searches (the slices are sorted and searched again)."""
    monkeypatch.setattr(curves, "_BLOCK", 5)
    for seed in range(4):
        keys, positive_keys = _packed(seed, n=300)
        original = keys.copy()
        bounds = [0, 97, 98, 300]  # a slice of one key
        first, bits = curves.positive_groups(positive_keys)
        for searched in (True, False):
            keys[:] = original
            high = curves.compact_high_words(keys)
            start, stop = [], []
            for a, b in zip(bounds[:-1], bounds[1:]):
                high[a:b].sort()
                found = curves.positions_in_sorted(high[a:b], bits)
                start.append(found[0])
                stop.append(found[1])
            curves.restore_sorted_keys(keys, high, positive_keys, first, bits, stop if searched else None,
                                       bounds=bounds, start=start if searched else None)
            assert np.array_equal(np.sort(keys), np.sort(original))
            for a, b in zip(bounds[:-1], bounds[1:]):
                assert np.all(np.diff(keys[a:b]) >= 0)


def test_positions_of_thresholds_absent_from_a_slice():
    """start = number of scores < t, stop = number <= t, counted by hand, for thresholds that are
    in the sorted scores (tied or not) and thresholds that are not (a slice of the state)."""
    scores = np.array([1, 3, 3, 3, 5, 8], np.int32)
    thresholds = np.array([0, 1, 2, 3, 5, 6, 8, 9], np.int32)
    start, stop = curves.positions_in_sorted(scores, thresholds)
    assert start.tolist() == [0, 0, 1, 1, 4, 5, 5, 6]
    assert stop.tolist() == [0, 1, 1, 4, 5, 5, 6, 6]
    empty = curves.positions_in_sorted(np.zeros(0, np.int32), thresholds)
    assert empty[0].tolist() == empty[1].tolist() == [0] * 8


def test_anomalous_pixels_of_slices_equal_the_batch():
    """Labelling consecutive slices of a batch and joining them gives the batch's own result."""
    from benchmark.metrics.pro import AnomalousPixels

    _, masks = blob_dataset(42, n=7, size=24)
    whole = anomalous_pixels(masks)
    joined = AnomalousPixels.of_parts([anomalous_pixels(masks[a:b]) for a, b in [(0, 2), (2, 3), (3, 7)]], 24 * 24)
    for name in ("index", "area", "image_start"):
        assert np.array_equal(getattr(joined, name), getattr(whole, name)), name
        assert getattr(joined, name).dtype == getattr(whole, name).dtype, name
    assert joined.n_regions == whole.n_regions
