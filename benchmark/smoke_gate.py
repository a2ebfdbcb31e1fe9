"""The CI gate on smoke runs: exact-enough checks of what is deterministic, a spread band for what is not.

A smoke table comes from a segmenter trained for a few hundred CPU steps from random weights: the
run repeats bit for bit on one machine, but a different rounding in a CPU kernel (another thread
count, another CPU of the same kind) sends training down another path, and the metrics move by as
much as a change of seed moves them. So the gate (leaderboards/ci/README.md has the measurements)
checks two things:

- the synthetic pairs of the run: every mask bit for bit (sha256), every image as an 8 x 8 grid of
  block means within the entry's pair tolerance: `PAIR_TOLERANCE` grey levels, or twice the move
  measured at record time between runs of one seed at different thread counts, if larger. Masks are integer arithmetic; images from a
  diffusion sampler may move by a rounding step on another CPU, a code change moves them by far more;
- the category-mean row of the table against a baseline recorded over several seeds and thread
  counts: a metric fails when it falls below the recorded mean minus `k` standard deviations (at
  least `floor`). Metrics in `require_positive` must also be above zero (a degenerate table, such
  as IoU 0 everywhere, fails even when the baseline was degenerate too).

    python -m benchmark.smoke_gate record --name cutpaste-unet --runs r0 r1 ... --out baseline.json
    python -m benchmark.smoke_gate check --baseline baseline.json --name cutpaste-unet --run r0
    python -m benchmark.smoke_gate add --baseline baseline.json --name cutpaste-unet --runs r5 --threads 1 \
        --note "another machine of the CI kind"

`add` widens an entry's band with runs of the same code measured elsewhere (another machine or
thread count) whose pairs pass the entry: the spread of a chaotic table is only known from the
runs seen, so a run that fails only the band on another machine is evidence of spread. A run whose
pairs differ is a changed generator, which needs `record`, not a wider band.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

from benchmark.errors import BenchError

PAIR_GRID = 8
PAIR_TOLERANCE = 2.0  # grey levels (of 255) per 8 x 8 block mean
DEFAULT_K = 6.0  # false-alarm reasoning: leaderboards/ci/README.md
DEFAULT_FLOOR = 0.02
# categorical or derived entries of the mean row that are not judged as metrics
NOT_METRICS = ("threshold",)


# -- synthetic pairs -----------------------------------------------------------------------------
def pair_fingerprints(synthetic_root: Path) -> dict[str, dict]:
    """{pair id: {"mask": sha256[:16] of the mask PNG's pixels, "image": 8x8x3 block means}}."""
    from PIL import Image

    root = Path(synthetic_root)
    if not root.exists():  # real-only makes no pairs; a baseline that has pairs still fails the check
        return {}
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        raise BenchError(f"{manifest}: no manifest; is {root} a synthetic set (or a run's synthetic/ link)?")
    out = {}
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        image = np.asarray(Image.open(root / record["image"]).convert("RGB"), dtype=np.float64)
        mask = np.asarray(Image.open(root / record["mask"]).convert("L")) > 127
        h, w = image.shape[:2]
        if h % PAIR_GRID or w % PAIR_GRID:
            raise BenchError(f"{root / record['image']}: size {w}x{h} is not a multiple of {PAIR_GRID}")
        blocks = image.reshape(PAIR_GRID, h // PAIR_GRID, PAIR_GRID, w // PAIR_GRID, 3).mean(axis=(1, 3))
        out[record["id"]] = {
            "mask": hashlib.sha256(np.packbits(mask).tobytes() + str(mask.shape).encode()).hexdigest()[:16],
            "image": [round(float(v), 2) for v in blocks.ravel()],
        }
    return out


def compare_pairs(baseline: dict[str, dict], current: dict[str, dict], tolerance: float = PAIR_TOLERANCE) -> list[str]:
    problems = []
    for pair_id in sorted(baseline.keys() - current.keys()):
        problems.append(f"pair {pair_id}: in the baseline, not written by this run")
    for pair_id in sorted(current.keys() - baseline.keys()):
        problems.append(f"pair {pair_id}: written by this run, not in the baseline")
    for pair_id in sorted(baseline.keys() & current.keys()):
        before, after = baseline[pair_id], current[pair_id]
        if before["mask"] != after["mask"]:
            problems.append(f"pair {pair_id}: mask differs")
        diff = np.abs(np.asarray(before["image"]) - np.asarray(after["image"])).max()
        if diff > tolerance:
            problems.append(f"pair {pair_id}: image moved by up to {diff:.1f} grey levels (tolerance {tolerance})")
    return problems


def largest_image_move(baseline: dict[str, dict], current: dict[str, dict]) -> float:
    """The largest block-mean move (grey levels) over the pairs both sets hold."""
    common = baseline.keys() & current.keys()
    return max((float(np.abs(np.asarray(baseline[i]["image"]) - np.asarray(current[i]["image"])).max())
                for i in common), default=0.0)


def measured_pair_tolerance(runs: list[Path], seeds: list[int]) -> float:
    """Twice the largest move between the first run's pairs and those of the other runs with its
    seed (another thread count: a diffusion generator's fit rounds differently), at least
    `PAIR_TOLERANCE`. A generator that is bit-stable across thread counts keeps the default."""
    first = pair_fingerprints(runs[0] / "synthetic")
    moves = [largest_image_move(first, pair_fingerprints(run / "synthetic"))
             for run, seed in zip(runs[1:], seeds[1:]) if seed == seeds[0]]
    return max(PAIR_TOLERANCE, 2 * max(moves, default=0.0))


# -- the table -----------------------------------------------------------------------------------
def mean_row(results: dict) -> dict[str, float]:
    from benchmark.leaderboard import flatten

    return {k: v for k, v in flatten(results.get("mean") or {}).items() if k not in NOT_METRICS}


def spread(rows: list[dict[str, float]]) -> dict[str, dict]:
    """Per metric: mean, sample standard deviation, min, max and count over the recorded runs."""
    if len(rows) < 2:
        raise BenchError("a spread needs at least two runs (seeds or thread counts)")
    metrics = sorted(set().union(*rows))
    out = {}
    for metric in metrics:
        values = np.array([row[metric] for row in rows if metric in row], dtype=np.float64)
        out[metric] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                       "min": float(values.min()), "max": float(values.max()), "n": int(len(values))}
    return out


def check_table(band: dict[str, dict], current: dict[str, float], k: float, floor: float,
                require_positive: list[str]) -> tuple[list[str], list[str]]:
    """(failures, lines): a metric fails below mean - max(k * std, floor), or at <= 0 when required."""
    failures, lines = [], []
    for metric, stats in sorted(band.items()):
        value = current.get(metric)
        lower = stats["mean"] - max(k * stats["std"], floor)
        if value is None or not math.isfinite(value):
            failures.append(f"{metric}: missing in this run")
            continue
        verdict = "ok"
        if value < lower:
            verdict = "REGRESSED"
            failures.append(f"{metric}: {100 * value:.2f} < {100 * lower:.2f} (baseline mean "
                            f"{100 * stats['mean']:.2f}, std {100 * stats['std']:.2f}, n {stats['n']})")
        lines.append(f"  {metric:26s} {100 * value:7.2f}   band >= {100 * lower:7.2f}   "
                     f"(mean {100 * stats['mean']:6.2f} +- {100 * stats['std']:5.2f}, "
                     f"range {100 * stats['min']:6.2f}..{100 * stats['max']:6.2f})   {verdict}")
    for metric in require_positive:
        value = current.get(metric)
        if value is None or not value > 0:
            failures.append(f"{metric}: {value} is not above zero (the smoke table must not be degenerate)")
    return failures, lines


# -- command line --------------------------------------------------------------------------------
def _results(run: Path) -> dict:
    path = Path(run) / "results.json"
    if not path.is_file():
        raise BenchError(f"{path}: no results.json; did the run finish?")
    return json.loads(path.read_text())


def record(args) -> int:
    runs = [Path(r) for r in args.runs]
    rows = [mean_row(_results(r)) for r in runs]
    baseline = json.loads(args.out.read_text()) if args.out.exists() else {}
    baseline.setdefault("gate", {"k": args.k, "floor": args.floor, "pair_tolerance": PAIR_TOLERANCE})
    baseline.setdefault("entries", {})
    seeds = [_results(r)["config"]["seed"] for r in runs]
    baseline["entries"][args.name] = {
        "command": args.command,
        "pair_tolerance": measured_pair_tolerance(runs, seeds),
        "runs": [{"seed": _results(r)["config"]["seed"], "threads": args.threads[i] if args.threads else None,
                  "mean": rows[i]} for i, r in enumerate(runs)],
        "band": spread(rows),
        "require_positive": args.require_positive or [],
        "pairs": pair_fingerprints(runs[0] / "synthetic"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{id(args)}.tmp")
    tmp.write_text(json.dumps(baseline, indent=1, sort_keys=True) + "\n")
    tmp.replace(args.out)
    print(f"recorded {args.name} from {len(runs)} runs into {args.out}")
    return 0


def add(args) -> int:
    baseline = json.loads(Path(args.baseline).read_text())
    entry = baseline.get("entries", {}).get(args.name)
    if entry is None:
        raise BenchError(f"{args.baseline}: no entry '{args.name}'; record it first")
    tolerance = entry.get("pair_tolerance", baseline["gate"]["pair_tolerance"])
    added = []
    for i, run in enumerate(Path(r) for r in args.runs):
        problems = compare_pairs(entry["pairs"], pair_fingerprints(run / "synthetic"), tolerance)
        if problems:
            raise BenchError(f"{run}: {len(problems)} synthetic pairs differ from the entry ({problems[0]}); "
                             "a changed generator needs `record` (.ci/regression --update), not a wider band")
        added.append({"seed": _results(run)["config"]["seed"], "threads": args.threads[i] if args.threads else None,
                      "mean": mean_row(_results(run)), "note": args.note})
    entry["runs"] += added
    entry["band"] = spread([r["mean"] for r in entry["runs"]])
    tmp = Path(args.baseline).with_name(f".{Path(args.baseline).name}.{id(args)}.tmp")
    tmp.write_text(json.dumps(baseline, indent=1, sort_keys=True) + "\n")
    tmp.replace(args.baseline)
    print(f"added {len(added)} runs to {args.name}: its band now spans {len(entry['runs'])} runs")
    return 0


def check(args) -> int:
    baseline = json.loads(Path(args.baseline).read_text())
    entry = baseline.get("entries", {}).get(args.name)
    if entry is None:
        raise BenchError(f"{args.baseline}: no entry '{args.name}'; known: {', '.join(baseline.get('entries', {}))}")
    gate = baseline["gate"]
    run = Path(args.run)
    pair_problems = compare_pairs(entry["pairs"], pair_fingerprints(run / "synthetic"),
                                  entry.get("pair_tolerance", gate["pair_tolerance"]))
    failures, lines = check_table(entry["band"], mean_row(_results(run)), gate["k"], gate["floor"],
                                  entry["require_positive"])
    print(f"{args.name}: {len(entry['pairs'])} synthetic pairs, "
          f"{'identical within tolerance' if not pair_problems else f'{len(pair_problems)} differ'}")
    for line in pair_problems[:10]:
        print(f"  {line}")
    print(f"{args.name}: mean row against the band of {len(entry['runs'])} recorded runs "
          f"(k = {gate['k']}, floor = {100 * gate['floor']:.1f} points)")
    print("\n".join(lines))
    for line in failures:
        print(f"FAIL {line}")
    ok = not pair_problems and not failures
    print(f"{args.name}: {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.smoke_gate", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command_name", required=True)
    rec = sub.add_parser("record", help="record a baseline entry from several smoke runs of one configuration")
    rec.add_argument("--name", required=True)
    rec.add_argument("--runs", nargs="+", required=True, help="run folders; the first one's pairs are recorded")
    rec.add_argument("--threads", nargs="*", type=int, help="thread count of each run, for the record")
    rec.add_argument("--command", default="", help="the bench command the runs used, for the record")
    rec.add_argument("--require-positive", nargs="*", default=[], metavar="METRIC")
    rec.add_argument("--k", type=float, default=DEFAULT_K)
    rec.add_argument("--floor", type=float, default=DEFAULT_FLOOR)
    rec.add_argument("--out", type=Path, required=True)
    chk = sub.add_parser("check", help="check one smoke run against its baseline entry")
    chk.add_argument("--baseline", type=Path, required=True)
    chk.add_argument("--name", required=True)
    chk.add_argument("--run", type=Path, required=True)
    more = sub.add_parser("add", help="widen an entry's band with runs of the same code from another machine")
    more.add_argument("--baseline", type=Path, required=True)
    more.add_argument("--name", required=True)
    more.add_argument("--runs", nargs="+", required=True, help="run folders whose pairs pass the entry")
    more.add_argument("--threads", nargs="*", type=int, help="thread count of each run, for the record")
    more.add_argument("--note", default="", help="where the runs come from (machine, commit), for the record")
    args = parser.parse_args(argv)
    try:
        return {"record": record, "check": check, "add": add}[args.command_name](args)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
