"""What a finished run leaves for people: results.json, metrics.csv, a grid of synthetic pairs, a
per-category bar plot, and the terminal table."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from benchmark.results import flat_metrics

TABLE_COLUMNS = [  # (results key, header, group): groups are how a narrow terminal splits the table
    ("image_auroc", "I-AUROC", "image"), ("image_ap", "I-AP", "image"), ("image_f1_max", "I-F1", "image"),
    ("pixel_auroc", "P-AUROC", "pixel"), ("pixel_ap", "P-AP", "pixel"), ("pixel_f1_max", "P-F1", "pixel"),
    ("pixel_pro", "PRO", "pixel"), ("pixel_iou", "IoU", "pixel"), ("miou", "mIoU", "segmentation"),
    ("acc", "Acc", "segmentation"),
]


def json_safe(obj):
    """NaN (a metric undefined for a category) becomes null: results.json stays strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_results(results: dict, root: Path) -> None:
    tmp = root / "results.json.tmp"
    tmp.write_text(json.dumps(json_safe(results), indent=2, allow_nan=False))
    tmp.replace(root / "results.json")
    rows = [{"category": c, **flat_metrics(m)} for c, m in results["categories"].items()]
    rows.append({"category": "mean", **flat_metrics(results["mean"])})
    fields = ["category"] + sorted({k for r in rows for k in r} - {"category"})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    tmp = root / "metrics.csv.tmp"
    tmp.write_text(buf.getvalue())
    tmp.replace(root / "metrics.csv")


def percent(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def results_table(results: dict):
    """The run's per-category table (percent) as a MetricTable: rich tables that fit the
    terminal, or Markdown / CSV for `bench run --format`."""
    from benchmark.tables import Column, MetricTable

    cfg = results["config"]
    rows = [(name, {k: percent(flat_metrics(entry).get(k)) for k, _, _ in TABLE_COLUMNS})
            for name, entry in [*results["categories"].items(), ("mean", results["mean"])]]
    folds = f", mean of {len(results['folds'])} folds" if results.get("folds") else ""
    return MetricTable(f"{cfg['generator']['name']} -> {cfg['segmenter']['name']} on {cfg['data']['name']} (%{folds})",
                       "category", [Column(*c) for c in TABLE_COLUMNS], rows, bold={"mean"})


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Red tint inside the mask and a bright outline, so thin defects stay visible."""
    from scipy import ndimage

    out = image.astype(np.float32)
    out[mask] = 0.55 * out[mask] + 0.45 * np.array([255, 0, 0])
    edge = mask & ~ndimage.binary_erosion(mask)
    out[edge] = [255, 255, 0]
    return out.astype(np.uint8)


def sample_grid(synthetic, split, path: Path, size: int, per_row: int = 6, rows_per_page: int = 8) -> list[Path]:
    """Synthetic pairs (image | image with mask overlay): one row per category, its defect types
    in turn, so every category shows. A run with no synthetic pairs (real-only) shows its few-shot
    real defects instead. More categories than `rows_per_page` continue in samples-2.png, ...;
    each PNG names its rows in its Description text chunk. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmark.data.images import load_image, load_mask

    pairs = max(1, per_row // 2)
    # category -> defect type -> [(title, image path, mask paths)]
    found: dict[str, dict[str, list]] = {}
    records = synthetic.records() if synthetic is not None else []
    for r in records:
        found.setdefault(r["category"], {}).setdefault(r["defect"], []).append(
            (f"{r['category']}/{r['defect']}", synthetic.root / r["image"], (synthetic.root / r["mask"],)))
    if not records:
        for cat in split.categories.values():
            for s in cat.few_shot_defects():
                found.setdefault(s.category, {}).setdefault(s.defect, []).append(
                    (f"{s.category}/{s.defect} (real)", s.image, s.masks))
    order = [c for c in split.categories if c in found] + sorted(c for c in found if c not in split.categories)
    rows = {c: _round_robin(found[c], pairs) for c in order}
    pages = [order[i:i + rows_per_page] for i in range(0, len(order), rows_per_page)]
    written = []
    for number, page in enumerate(pages, 1):
        out = path if number == 1 else path.with_name(f"{path.stem}-{number}{path.suffix}")
        cols = 2 * pairs
        fig, axes = plt.subplots(len(page), cols, figsize=(2 * cols, 2.1 * len(page)), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for row, category in zip(axes, page):
            for i, (title, image_path, mask_paths) in enumerate(rows[category]):
                img = load_image(image_path, size)
                mask = load_mask(mask_paths, size, shape=img.shape[:2])
                row[2 * i].imshow(img)
                row[2 * i].set_title(title, fontsize=7)
                row[2 * i + 1].imshow(overlay(img, mask))
                row[2 * i + 1].set_title("mask", fontsize=7)
        fig.tight_layout()
        fig.savefig(out, dpi=100, metadata={"Title": f"samples page {number} of {len(pages)}",
                                            "Description": "rows: " + ", ".join(page)})
        plt.close(fig)
        written.append(out)
    return written


def _round_robin(by_type: dict[str, list], n: int) -> list:
    """Up to n items taking each defect type in turn, so a category's row shows all its types first."""
    picked, depth = [], 0
    while len(picked) < n and any(depth < len(v) for v in by_type.values()):
        picked += [v[depth] for v in by_type.values() if depth < len(v)][: n - len(picked)]
        depth += 1
    return picked


def category_bars(results: dict, path: Path, metrics=("pixel_auroc", "pixel_ap", "pixel_pro", "pixel_iou", "image_auroc")) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*results["categories"], "mean"]
    entries = [*results["categories"].values(), results["mean"]]
    flat = [flat_metrics(e) for e in entries]
    x = np.arange(len(names))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 3.8))
    for i, m in enumerate(metrics):
        vals = [100 * f.get(m, float("nan")) for f in flat]
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, vals, width, label=m.replace("_", " "))
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    cfg = results["config"]
    ax.set_title(f"{cfg['generator']['name']} -> {cfg['segmenter']['name']} ({cfg['data']['name']})")
    ax.legend(fontsize=7, ncol=len(metrics), loc="upper center", bbox_to_anchor=(0.5, -0.22))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
