"""`bench score`: score anomaly maps written by any method against ground-truth masks.

    bench score --maps DIR --masks DIR [--image-score max|mean|pooled-max:K]
                [--mode auto|exact|binned] [--iou-threshold 0.5|f1] --json OUT

Maps: `.npy` (float HxW probabilities), `.png` / `.tif(f)` (8-bit: value/255, 16-bit: value/65535,
float TIFF as is). A map `<rel>/<stem>.<ext>` is matched to the mask `<rel>/<stem>_mask.png` or
`<rel>/<stem>.png` under --masks (also .tif/.tiff/.bmp/.npy); a map without a mask file is a normal
image, but a --masks folder in which no mask matches any map is an error (it would score every
image as normal). Masks must be binary (0 and one other value, e.g. 0/255 or 0/1). Problems (a mask without
its map, a map whose size differs from its mask, a non-binary mask, a map outside [0, 1], an
ambiguous match, an unreadable file) are all reported in one error naming the files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.errors import BenchError

MAP_SUFFIXES = (".npy", ".png", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".npy")
MASK_TAG = "_mask"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from benchmark.metrics.options import MIN_BINS, MODES, PIXEL_F1_MAX, PRO_CURVES, MetricOptions

    defaults = MetricOptions()  # the flags' defaults are the schema's, as in a run's config
    parser.add_argument("--maps", required=True, help="folder of anomaly maps (.npy float, .png/.tiff)")
    parser.add_argument("--masks", required=True, help="folder of ground-truth masks, same relative paths")
    parser.add_argument("--image-score", default=defaults.image_score, metavar="RULE",
                        help="image score rule: max (default), mean, pooled-max:K (AnomalyDiffusion: pooled-max:21)")
    parser.add_argument("--mode", default=defaults.mode, choices=MODES,
                        help=f"exact curves, histogram bins, or auto (exact up to {defaults.exact_max_pixels:.0e} pixels)")
    parser.add_argument("--iou-threshold", default=str(defaults.iou_threshold), metavar="T",
                        help=f"threshold for IoU/mIoU/Acc: a probability (default {defaults.iou_threshold}) or f1 "
                             "(the F1-max threshold)")
    parser.add_argument("--bins", type=int, default=defaults.bins,
                        help=f"bins over [0, 1] in binned mode (>= {MIN_BINS})")
    parser.add_argument("--max-fpr", type=float, default=defaults.max_fpr,
                        help=f"PRO integration limit (default {defaults.max_fpr})")
    parser.add_argument("--pro-curve", default=defaults.pro_curve, choices=PRO_CURVES,
                        help="exact PRO curve, or quantile-100 (MVTec 3D-AD au_pro_util, AnomalyDiffusion's code)")
    parser.add_argument("--pixel-f1-max", default=defaults.pixel_f1_max, choices=PIXEL_F1_MAX,
                        help="pixel F1-max over every score, or grid-21 (0, 0.05, ..., 1; AnomalyDiffusion's code)")
    parser.add_argument("--json", required=True, metavar="OUT", help="write the metrics here (results.json keys)")


def run(args: argparse.Namespace) -> int:
    from benchmark.metrics import AnomalyMetrics, MetricOptions

    options = MetricOptions(
        **MetricOptions.parse_image_score(args.image_score),
        iou_threshold=MetricOptions.parse_iou_threshold(args.iou_threshold),
        mode=args.mode,
        bins=args.bins,
        max_fpr=args.max_fpr,
        pro_curve=args.pro_curve,
        pixel_f1_max=args.pixel_f1_max,
    )
    pairs, problems = match_maps_to_masks(Path(args.maps), Path(args.masks))
    metric = AnomalyMetrics(options)
    n_anomalous = 0
    for pair in pairs:
        try:
            score = load_map(pair.map)
            mask = load_mask(pair.mask) if pair.mask else np.zeros(score.shape, dtype=bool)
        except BenchError as exc:
            problems.append(str(exc))
            continue
        if mask.shape != score.shape:
            problems.append(f"{pair.map}: map is {_hw(score.shape)} but its mask {pair.mask} is {_hw(mask.shape)}")
            continue
        n_anomalous += bool(mask.any())
        if not problems:  # after the first problem only look for more, to report them all at once
            metric.update(score[None], mask[None])
    if problems:
        raise BenchError(_problem_report(problems))

    result = metric.compute()
    record = {
        **_json_safe(result),
        "options": options.to_json(),
        "mode": metric.resolved_mode,
        "counts": {"images": len(pairs), "anomalous_images": n_anomalous, "pixels": int(metric.n_pixels)},
        "maps": str(args.maps),
        "masks": str(args.masks),
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out)
    if not getattr(args, "quiet", False):
        print_table(result, record)
    return 0


# ---------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class Pair:
    map: Path
    mask: Path | None  # None: a normal image


def match_maps_to_masks(maps_dir: Path, masks_dir: Path) -> tuple[list[Pair], list[str]]:
    """(pairs sorted by map path, problems: masks without a map, ambiguous matches)."""
    for d, what in ((maps_dir, "--maps"), (masks_dir, "--masks")):
        if not d.is_dir():
            raise BenchError(f"{what} {d}: no such folder")
    maps = _index(maps_dir, MAP_SUFFIXES, strip_tag=False)
    masks = _index(masks_dir, MASK_SUFFIXES, strip_tag=True)
    problems = []
    for index, what in ((maps, "maps"), (masks, "masks")):
        for key, paths in sorted(index.items()):
            if len(paths) > 1:
                problems.append(f"{' and '.join(map(str, sorted(paths)))}: several {what} for '{key}'; keep one")
    for key in sorted(set(masks) - set(maps)):
        problems.append(f"{masks[key][0]}: mask without a map (expected {maps_dir / key}.npy, .png or .tiff)")
    if not maps:
        raise BenchError(f"{maps_dir}: no anomaly maps ({', '.join(MAP_SUFFIXES)}) found")
    if not masks.keys() & maps.keys():  # scored anyway, every image would count as normal
        first = f" (first map: {maps[min(maps)][0]}; first mask: {masks[min(masks)][0]})" if masks else ""
        raise BenchError(
            f"--masks {masks_dir}: no mask matches any of the {len(maps)} maps{first}; a map <rel>/<stem>.<ext> "
            f"under --maps is matched to <rel>/<stem>{MASK_TAG}.png or <rel>/<stem>.png under --masks "
            f"({', '.join(s.lstrip('.') for s in MASK_SUFFIXES)}), e.g. --maps <out>/test "
            "--masks <mvtec>/<category>/ground_truth")
    return [Pair(maps[key][0], masks[key][0] if key in masks else None) for key in sorted(maps)], problems


def _index(root: Path, suffixes: tuple[str, ...], strip_tag: bool) -> dict[str, list[Path]]:
    """relative path without suffix (and without a trailing `_mask` for masks) -> files."""
    index: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in suffixes or not path.is_file() or path.name.startswith("."):
            continue
        key = path.relative_to(root).with_suffix("").as_posix()
        if strip_tag and key.endswith(MASK_TAG):
            key = key[: -len(MASK_TAG)]
        index.setdefault(key, []).append(path)
    return index


# ---------------------------------------------------------------------------- loading


def load_map(path: Path) -> np.ndarray:
    """float32 HxW in [0, 1], or BenchError naming the file."""
    if path.suffix.lower() == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BenchError(f"{path}: cannot read ({exc})") from None
        values = _squeeze_2d(values, path)
        if not np.issubdtype(values.dtype, np.floating):
            raise BenchError(f"{path}: .npy maps must hold float probabilities, got dtype {values.dtype}")
        values = values.astype(np.float32)
    else:
        values = _read_map_image(path)
    n_nan = int(np.isnan(values).sum())
    if n_nan:
        raise BenchError(f"{path}: {n_nan} NaN value(s)")
    lo, hi = float(values.min()), float(values.max())
    if lo < 0 or hi > 1:
        raise BenchError(f"{path}: values in [{lo:.6g}, {hi:.6g}], expected probabilities in [0, 1]")
    return values


def _read_map_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            values = np.asarray(img)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BenchError(f"{path}: cannot read ({exc})") from None
    if mode == "L":
        return values.astype(np.float32) / 255.0
    if mode.startswith("I;16"):
        return values.astype(np.float32) / 65535.0
    if mode == "F":
        return values.astype(np.float32)
    if mode == "1":
        return values.astype(np.float32)
    raise BenchError(
        f"{path}: image mode {mode} is not a single-channel score map; save the anomaly probability as"
        " 8-bit or 16-bit grey PNG, float TIFF, or float .npy"
    )


def load_mask(path: Path) -> np.ndarray:
    """bool HxW, or BenchError naming the file when it is unreadable or not binary."""
    if path.suffix.lower() == ".npy":
        try:
            values = _squeeze_2d(np.load(path, allow_pickle=False), path)
        except (OSError, ValueError) as exc:
            raise BenchError(f"{path}: cannot read ({exc})") from None
    else:
        from benchmark.data.images import read_mask_array

        values = read_mask_array(path)
    levels = np.unique(values)
    nonzero = levels[levels != 0]
    if nonzero.size > 1:
        shown = ", ".join(f"{v:g}" for v in levels[:6]) + (", ..." if levels.size > 6 else "")
        raise BenchError(f"{path}: mask is not binary (values {shown}); expected 0 and one other value, e.g. 0/255")
    return values != 0


def _squeeze_2d(values: np.ndarray, path: Path) -> np.ndarray:
    while values.ndim > 2 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise BenchError(f"{path}: expected an HxW array, got shape {values.shape}")
    return values


# ---------------------------------------------------------------------------- output


def _hw(shape) -> str:
    return "x".join(str(s) for s in shape)


def _problem_report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s) with the maps/masks:\n  " + "\n  ".join(sorted(problems))


def _json_safe(value):
    """NaN (undefined metric) -> null: strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}"


