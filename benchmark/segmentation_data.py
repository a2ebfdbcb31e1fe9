"""What a segmenter trains and is evaluated on, as torch Datasets of (image, mask) files.

Training: every synthetic pair + the few-shot real defects + the normal train images (empty masks),
of all categories (unified) or one. Evaluation: the held-out defects + the normal test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

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


class ResumableBatches(Sampler[list[int]]):
    """The batches `DataLoader(shuffle=True, generator=g, drop_last=...)` draws (the same
    `RandomSampler` + `BatchSampler` on the same generator, so an uninterrupted run trains on
    exactly what it did before), made resumable mid-epoch: `SegmentationDataModule` saves, with
    each Lightning checkpoint, where the stream is and the RNG states the next batches' random
    flips depend on, and a resumed fit replays the rest of the epoch from there.

    Written by hand because Lightning only resumes a loader mid-epoch if it is stateful, and
    torch's DataLoader is not; exact with `num_workers=0` (flips then come from the main
    process's torch RNG); with workers the order is exact, the flips are not."""

    def __init__(self, n: int, batch_size: int, drop_last: bool, generator: torch.Generator,
                 num_samples: int | None = None):
        self.generator = generator
        sampler = RandomSampler(range(n), num_samples=num_samples, generator=generator)
        self.inner = BatchSampler(sampler, batch_size, drop_last)
        self.position = 0  # stream index (= global step) of the next batch handed out
        self.rng_before: dict[int, torch.Tensor] = {}  # stream index -> torch RNG before its batch loads
        self.generator_at_epoch_start: torch.Tensor | None = None
        self._resume: dict | None = None

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        resume, self._resume = self._resume, None
        skip = 0
        if resume is not None and resume["skip"]:
            skip = resume["skip"]
            self.generator.set_state(resume["generator"])  # the epoch's permutation, drawn again
            torch.set_rng_state(resume["rng_first"])
        self.generator_at_epoch_start = self.generator.get_state()
        for i, batch in enumerate(self.inner):
            if i < skip:
                continue
            self.rng_before[self.position] = torch.get_rng_state()
            for old in [k for k in self.rng_before if k < self.position - 4]:
                del self.rng_before[old]
            self.position += 1
            yield batch
            if resume is not None:  # the rest of the epoch continues from the checkpoint's RNG
                if resume["rng_after_first"] is not None:
                    torch.set_rng_state(resume["rng_after_first"])
                resume = None

    def state_at(self, global_step: int) -> dict:
        """What a checkpoint taken after `global_step` optimizer steps needs to continue exactly."""
        skip = global_step % len(self)
        now = torch.get_rng_state()
        state = {"position": global_step, "skip": skip, "rng_first": now, "rng_after_first": None,
                 "generator": self.generator.get_state() if skip == 0 else self.generator_at_epoch_start}
        if skip and global_step in self.rng_before:
            # the data fetcher loads one batch ahead: the next batch was loaded before the step that
            # just ended, so it replays from the RNG it was loaded with, and the rest from now
            state["rng_first"], state["rng_after_first"] = self.rng_before[global_step], now
        return state

    def load_state(self, state: dict) -> None:
        self.position = state["position"]
        if state["skip"]:
            self._resume = state
        else:  # at an epoch boundary: the next epoch starts from the saved generator and RNG
            self.generator.set_state(state["generator"])
            torch.set_rng_state(state["rng_first"])


class SegmentationDataModule(L.LightningDataModule):
    """A segmenter's training data: synthetic pairs + few-shot real defects + normal images of one
    group (all categories when unified), shuffled by `seed`, resumable mid-epoch.

    `epoch_samples` fixes an epoch's length in samples whatever the set's size (whole shuffled
    passes, then part of one: torch's RandomSampler(num_samples=...)), with the last batch kept,
    as AnomalyDiffusion's fixed-length training set and loader (docs/segmenters.md)."""

    def __init__(self, items: list[SegItem], size: int, batch_size: int, seed: int, num_workers: int = 0,
                 resumable: bool = True, epoch_samples: int | None = None):
        super().__init__()
        self.dataset = SegmentationDataset(items, size, augment=True)
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.epoch_samples = epoch_samples
        self.resumable = resumable  # False under data-parallel strategies (Lightning shards the sampler)
        self.batches: ResumableBatches | None = None

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        drop_last = self.epoch_samples is None and len(self.dataset) > self.batch_size
        common = dict(generator=generator, num_workers=self.num_workers,
                      persistent_workers=self.num_workers > 0)
        if not self.resumable and self.epoch_samples is None:
            return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, drop_last=drop_last, **common)
        if not self.resumable:  # Lightning's DDP swaps a RandomSampler for a DistributedSampler: one pass
            sampler = RandomSampler(self.dataset, num_samples=self.epoch_samples, generator=generator)
            return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler, **common)
        self.batches = ResumableBatches(len(self.dataset), self.batch_size, drop_last, generator, self.epoch_samples)
        if self._pending is not None:
            self.batches.load_state(self._pending)
            self._pending = None
        return DataLoader(self.dataset, batch_sampler=self.batches, **common)

    _pending: dict | None = None

    def batches_per_epoch(self) -> int:
        """Batches one epoch hands out (in one process)."""
        n = self.epoch_samples or len(self.dataset)
        drop_last = self.epoch_samples is None and len(self.dataset) > self.batch_size
        return n // self.batch_size if drop_last else -(-n // self.batch_size)

    def state_dict(self) -> dict:
        # Lightning saves a datamodule's state_dict in every checkpoint (key = class name)
        if self.batches is None or self.trainer is None:
            return {}
        return {"batches": self.batches.state_at(self.trainer.global_step)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("batches") is not None:
            self._pending = state["batches"]
