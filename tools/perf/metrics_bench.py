"""Speed, memory and agreement of the metric engine on MVTec-sized synthetic maps (issues 3, 21).

    python tools/perf/metrics_bench.py                      # issue 21's table: 30 and 100 x 1024^2 (31.5 M, 105 M pixels)
    python tools/perf/metrics_bench.py --profile            # where the engine's CPU time goes, per function
    python tools/perf/metrics_bench.py --peers              # issue 3's table: sklearn and the reference PRO
    python tools/perf/metrics_bench.py --peers --images 20 --sizes 256 --ref-thresholds 100
    ... --anomalib-python <venv with anomalib>/bin/python  # adds anomalib's AUPRO

Issue 21's table (the default) puts the engine next to its two lower bounds, measured in one
process in interleaved rounds: one `np.sort` of the float32 scores (the floor of exact mode) and
one histogram pass (`np.bincount` of the float32 scores' bin index, the floor of binned mode).
Times are CPU seconds (time.process_time) and wall seconds, best of `--rounds`; the ratios are
taken per round and reported as best / median / worst, so their spread says how noisy the
machine was. Bytes per pixel come from a fresh process per mode (peak RSS above the RSS once the
maps are loaded). anomalib's AUPRO is a column when anomalib is importable here or through
--anomalib-python.

The maps are generated once into a temporary folder (or $METRICS_BENCH_CACHE) and reused.

Compared, each in a fresh process (peak memory = the process's peak RSS above its RSS once the
maps are loaded, reset through /proc/self/clear_refs):
  engine-exact / engine-binned   AnomalyMetrics, updates of 10 images, then compute (all metrics)
  sklearn                        roc_auc_score + average_precision_score + precision_recall_curve
                                 (F1-max) on the concatenated pixels
  ref-pro-T                      the straightforward PRO: T thresholds evenly spaced over the score
                                 range (cflow / ADer style), per threshold the overlap of every
                                 8-connected region and the FPR, area to FPR 0.3 / 0.3
  anomalib-aupro                 anomalib's AUPRO(fpr_limit=0.3), when --anomalib-python names an
                                 interpreter with anomalib installed (a throwaway venv)
Values are compared with engine-exact, which equals scikit-learn and MVTec AD's exact PRO (tests).

Data: a third of the images normal; defects are 1-3 irregular blobs (0.05-3 % of the image, a few
one-pixel specks); maps are sigmoid probabilities of a smooth background plus a blurred, partly
missed copy of the defect, so most normal pixels sit near 0 as with a trained segmenter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

CACHE = Path(os.environ.get("METRICS_BENCH_CACHE") or Path(tempfile.gettempdir()) / "sias-bench-metrics-perf")
HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]  # the repository: `benchmark` imports from the source tree, also in the workers
sys.path.insert(0, str(ROOT))
from benchmark.metrics.options import DEFAULT_BINS  # noqa: E402 - pydantic only, no torch


# ---------------------------------------------------------------------------- data


def _smooth_noise(rng, size: int, sigma: float) -> np.ndarray:
    low = max(size // 4, 8)
    noise = ndimage.gaussian_filter(rng.standard_normal((low, low)), sigma / 4)
    noise = ndimage.zoom(noise, size / low, order=1)[:size, :size]
    return (noise - noise.mean()) / (noise.std() + 1e-12)


def make_image(index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([size, index])
    mask = np.zeros((size, size), dtype=bool)
    if index % 3:  # two thirds defective
        yy, xx = np.ogrid[:size, :size]
        shape_noise = _smooth_noise(rng, size, size / 40)
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.uniform(0.01, 0.08, 2) * size
            ellipse = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
            mask |= ellipse + 0.4 * shape_noise <= 1.0
        if rng.random() < 0.3:  # a one-pixel speck
            mask[tuple(rng.integers(0, size, 2))] = True
    signal = 0.8 * _smooth_noise(rng, size, size / 30) + 0.3 * rng.standard_normal((size, size))
    response = ndimage.gaussian_filter(mask.astype(np.float32), size / 200) * rng.uniform(3.0, 7.0)
    response *= (_smooth_noise(rng, size, size / 20) > -0.8)  # parts of the defect missed
    probability = 1.0 / (1.0 + np.exp(-(signal + response - 3.5)))
    return probability.astype(np.float32), mask


def dataset(n_images: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(maps float32 NxSxS, masks bool NxSxS), generated once and cached under CACHE."""
    folder = CACHE / f"{size}px_{n_images}"
    if not (folder / "masks.npy").exists():
        folder.mkdir(parents=True, exist_ok=True)
        maps = np.empty((n_images, size, size), np.float32)
        masks = np.empty((n_images, size, size), bool)
        for i in range(n_images):
            maps[i], masks[i] = make_image(i, size)
        np.save(folder / "maps.npy", maps)
        np.save(folder / "masks.npy", masks)
    return np.load(folder / "maps.npy"), np.load(folder / "masks.npy")


