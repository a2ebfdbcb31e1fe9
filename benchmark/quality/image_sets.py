"""What the quality metrics compare: per (category, defect type), the generated pairs of a
synthetic set against the real anomalies of the few-shot split.

Sources of the real images, in order: a given split (the runner), `--real <root> --layout L`
(split with the benchmark's few-shot rule), the `split.json` of a run folder, or the built-in demo
dataset (which `bench run` uses when no data root is given). Everything is checked before any
metric runs (empty set, unreadable files, mixed sizes, a defect type without real training
anomalies), so a bad input costs seconds and never leaves half a result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmark.data.dataset import Sample
from benchmark.data.images import image_size, load_image, load_mask
from benchmark.data.split import FewShotSplit
from benchmark.errors import BenchError
from benchmark.synthetic import SyntheticSet


@dataclass(frozen=True)
class ImageItem:
    """One image and its anomaly mask file(s)."""

    image: Path
    masks: tuple[Path, ...]


@dataclass
class DefectGroup:
    category: str
    defect: str
    generated: list[ImageItem]
    reference: list[ImageItem]  # real anomalies FID/KID/nearest-LPIPS compare with
    centres: list[ImageItem]  # real few-shot training anomalies: the IC-LPIPS cluster centres


def resolve_synthetic_root(path: Path) -> tuple[Path, Path | None]:
    """(synthetic set folder, run folder or None) for a set folder or a run folder."""
    path = Path(path)
    if (path / "synthetic").is_dir() and (path / "split.json").is_file():
        return (path / "synthetic").resolve(), path
    if not path.is_dir():
        raise BenchError(f"{path}: no such folder; pass a synthetic set folder or a run folder (with synthetic/)")
    if not any(path.glob("manifest*.jsonl")):
        raise BenchError(f"{path}: holds no manifest.jsonl, so it is neither a synthetic set nor a run "
                         "folder; pass the folder `bench generate`/`bench run` wrote")
    return path.resolve(), None


def load_split(run_folder: Path | None, real_root: Path | None, layout: str, fraction: float,
               cache: Path | None = None) -> tuple[FewShotSplit, str]:
    """The few-shot split of the real images and a description of where it came from."""
    from benchmark.data.split import few_shot_split

    if real_root is not None:
        from benchmark.data.layouts import read_dataset

        if not Path(real_root).is_dir():
            raise BenchError(f"{real_root}: real dataset folder does not exist; check --real")
        return few_shot_split(read_dataset(real_root, layout), fraction), f"{layout}:{real_root}"
    if run_folder is not None:
        return FewShotSplit.load(run_folder / "split.json"), str(run_folder / "split.json")
    from benchmark.data.demo import demo_dataset_path

    root = demo_dataset_path(cache)
    from benchmark.data.layouts import read_dataset

    return few_shot_split(read_dataset(root, "mvtec"), fraction), f"demo:{root}"


def _items(samples: list[Sample]) -> list[ImageItem]:
    return [ImageItem(s.image, tuple(s.masks)) for s in samples]


def defect_groups(synthetic_root: Path, split: FewShotSplit, reference: str = "all") -> list[DefectGroup]:
    """Generated pairs grouped by (category, defect type), each with its real images.

    reference: which real anomalies FID/KID/nearest-LPIPS use: "all" (training + held-out),
    "train" (the few-shot ones) or "holdout". IC-LPIPS centres are always the training ones."""
    if reference not in ("all", "train", "holdout"):
        raise BenchError(f"unknown reference '{reference}'; known: all, train, holdout")
    records = SyntheticSet(synthetic_root).records()
    if not records:
        raise BenchError(f"{synthetic_root}: synthetic set is empty (no pair in manifest.jsonl); "
                         "generate it first (bench generate / bench run)")
    grouped: dict[tuple[str, str], list[ImageItem]] = {}
    for rec in records:
        item = ImageItem(synthetic_root / rec["image"], (synthetic_root / rec["mask"],))
        grouped.setdefault((rec["category"], rec["defect"]), []).append(item)
    groups = []
    for (category, defect), generated in sorted(grouped.items()):
        cat = split.categories.get(category)
        if cat is None:
            raise BenchError(f"{synthetic_root}: category '{category}' of the synthetic set is not in the real "
                             f"dataset (has {', '.join(sorted(split.categories))}); check --real/--layout")
        train = cat.train_defects.get(defect, [])
        if not train:
            raise BenchError(f"{synthetic_root}: {category}/{defect} has no real training anomalies to serve as "
                             "IC-LPIPS cluster centres; check --real/--layout or the split")
        holdout = cat.holdout_defects.get(defect, [])
        ref = {"all": train + holdout, "train": train, "holdout": holdout}[reference]
        groups.append(DefectGroup(category, defect, generated, _items(ref), _items(train)))
    return groups


def check_files(groups: list[DefectGroup]) -> None:
    """Every file decodes (cheap checks: PNG checksums, JPEG end marker) and the generated
    images share one size; raises on the first problem, naming the file."""
    first: tuple[Path, tuple[int, int]] | None = None
    seen: set[Path] = set()
    for group in groups:
        for item in group.generated:
            size = image_size(item.image, verify=True)
            if first is None:
                first = (item.image, size)
            elif size != first[1]:
                raise BenchError(f"{item.image}: generated image is {size[0]}x{size[1]} but {first[0]} is "
                                 f"{first[1][0]}x{first[1][1]}; a synthetic set has one size: regenerate it")
            for mask in item.masks:
                image_size(mask, verify=True)
        for item in group.reference + group.centres:
            for path in (item.image, *item.masks):
                if path not in seen:
                    seen.add(path)
                    image_size(path, verify=True)


def image_loader(items: list[ImageItem], size: int):
    """A loader for `LPIPSDistance`: indices -> (images in [-1, 1], masks), resized to size x size."""

    def load(indices):
        images = [torch.from_numpy(load_image(items[i].image, size).copy()).permute(2, 0, 1) for i in indices]
        masks = [torch.from_numpy(load_mask(list(items[i].masks), size=size) if items[i].masks
                                  else np.zeros((size, size), bool)) for i in indices]
        return torch.stack(images).float() / 127.5 - 1, torch.stack(masks)

    return load


def uint8_batches(items: list[ImageItem], size: int, batch_size: int):
    """The images as uint8 B x 3 x size x size batches (what the Inception network takes)."""
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        yield torch.stack([torch.from_numpy(load_image(i.image, size).copy()).permute(2, 0, 1) for i in chunk])
