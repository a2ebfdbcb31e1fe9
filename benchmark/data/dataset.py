"""The dataset contract every reader returns and every stage consumes.

A category has normal train images, normal test images, and defect images with masks grouped by
defect type. Paths only: pixels are read lazily by `benchmark.data.images`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image of a dataset. `masks` is empty for normal images; MVTec LOCO gives several
    mask files per image (one per defect region), which are OR-ed when loaded."""

    image: Path
    category: str
    defect: str = GOOD
    masks: tuple[Path, ...] = ()

    @property
    def is_normal(self) -> bool:
        return self.defect == GOOD

    @property
    def id(self) -> str:
        """Stable identifier, unique inside a category: `<defect>/<file stem>`."""
        return f"{self.defect}/{self.image.stem}"

    def to_json(self) -> dict:
        return {
            "image": str(self.image),
            "category": self.category,
            "defect": self.defect,
            "masks": [str(m) for m in self.masks],
        }

    @classmethod
    def from_json(cls, d: dict) -> "Sample":
        return cls(Path(d["image"]), d["category"], d["defect"], tuple(Path(m) for m in d["masks"]))


@dataclass
class CategoryData:
    name: str
    train_good: list[Sample] = field(default_factory=list)
    test_good: list[Sample] = field(default_factory=list)
    defects: dict[str, list[Sample]] = field(default_factory=dict)

    @property
    def defect_types(self) -> list[str]:
        return sorted(self.defects)

    def all_samples(self) -> list[Sample]:
        out = list(self.train_good) + list(self.test_good)
        for t in self.defect_types:
            out += self.defects[t]
        return out


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset folder, reported by the validator."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"
