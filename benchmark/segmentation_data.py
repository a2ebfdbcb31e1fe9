"""What a segmenter trains and is evaluated on, as torch Datasets of (image, mask) files.

Training: every synthetic pair + the few-shot real defects + the normal train images (empty masks),
of all categories (unified) or one. Evaluation: the held-out defects + the normal test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from benchmark.data.dataset import Sample
from benchmark.data.images import load_image, load_mask
from benchmark.data.split import FewShotSplit
from benchmark.synthetic import SyntheticSet


@dataclass(frozen=True)
class SegItem:
    image: str
    masks: tuple[str, ...]  # empty: normal image
    category: str
    id: str
    source: str  # "synthetic" | "real" | "normal"


def items_from_samples(samples: list[Sample], source: str) -> list[SegItem]:
    return [SegItem(str(s.image), tuple(str(m) for m in s.masks), s.category, s.id, source) for s in samples]


def training_items(split: FewShotSplit, synthetic: SyntheticSet | None, category: str | None = None) -> list[SegItem]:
    cats = [split.categories[category]] if category else list(split.categories.values())
    names = {c.name for c in cats}
    items = []
    if synthetic is not None:
        for r in synthetic.records():
            if r["category"] in names:
                items.append(SegItem(str(synthetic.root / r["image"]), (str(synthetic.root / r["mask"]),),
                                     r["category"], "synthetic/" + r["id"], "synthetic"))
    for c in cats:
        items += items_from_samples(c.few_shot_defects(), "real")
        items += items_from_samples(c.train_good, "normal")
    return items


def evaluation_items(split: FewShotSplit, category: str) -> list[SegItem]:
    return items_from_samples(split.categories[category].evaluation_samples(), "eval")


class SegmentationDataset(Dataset):
    """Images resized to `size` x `size`, in [0, 1]; masks nearest-resized, long {0, 1}.
    `augment` adds random flips from torch's RNG, which `seed_everything(workers=True)` seeds in
    the main process and in every loader worker, so runs repeat."""

    def __init__(self, items: list[SegItem], size: int, augment: bool = False):
        self.items, self.size, self.augment = items, size, augment

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        image = load_image(item.image, self.size)
        mask = load_mask(tuple(Path(m) for m in item.masks), self.size, shape=image.shape[:2])
        if self.augment:
            flip_h, flip_v = (torch.rand(2) < 0.5).tolist()
            if flip_h:
                image, mask = image[:, ::-1], mask[:, ::-1]
            if flip_v:
                image, mask = image[::-1], mask[::-1]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255,
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
            "category": item.category,
            "id": item.id,
        }
