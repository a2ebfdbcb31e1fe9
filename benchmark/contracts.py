"""The types both sides of the generator/segmenter seam agree on. A leaf: it imports only the
standard library, numpy and the split types, never Lightning, generators or the runner.

- `GenerationRequest`: what a generator is asked to make (category, defect type, a normal image,
  a mask or none, a seed); its `id` is stable and is the resume key of a synthetic set.
- `SyntheticPair`: what it returns (uint8 image, bool mask, and where the mask came from).
- `FewShotSplit` / `CategorySplit`: which real images train and which evaluate.
- `BenchError`: a problem the user can fix, shown as one line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from benchmark.data.split import CategorySplit, FewShotSplit
from benchmark.errors import BenchError

__all__ = ["MASK_GIVEN", "MASK_PREDICTED", "MASK_SYNTHESIZED", "GenerationRequest", "SyntheticPair",
           "CategorySplit", "FewShotSplit", "BenchError", "collate_requests"]

MASK_GIVEN = "given"  # the request's mask, possibly moved/flipped by the generator
MASK_PREDICTED = "predicted"  # the method predicts the mask with the image
MASK_SYNTHESIZED = "synthesized"  # a training-free method draws its own mask


@dataclass(frozen=True)
class GenerationRequest:
    id: str  # "<category>/<defect>/<index:05d>": unique, stable, the resume key
    category: str
    defect: str
    normal_image: str
    mask: tuple[str, ...] | None  # mask files of a few-shot real defect, or None
    seed: int

    def to_json(self) -> dict:
        d = asdict(self)
        d["mask"] = list(self.mask) if self.mask is not None else None
        return d


@dataclass
class SyntheticPair:
    request: GenerationRequest
    image: np.ndarray  # uint8 HxWx3
    mask: np.ndarray  # bool HxW
    mask_origin: str


def collate_requests(batch: list[GenerationRequest]) -> list[GenerationRequest]:
    """Requests stay a list (file names and seeds); each generator loads its own tensors."""
    return batch