# ---------------------------------------------------------------------------- methods


def run_engine(maps, masks, mode: str) -> dict:
    from benchmark.metrics import AnomalyMetrics, MetricOptions

    metric = AnomalyMetrics(MetricOptions(mode=mode))
    for start in range(0, len(maps), 10):
        metric.update(maps[start : start + 10], masks[start : start + 10])
    result = metric.compute()
    return {**{f"pixel_{k}": v for k, v in result["pixel"].items()}, **{f"image_{k}": v for k, v in result["image"].items()}}


def run_sklearn(maps, masks) -> dict:
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    y, s = masks.ravel(), maps.ravel()
    precision, recall, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return {"pixel_auroc": roc_auc_score(y, s), "pixel_ap": average_precision_score(y, s), "pixel_f1_max": float(f1.max())}


def run_reference_pro(maps, masks, n_thresholds: int, max_fpr: float = 0.3) -> dict:
    structure = np.ones((3, 3), dtype=int)
    labels = np.zeros(masks.shape, dtype=np.int64)
    offset = 0
    for i, gt in enumerate(masks):  # region ids made unique across images
        lab, n = ndimage.label(gt, structure)
        labels[i] = np.where(lab > 0, lab + offset, 0)
        offset += n
    areas = np.bincount(labels.ravel(), minlength=offset + 1)[1:]
    normal = labels == 0
    n_normal = int(normal.sum())
    fprs, pros = [0.0], [0.0]
    for t in np.linspace(float(maps.min()), float(maps.max()), n_thresholds):
        predicted = maps >= t
        fprs.append(np.count_nonzero(predicted & normal) / n_normal)
        overlap = np.bincount(labels[predicted], minlength=offset + 1)[1:] / areas
        pros.append(float(overlap.mean()))
    order = np.argsort(fprs, kind="stable")
    x, y = np.array(fprs)[order], np.array(pros)[order]
    x, y = np.append(x, 1.0), np.append(y, 1.0)
    ins = int(np.searchsorted(x, max_fpr, side="right"))
    area = float(np.sum(0.5 * (y[1:ins] + y[: ins - 1]) * np.diff(x[:ins])))
    if x[ins - 1] < max_fpr:
        y_max = y[ins - 1] + (y[ins] - y[ins - 1]) * (max_fpr - x[ins - 1]) / (x[ins] - x[ins - 1])
        area += 0.5 * (y_max + y[ins - 1]) * (max_fpr - x[ins - 1])
    return {"pixel_pro": area / max_fpr}


def run_anomalib(maps, masks) -> dict:
    import torch
    from anomalib.metrics.aupro import _AUPRO

    metric = _AUPRO(fpr_limit=0.3)
    for start in range(0, len(maps), 10):
        metric.update(torch.from_numpy(maps[start : start + 10]), torch.from_numpy(masks[start : start + 10]).long())
    return {"pixel_pro": float(metric.compute())}


# ---------------------------------------------------------------------------- measurement


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def worker(method: str, size: int, n_images: int) -> dict:
    maps, masks = dataset(n_images, size)
    if method.startswith("engine"):
        from benchmark.metrics import AnomalyMetrics  # noqa: F401 - import cost is not part of the timing
    elif method == "sklearn":
        import sklearn.metrics  # noqa: F401
    elif method == "anomalib-aupro":
        import anomalib.metrics.aupro  # noqa: F401
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM)
    except OSError:
        pass
    rss_before = _status_kb("VmRSS")
    start = time.perf_counter()
    if method == "engine-exact":
        values = run_engine(maps, masks, "exact")
    elif method == "engine-binned":
        values = run_engine(maps, masks, "binned")
    elif method == "sklearn":
        values = run_sklearn(maps, masks)
    elif method.startswith("ref-pro-"):
        values = run_reference_pro(maps, masks, int(method.rsplit("-", 1)[1]))
    elif method == "anomalib-aupro":
        values = run_anomalib(maps, masks)
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - start
    peak_mb = (_status_kb("VmHWM") - rss_before) / 1024
    return {"method": method, "size": size, "images": n_images, "seconds": seconds, "peak_mb": peak_mb,
            "values": {k: float(v) for k, v in values.items()}}


