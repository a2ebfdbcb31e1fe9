"""What a few-shot defect generator learns from, and where it puts a given mask.

Training: the few-shot defect images of every concept of the split (`concepts.split_concepts`)
with their masks, loaded once at the generator's resolution; random horizontal/vertical flips per
sample. Generation: a few-shot real mask of the requested type, moved by a random rot90/flip/shift
drawn from the request's seed and always kept whole inside the image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, RandomSampler, Sampler

from benchmark.contracts import FewShotSplit
from benchmark.data.images import load_image, load_mask
from generators.diffusion.concepts import concept_name, prompt_text, split_concepts


class FewShotDefects(Dataset):
    """(image in [-1, 1] (3,R,R), mask (1,R,R) in {0,1}, concept index) per few-shot defect;
    `concepts[k]` and `texts[k]` are the name and prompt text of concept index k."""

    def __init__(self, split: FewShotSplit, resolution: int, prompt: str = "{category} {defect}"):
        self.concepts = [concept_name(c, d) for c, d in split_concepts(split)]
        self.texts = [prompt_text(c, d, prompt) for c, d in split_concepts(split)]
        self.items = []
        for k, (category, defect) in enumerate(split_concepts(split)):
            for sample in split.categories[category].train_defects[defect]:
                image = torch.tensor(load_image(sample.image, resolution)).permute(2, 0, 1).float() / 127.5 - 1
                mask = torch.tensor(load_mask(sample, resolution)).float()[None]
                self.items.append((image, mask, k))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class ResumableDraws(Sampler[int]):
    """The indices `RandomSampler(replacement=True, num_samples, generator=seeded(seed))` draws,
    able to start at draw `start`: a fit resumed at step k with batch size b sets start = k * b
    and sees the batches an uninterrupted fit would have seen. Hand-written because Lightning
    replays a non-stateful loader from its first batch on resume. The length stays the full
    count so the epoch Lightning plans is the same either way."""

    def __init__(self, n: int, num_samples: int, seed: int):
        self.n, self.num_samples, self.seed = n, num_samples, seed
        self.start = 0

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        start, self.start = self.start, 0
        draws = RandomSampler(range(self.n), replacement=True, num_samples=self.num_samples,
                              generator=torch.Generator().manual_seed(self.seed))
        for i, index in enumerate(draws):
            if i >= start:
                yield index


def random_flips(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator):
    """Flip each sample left-right and/or up-down with probability 1/2 each (image and mask alike)."""
    flips = torch.rand(len(images), 2, generator=generator) < 0.5
    images, masks = images.clone(), masks.clone()
    for i, (lr, ud) in enumerate(flips.tolist()):
        dims = [d for d, on in ((-1, lr), (-2, ud)) if on]
        if dims:
            images[i], masks[i] = images[i].flip(dims), masks[i].flip(dims)
    return images, masks


def place_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random rot90 (square masks), flips and an integer shift that keeps every mask pixel inside."""
    if mask.shape[0] == mask.shape[1]:
        mask = np.rot90(mask, int(rng.integers(4)))
    if rng.random() < 0.5:
        mask = mask[:, ::-1]
    if rng.random() < 0.5:
        mask = mask[::-1]
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.ascontiguousarray(mask)
    h, w = mask.shape
    dy = int(rng.integers(-ys.min(), h - ys.max()))
    dx = int(rng.integers(-xs.min(), w - xs.max()))
    out = np.zeros_like(mask, dtype=bool)
    out[ys + dy, xs + dx] = True
    return out
