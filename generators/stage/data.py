"""What STAGE learns from and how it places masks.

Training: the few-shot defect images of every (category, defect type) of the split with their
masks, loaded once at the generator's resolution; random horizontal/vertical flips per sample.
Generation: a few-shot real mask of the requested type (the base class pairs it with a random
normal image), moved by a random rot90/flip/shift drawn from the request's seed, always kept whole
inside the image (the authors' code pairs random normals with the real masks as they are).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from benchmark.data.images import load_image, load_mask
from benchmark.data.split import FewShotSplit


def concept_name(category: str, defect: str) -> str:
    return f"{category}/{defect}"


def prompt_text(category: str, defect: str, template: str = "{category} {defect}") -> str:
    """The paper's prompt "<class name> <anomaly type>" (the learned tokens follow it)."""
    return template.format(category=category, defect=defect).replace("_", " ")


def split_concepts(split: FewShotSplit) -> list[tuple[str, str]]:
    return [(c.name, d) for c in split.categories.values() for d in c.defect_types if c.train_defects[d]]


class FewShotDefects(Dataset):
    """(image in [-1, 1] (3,R,R), mask (1,R,R) in {0,1}, concept index) per few-shot defect."""

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
