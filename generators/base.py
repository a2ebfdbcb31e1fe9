"""The generator contract.

A generator is a LightningModule. `fit` (Lightning `trainer.fit`, only when `trainable`) learns from
the few-shot defects and normal images of the split; `generate` is Lightning `predict`: each batch is
a list of `GenerationRequest`s and `predict_step` returns one `SyntheticPair` per request, so the
requests shard across data-parallel ranks and `benchmark.synthetic.SyntheticSetWriter` (a
prediction-writer callback) writes each pair the moment it exists.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import ClassVar

import lightning as L

# the contract types live in a leaf module both sides import; re-exported here for generator code
from benchmark.contracts import (  # noqa: F401
    MASK_GIVEN,
    MASK_PREDICTED,
    MASK_SYNTHESIZED,
    CategorySplit,
    FewShotSplit,
    GenerationRequest,
    SyntheticPair,
    collate_requests,
)
from generators.options import GeneratorOptions  # noqa: F401  (re-exported for generator modules)


class Generator(L.LightningModule):
    name: ClassVar[str]
    # part of the synthetic-set cache key: bump it when a change alters the pairs a config makes
    code_version: ClassVar[int] = 1
    trainable: ClassVar[bool] = False
    uses_given_masks: ClassVar[bool] = False
    # True: every pixel is generated and the mask predicted (no normal image to keep outside it);
    # `bench check-pairs` then checks the set's masks and images instead of each pair's background
    repaints_image: ClassVar[bool] = False
    Options: ClassVar[type[GeneratorOptions]] = GeneratorOptions
    # profile -> option overrides; merged over Options defaults, under the user's --set overrides
    presets: ClassVar[dict[str, dict]] = {}

    def __init__(self, options: GeneratorOptions, image_size: int):
        super().__init__()
        self.options = options
        self.image_size = image_size
        self.split: FewShotSplit | None = None

    @classmethod
    def preflight(cls, options: GeneratorOptions, image_size: int) -> None:
        """Raise a BenchError for what the method needs from outside the run and lacks (a weights
        folder, a texture folder, a size its backbone cannot take), cheaply and without loading a
        model: `bench run` calls it before its first stage."""

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
        from benchmark.storage import atomic_torch_save

        atomic_torch_save({"generator": self.name, "options": self.options.model_dump(mode="json"),
                           "state": self.trained_state()}, path)

    def load_trained(self, path: Path) -> None:
        from benchmark.errors import BenchError
        from benchmark.storage import load_weights

        try:
            blob = load_weights(path)
        except Exception as e:  # noqa: BLE001  (torch raises several types for a foreign or broken file)
            raise BenchError(f"{path}: not a generator checkpoint readable with weights_only=True "
                             f"({type(e).__name__}); use the generator.pt of a synthetic set") from None
        if not isinstance(blob, dict) or "state" not in blob:
            raise BenchError(f"{path}: not a generator checkpoint (no 'state'); use the generator.pt of a synthetic set")
        if blob.get("generator") not in (None, self.name):
            raise BenchError(f"{path}: a checkpoint of generator '{blob['generator']}', not '{self.name}'")
        self.load_trained_state(blob["state"])