def measure(method: str, size: int, n_images: int, python: str = sys.executable) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "METRICS_BENCH_CACHE": str(CACHE)}
    proc = subprocess.run([python, str(HERE), "--worker", method, "--size", str(size), "--images", str(n_images)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        return {"method": method, "size": size, "images": n_images, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- issue 21: the limits


def one_sort(maps) -> None:
    """The floor of exact mode: one sort of every float32 score (a copy, like the engine's state)."""
    np.sort(maps.ravel())


def one_histogram_pass(maps, bins: int = DEFAULT_BINS, chunk: int = 1 << 20) -> None:
    """The floor of binned mode: every float32 score's bin index, counted once, in chunks of 2^20
    pixels (whole-array temporaries of 31.5 M pixels measured 3x slower: fresh pages). The bins
    and the kernel are the engine's (`int(score * bins)` as intp, which np.bincount takes without
    a copy; a score of 1 lands in an extra bin instead of a clamping pass)."""
    flat = maps.ravel()
    scale = np.float32(bins)
    counts = np.zeros(bins + 1, np.int64)
    for start in range(0, flat.size, chunk):
        counts += np.bincount((flat[start : start + chunk] * scale).astype(np.intp), minlength=bins + 1)


def _cpu_and_wall(fn) -> tuple[float, float, float]:
    """(CPU s, wall s, system CPU s: mostly page faults here)."""
    cpu, wall, system = time.process_time(), time.perf_counter(), os.times().system
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall, os.times().system - system


def recycle_pages(n_bytes: int) -> None:
    """Touch and free n_bytes, so that the next job's allocations reuse pages the process just
    gave back. On this VM a page the kernel has not handed out recently costs about 1.3 ms/MB
    to fault in, a recycled one about 0.2 ms/MB (docs/metrics.md), which moves the ratios more
    than the code does; `--warm-pages` gives every job the same start."""
    np.ones(n_bytes // 8)


def limits_worker(size: int, n_images: int, rounds: int, warm_pages: bool = False) -> dict:
    """Interleaved rounds in this process: engine exact, engine binned, one sort, one histogram pass.
    `warm_pages`: before each job, touch and free 16 bytes per pixel (more than any job's peak)."""
    maps, masks = dataset(n_images, size)
    for mode in ("exact", "binned"):
        run_engine(maps[:10], masks[:10], mode)  # lazy imports and first calls outside the timing
    jobs = {"engine-exact": lambda: run_engine(maps, masks, "exact"),
            "engine-binned": lambda: run_engine(maps, masks, "binned"),
            "np.sort": lambda: one_sort(maps), "histogram pass": lambda: one_histogram_pass(maps)}
    times: dict[str, list] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            if warm_pages:
                recycle_pages(16 * maps.size)
            times[name].append(_cpu_and_wall(job))
    return {"size": size, "images": n_images, "times": times}


def limits_table(n_images: int, size: int, rounds: int, anomalib_python: str | None, warm_pages: bool = False) -> str:
    pixels = n_images * size * size
    proc = subprocess.run([sys.executable, str(HERE), "--worker", "limits", "--size", str(size),
                           "--images", str(n_images), "--rounds", str(rounds)] + ["--warm-pages"] * warm_pages,
                          capture_output=True, text=True,
                          env={**os.environ, "METRICS_BENCH_CACHE": str(CACHE)})
    if proc.returncode:
        raise SystemExit(proc.stderr)
    times = json.loads(proc.stdout.strip().splitlines()[-1])["times"]
    memory = {mode: measure(mode, size, n_images) for mode in ("engine-exact", "engine-binned")}
    python = anomalib_python or (sys.executable if _importable("anomalib") else None)
    anomalib = measure("anomalib-aupro", size, n_images, python) if python else None

    def best(name, i):
        return min(t[i] for t in times[name])

    def ratios(a, b, i):
        r = sorted(x[i] / y[i] for x, y in zip(times[a], times[b]))
        return f"{r[0]:.2f} / {r[len(r) // 2]:.2f} / {r[-1]:.2f}"

    def per_pixel(row):
        return f"{row['peak_mb'] * 2**20 / pixels:.1f}" if row and "peak_mb" in row else "n/a"

    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [f"\n### {n_images} x {size}^2 = {pixels / 1e6:.1f} M pixels ({rounds} interleaved rounds; "
             f"load average {load} on {os.cpu_count()} CPUs; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
             f"{'; pages recycled before each job' if warm_pages else ''}; {_numpy_simd()})\n",
             "| | engine exact | engine binned | one np.sort (float32) | one histogram pass | anomalib AUPRO |",
             "|---|---:|---:|---:|---:|---:|"]
    names = ("engine-exact", "engine-binned", "np.sort", "histogram pass")
    anomalib_cell = ("not importable" if anomalib is None else
                     f"{anomalib['seconds']:.2f}" if "seconds" in anomalib else "failed")
    for label, i in (("CPU s, best", 0), ("wall s, best", 1)):
        lines.append(f"| {label} | " + " | ".join(f"{best(name, i):.3f}" for name in names)
                     + f" | {anomalib_cell if i == 1 else ''} |")
    lines.append("| of which system (page faults), median | " + " | ".join(
        f"{sorted(t[2] for t in times[name])[len(times[name]) // 2]:.3f}" for name in names) + " | |")
    lines.append(f"| peak B/pixel | {per_pixel(memory['engine-exact'])} | {per_pixel(memory['engine-binned'])} | 4 | | "
                 f"{per_pixel(anomalib) if anomalib else ''} |")
    lines += ["", "ratio per round (best / median / worst); the issue's limit is 2:",
              f"- exact / one sort:            CPU {ratios('engine-exact', 'np.sort', 0)}, "
              f"wall {ratios('engine-exact', 'np.sort', 1)}",
              f"- binned / one histogram pass: CPU {ratios('engine-binned', 'histogram pass', 0)}, "
              f"wall {ratios('engine-binned', 'histogram pass', 1)}"]
    return "\n".join(lines)


def _numpy_simd() -> str:
    """Which SIMD numpy may use: its AVX-512 sort measured 6x slower than its AVX2 sort on this
    machine's AMD EPYC (docs/metrics.md), so the limit itself depends on it."""
    disabled = os.environ.get("NPY_DISABLE_CPU_FEATURES", "").strip()
    return f"numpy {np.__version__}, NPY_DISABLE_CPU_FEATURES={disabled or 'unset'}"


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def profile_report(n_images: int, size: int, rounds: int, top: int = 16) -> str:
    """cProfile with a CPU-time clock over `rounds` runs of each mode: the functions with the most
    own time (numpy's sort, scipy's label, ...) and the engine's own steps with their callees."""
    import cProfile
    import pstats

    maps, masks = dataset(n_images, size)
    lines = []
    for mode in ("exact", "binned"):
        run_engine(maps[:10], masks[:10], mode)  # lazy imports (torchmetrics) outside the profile
        profiler = cProfile.Profile(time.process_time)
        total = 0.0
        for _ in range(rounds):
            cpu = time.process_time()
            profiler.runcall(run_engine, maps, masks, mode)
            total += time.process_time() - cpu
        sort_cpu = min(_cpu_and_wall(lambda: one_sort(maps))[0] for _ in range(rounds))
        stats = pstats.Stats(profiler).stats
        rows = sorted(((v[2] / rounds, v[3] / rounds, _name(k)) for k, v in stats.items()), reverse=True)
        lines += [f"\n### {mode}, {n_images} x {size}^2: {total / rounds:.3f} CPU s per run "
                  f"(one np.sort of the float32 scores: {sort_cpu:.3f} s; mean of {rounds} runs)\n",
                  "| function | own CPU s | share | with callees |", "|---|---:|---:|---:|"]
        for own, cumulative, name in rows[:top]:
            lines.append(f"| {name} | {own:.4f} | {own / (total / rounds):.0%} | {cumulative:.4f} |")
    return "\n".join(lines)


def _name(key) -> str:
    path, line, function = key
    if path == "~":
        return function.strip("<>").replace("method ", "")
    return f"{Path(path).parent.name}/{Path(path).name}:{function}"


# ---------------------------------------------------------------------------- report


def report(rows: list[dict]) -> str:
    lines = []
    for size in sorted({r["size"] for r in rows}):
        group = [r for r in rows if r["size"] == size and r["images"] == max(x["images"] for x in rows if x["size"] == size)]
        exact = next((r for r in group if r["method"] == "engine-exact" and "values" in r), None)
        n = group[0]["images"]
        pixels = n * size * size
        lines += [f"\n### {n} images at {size}x{size} ({pixels / 1e6:.1f} M pixels)\n",
                  "| method | time (s) | peak memory (MB) | PRO | max abs diff vs engine-exact |",
                  "|---|---:|---:|---:|---|"]
        for r in group:
            if "error" in r:
                lines.append(f"| {r['method']} | failed: {' '.join(r['error'])} | | | |")
                continue
            diffs = ""
            if exact and r is not exact:
                d = {k: abs(v - exact["values"][k]) for k, v in r["values"].items() if k in exact["values"]}
                worst = max(d, key=d.get)
                diffs = f"{worst} {d[worst]:.2e}" + ("" if len(d) == 1 else f" ({len(d)} metrics)")
            pro = r["values"].get("pixel_pro")
            lines.append(f"| {r['method']} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | "
                         f"{'' if pro is None else f'{pro:.5f}'} | {diffs} |")
        by = {r["method"]: r for r in group if "seconds" in r}
        engine = by.get("engine-exact")
        if engine and "sklearn" in by:
            for method, r in by.items():
                if method.startswith("ref-pro-"):
                    speedup = (by["sklearn"]["seconds"] + r["seconds"]) / engine["seconds"]
                    lines.append(f"\nsklearn + {method} vs engine-exact (all metrics): {speedup:.1f}x")
    scaling = [r for r in rows if r["method"].startswith("engine") and "seconds" in r]
    if len({r["images"] for r in scaling}) > 1:
        lines += ["\n### Engine peak memory vs number of images\n", "| size | images | exact (MB) | binned (MB) |",
                  "|---|---:|---:|---:|"]
        for size, n in sorted({(r["size"], r["images"]) for r in scaling}):
            peak = {r["method"]: r["peak_mb"] for r in scaling if r["size"] == size and r["images"] == n}
            lines.append(f"| {size} | {n} | {peak.get('engine-exact', float('nan')):.0f} | "
                         f"{peak.get('engine-binned', float('nan')):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, nargs="+", default=None,
                        help="images per size (default: 30 and 100 1024^2 images, issue 21's 31.5 M and 105 M "
                             "pixels; --peers: 100 per size)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="image sizes (default: 1024 1024; --peers: 256 1024)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of issue 21's table")
    parser.add_argument("--warm-pages", action="store_true",
                        help="issue 21's table: touch and free 16 B/pixel before each timed job (recycle_pages)")
    parser.add_argument("--profile", action="store_true", help="per-function CPU time of the engine (cProfile)")
    parser.add_argument("--peers", action="store_true", help="issue 3's table: sklearn, reference PRO, anomalib")
    parser.add_argument("--ref-thresholds", type=int, nargs="+", default=[100, 1000],
                        help="threshold counts of the reference PRO (1000 at 1024 px takes ~10 min)")
    parser.add_argument("--scaling", type=int, nargs="*", default=[25, 50],
                        help="also run the engine on these image counts at the largest size (memory vs images)")
    parser.add_argument("--anomalib-python", help="python of a throwaway venv with anomalib installed")
    parser.add_argument("--json", default=None, help="also write the raw measurements here")
    parser.add_argument("--reuse", default=None, metavar="JSON",
                        help="take the rows of methods other than engine-* from an earlier --json (they do not "
                             "depend on this code and take minutes)")
    args = parser.parse_args()
    if args.worker:
        if args.worker == "limits":
            print(json.dumps(limits_worker(args.size, args.images[0], args.rounds, args.warm_pages)))
            return
        print(json.dumps(worker(args.worker, args.size, args.images[0])))
        return
    if args.sizes is None:
        args.sizes = [256, 1024] if args.peers else [1024, 1024]
        if not args.peers and args.images is None:
            args.images = [30, 100]
    counts = args.images or [100 if args.peers or size < 1024 else 30 for size in args.sizes]
    if len(counts) == 1:
        counts = counts * len(args.sizes)
    if not args.peers:
        for size, n in zip(args.sizes, counts):
            dataset(n, size)  # generated once, outside every timing
            if args.profile:
                print(profile_report(n, size, args.rounds))
                continue
            print(limits_table(n, size, args.rounds, args.anomalib_python, args.warm_pages), flush=True)
        return
    args.images = counts[0]

    reused = json.loads(Path(args.reuse).read_text()) if args.reuse else []

    def row(method: str, size: int, n: int, python: str = sys.executable) -> None:
        old = [r for r in reused if (r["method"], r["size"], r["images"]) == (method, size, n)]
        rows.append(old[0] if old and not method.startswith("engine") else measure(method, size, n, python))
        print(json.dumps(rows[-1]), flush=True)

    rows: list[dict] = []
    for size in args.sizes:
        dataset(args.images, size)  # generate once, outside every timing
        for method in ["engine-exact", "engine-binned", "sklearn", *[f"ref-pro-{t}" for t in args.ref_thresholds]]:
            row(method, size, args.images)
        if args.anomalib_python:
            row("anomalib-aupro", size, args.images, args.anomalib_python)
    for n in args.scaling:
        dataset(n, max(args.sizes))
        for method in ("engine-exact", "engine-binned"):
            row(method, max(args.sizes), n)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    print(report(rows))


if __name__ == "__main__":
    main()