def print_table(result: dict, record: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    counts, opts = record["counts"], record["options"]
    rule = opts["image_score"] + (f":{opts['pool_kernel']}" if opts["image_score"] == "pooled-max" else "")
    table = Table(
        title=f"{counts['images']} images ({counts['anomalous_images']} anomalous), {record['mode']} mode, %",
        caption=f"image score {rule}; PRO to FPR {opts['max_fpr']:g}; IoU, mIoU, Acc at threshold "
        f"{result['threshold']:.4g}",
    )
    table.add_column("metric")
    table.add_column("image", justify="right")
    table.add_column("pixel", justify="right")
    img, px = result["image"], result["pixel"]
    for name, key in (("AUROC", "auroc"), ("AP", "ap"), ("F1-max", "f1_max")):
        table.add_row(name, _pct(img[key]), _pct(px[key]))
    table.add_row("PRO", "", _pct(px["pro"]))
    table.add_row("IoU", "", _pct(px["iou"]))
    table.add_row("IoU best per image", "", _pct(px["iou_best_per_image"]))
    table.add_row("mIoU", "", _pct(result["miou"]))
    table.add_row("Acc (mean class)", "", _pct(result["acc"]))
    table.add_row("Acc anomaly", "", _pct(result["acc_anomaly"]))
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench score", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
