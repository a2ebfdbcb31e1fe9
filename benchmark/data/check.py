"""The dataset validator: every problem of a dataset folder at once, each with its file path.

Structural problems come from the layout reader (`benchmark.data.layouts.scan_dataset`): a defect
image without mask, a mask without image, a listed file that is missing, a category without train
or defect images. The pixel checks here add: unreadable or truncated files, a mask whose size
differs from its image, a non-binary mask, a defect whose mask is all zero.

Speed: images are checked from their headers (plus PNG checksums and the JPEG end marker); only
masks are decoded, since their values are what is checked. Files are checked on a thread pool
(PIL's decoders release the GIL).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmark.data.dataset import Problem, Sample
from benchmark.data.images import UnreadableFileError, image_size, read_mask_array
from benchmark.data.layouts import get_layout, scan_dataset

# VisA masks hold class ids (spot-diff's id2class.py has at most 9 classes per category); more
# levels than this, or larger values, mean a resampled or lossy-saved mask.
MAX_CLASS_ID = 31


def check_dataset(root: Path | str, layout: str, categories: Sequence[str] | None = None) -> list[Problem]:
    """Every problem of the dataset at `root` in `layout`, sorted by path; [] when it is clean.

    Raises BenchError (one line) only when there is no dataset to check: unknown layout,
    missing root, a root in another layout, unknown categories."""
    scan = scan_dataset(root, layout, categories)
    mask_encoding = get_layout(layout).mask_encoding
    samples = [s for data in scan.categories.values() for s in data.all_samples()]
    return sorted(set(scan.problems + check_samples(samples, mask_encoding)), key=lambda p: (str(p.path), p.message))


def check_samples(samples: Sequence[Sample], mask_encoding: str = "binary") -> list[Problem]:
    """The pixel checks of `check_sample` over many samples, on a thread pool."""
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = pool.map(lambda s: check_sample(s, mask_encoding), samples, chunksize=16)
        return [p for problems in found for p in problems]


def check_sample(sample: Sample, mask_encoding: str = "binary") -> list[Problem]:
    """Pixel-level problems of one image and its masks."""
    problems = []
    try:
        width, height = image_size(sample.image, verify=True)
    except UnreadableFileError as exc:
        problems.append(Problem(exc.path, f"unreadable image: {exc.reason}"))
        width = height = None
    readable_masks, any_defect = 0, False
    for mask_path in sample.masks:
        try:
            values = read_mask_array(mask_path)
        except UnreadableFileError as exc:
            problems.append(Problem(exc.path, f"unreadable mask: {exc.reason}"))
            continue
        if width is not None and values.shape != (height, width):
            problems.append(
                Problem(
                    mask_path,
                    f"mask is {values.shape[1]}x{values.shape[0]} but its image {sample.image} "
                    f"is {width}x{height}",
                )
            )
        levels = mask_levels(values)
        if not levels_are_valid(levels, mask_encoding):
            problems.append(Problem(mask_path, f"mask is not binary: {_describe(levels, mask_encoding)}"))
        readable_masks += 1
        any_defect = any_defect or bool(levels[-1] > 0)
    if readable_masks and not any_defect:
        where = sample.masks[0] if len(sample.masks) == 1 else sample.masks[0].parent
        problems.append(Problem(where, f"mask of defect image {sample.image} is all zero"))
    return problems


def mask_levels(values: np.ndarray) -> np.ndarray:
    """The distinct values of a mask, sorted (bincount: O(n), faster than np.unique on uint8)."""
    if values.dtype == np.uint8:
        return np.flatnonzero(np.bincount(values.ravel(), minlength=256))
    return np.unique(values)


def levels_are_valid(levels: np.ndarray, mask_encoding: str) -> bool:
    """Binary: 0 and at most one positive level ({0, 255}, {0, 1}, LOCO's per-type grey level).
    Class ids (VisA): 0 and small integers, one per defect class."""
    positive = levels[levels > 0]
    if len(positive) <= 1:
        return True
    return mask_encoding == "class_ids" and int(positive.max()) <= MAX_CLASS_ID


def _describe(levels: np.ndarray, mask_encoding: str, shown: int = 6) -> str:
    head = ", ".join(str(int(v)) for v in levels[:shown])
    expected = "one positive value" if mask_encoding == "binary" else f"class ids up to {MAX_CLASS_ID}"
    return (
        f"{len(levels)} levels ({head}{', ...' if len(levels) > shown else ''}), expected 0 and "
        f"{expected}; fix: re-save it with 0 for normal and 255 for defect pixels, nearest-neighbour "
        "resizing and a lossless format"
    )
