"""The generator contract.

A generator is a LightningModule. `fit` (Lightning `trainer.fit`, only when `trainable`) learns from
the few-shot defects and normal images of the split; `generate` is Lightning `predict`: each batch is
a list of `GenerationRequest`s and `predict_step` returns one `SyntheticPair` per request, so the
requests shard across data-parallel ranks and `benchmark.synthetic.SyntheticSetWriter` (a
prediction-writer callback) writes each pair the moment it exists.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import lightning as L
import numpy as np
from pydantic import BaseModel, ConfigDict

from benchmark.data.split import CategorySplit, FewShotSplit

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


class GeneratorOptions(BaseModel):
    """Options every generator shares; methods subclass this with their own fields."""

    model_config = ConfigDict(extra="forbid")
    pairs_per_type: int = 10
    batch_size: int = 4  # requests per predict step


class Generator(L.LightningModule):
    name: ClassVar[str]
    trainable: ClassVar[bool] = False
    uses_given_masks: ClassVar[bool] = False
    Options: ClassVar[type[GeneratorOptions]] = GeneratorOptions
    # profile -> option overrides; merged over Options defaults, under the user's --set overrides
    presets: ClassVar[dict[str, dict]] = {}

    def __init__(self, options: GeneratorOptions, image_size: int):
        super().__init__()
        self.options = options
        self.image_size = image_size
        self.split: FewShotSplit | None = None

    # -- data the method learns from ------------------------------------------------------
    def setup_split(self, split: FewShotSplit) -> None:
        """Called before fit and generate with the few-shot split (only its train parts may be used)."""
        self.split = split

    # -- planning ---------------------------------------------------------------------------
    def plan(self, split: FewShotSplit, seed: int) -> list[GenerationRequest]:
        """`pairs_per_type` requests per (category, defect type) that has few-shot defects.
        Deterministic in `seed`; each request gets its own seed so pairs don't depend on batching."""
        requests = []
        for cat in split.categories.values():
            for defect in cat.defect_types:
                requests += self._plan_type(cat, defect, seed)
        return requests

    def _plan_type(self, cat: CategorySplit, defect: str, seed: int) -> list[GenerationRequest]:
        rng = random.Random(f"{seed}/{cat.name}/{defect}")
        shots = cat.train_defects[defect]
        if not cat.train_good or not shots:
            return []
        out = []
        for i in range(self.options.pairs_per_type):
            normal = rng.choice(cat.train_good)
            mask = tuple(str(m) for m in rng.choice(shots).masks) if self.uses_given_masks else None
            out.append(GenerationRequest(
                id=f"{cat.name}/{defect}/{i:05d}", category=cat.name, defect=defect,
                normal_image=str(normal.image), mask=mask, seed=rng.randrange(2**31),
            ))
        return out

    # -- generation (Lightning predict) ---------------------------------------------------
    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # requests are file names and seeds; the method moves its own tensors
        if isinstance(batch, list) and batch and isinstance(batch[0], GenerationRequest):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def predict_step(self, batch: list[GenerationRequest], batch_idx: int = 0) -> list[SyntheticPair]:
        raise NotImplementedError  # every concrete generator overrides this

    # -- checkpoints of the trained parts ---------------------------------------------------
    def trained_state(self) -> dict:
        """What `bench generate` needs to reuse a trained generator without retraining."""
        return self.state_dict()

    def load_trained_state(self, state: dict) -> None:
        self.load_state_dict(state)

    def save_trained(self, path: Path) -> None:
        import torch

        tmp = Path(str(path) + ".tmp")
        torch.save({"generator": self.name, "options": self.options.model_dump(), "state": self.trained_state()}, tmp)
        tmp.replace(path)

    def load_trained(self, path: Path) -> None:
        import torch

        blob = torch.load(path, map_location="cpu", weights_only=False)
        self.load_trained_state(blob["state"])


def collate_requests(batch: list[GenerationRequest]) -> list[GenerationRequest]:
    return batch
