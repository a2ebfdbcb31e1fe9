"""Few-shot split of the real defects: a few train the generator and segmenter, the rest evaluate.

Per defect type, the first `fraction` of defect images by sorted file id train (SeaS/AnomalyDiffusion
protocol: one third, lowest ids). The authors' code takes `[:n]` for training and `[n-1:]` for
testing, so one image lands in both; here the two parts are disjoint by construction.

Two folds (`split.folds=2`, BADG App. A.1: "one fold contains the first half of the anomaly test
samples, while the other fold contains the second half"): per defect type, the images in the same
order (sorted ids, or the seeded shuffle of `order=random`) are cut into a first half of
ceil(n / 2) images (so with an odd count the first half has the extra image, and a type with one
image has an empty second half) and a second half. Fold 1 trains on the first half and evaluates
the second; fold 2 swaps them, so every defect image is evaluated exactly once over the two folds.
Normal images are the same in both folds (all training normals train, all test normals evaluate).
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.data.dataset import CategoryData, Sample
from benchmark.errors import BenchError


def natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


@dataclass
class CategorySplit:
    name: str
    train_good: list[Sample]
    test_good: list[Sample]
    train_defects: dict[str, list[Sample]] = field(default_factory=dict)
    holdout_defects: dict[str, list[Sample]] = field(default_factory=dict)

    @property
    def defect_types(self) -> list[str]:
        return sorted(self.train_defects)

    def evaluation_samples(self) -> list[Sample]:
        return list(self.test_good) + [s for t in self.defect_types for s in self.holdout_defects[t]]

    def few_shot_defects(self) -> list[Sample]:
        return [s for t in self.defect_types for s in self.train_defects[t]]


@dataclass
class FewShotSplit:
    fraction: float
    order: str
    seed: int
    categories: dict[str, CategorySplit]
    fold: int | None = None  # 1 or 2 for a fold of the two-fold protocol; None: one split by fraction

    def to_json(self) -> dict:
        def samples(xs):
            return [s.to_json() for s in xs]

        # "fold" only when set: a one-split run's split.json (and the synthetic-set key made from it)
        # stays what it was before folds existed
        return {
            "fraction": self.fraction,
            "order": self.order,
            "seed": self.seed,
            **({"fold": self.fold} if self.fold is not None else {}),
            "categories": {
                name: {
                    "train_good": samples(c.train_good),
                    "test_good": samples(c.test_good),
                    "train_defects": {t: samples(v) for t, v in c.train_defects.items()},
                    "holdout_defects": {t: samples(v) for t, v in c.holdout_defects.items()},
                }
                for name, c in self.categories.items()
            },
        }

    @classmethod
    def from_json(cls, d: dict) -> "FewShotSplit":
        def samples(xs):
            return [Sample.from_json(x) for x in xs]

        cats = {
            name: CategorySplit(
                name,
                samples(c["train_good"]),
                samples(c["test_good"]),
                {t: samples(v) for t, v in c["train_defects"].items()},
                {t: samples(v) for t, v in c["holdout_defects"].items()},
            )
            for name, c in d["categories"].items()
        }
        return cls(d["fraction"], d["order"], d["seed"], cats, d.get("fold"))

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "FewShotSplit":
        return cls.from_json(json.loads(path.read_text()))


def n_train(n: int, fraction: float) -> int:
    """Number of training images of a defect type: ceil of the fraction, at least 1, and at least
    one image left for evaluation when the type has two or more."""
    k = max(1, math.ceil(n * fraction - 1e-9))
    return min(k, n - 1) if n >= 2 else k


def few_shot_split(
    categories: dict[str, CategoryData], fraction: float = 1 / 3, order: str = "id", seed: int = 0,
    fold: int | None = None,
) -> FewShotSplit:
    """The split by `fraction`; with `fold` (1 or 2), that fold of the two-fold protocol (module
    docstring): fold 1 is the split at fraction 1/2, fold 2 the same halves swapped."""
    if fold is not None:
        if fold not in (1, 2):
            raise BenchError(f"split fold must be 1 or 2, got {fold}")
        fraction = 0.5
    if not 0 < fraction < 1:
        raise BenchError(f"split fraction must be in (0, 1), got {fraction}")
    if order not in ("id", "random"):
        raise BenchError(f"split order must be 'id' or 'random', got '{order}'")
    out = {}
    for name, cat in categories.items():
        split = CategorySplit(name, list(cat.train_good), list(cat.test_good))
        for defect in cat.defect_types:
            samples = sorted(cat.defects[defect], key=lambda s: natural_key(s.image.stem))
            if order == "random":
                random.Random(f"{seed}/{name}/{defect}").shuffle(samples)
            k = n_train(len(samples), fraction)
            first, second = samples[:k], samples[k:]
            if fold == 2:  # the other fold: the half fold 1 evaluated trains, and the other way round
                first, second = second, first
            split.train_defects[defect] = first
            split.holdout_defects[defect] = second
        out[name] = split
    return FewShotSplit(fraction, order, seed, out, fold)
