"""Shared glue for generators that synthesize from a seed and learn nothing."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from benchmark.data.images import load_image
from generators.base import MASK_SYNTHESIZED, GenerationRequest, Generator, SyntheticPair


class TrainingFreeGenerator(Generator):
    trainable: ClassVar[bool] = False

    def synthesize(self, image: np.ndarray, rng: np.random.Generator,
                   request: GenerationRequest) -> tuple[np.ndarray, np.ndarray]:
        """Return (defect image uint8 HxWx3, mask bool HxW) made from a normal image.

        Every random draw comes from `rng` (seeded by the request), never from a global state, so a
        request's pair is the same in any process, batch or order."""
        raise NotImplementedError  # each baseline overrides this

    def predict_step(self, batch: list[GenerationRequest], batch_idx: int = 0) -> list[SyntheticPair]:
        pairs = []
        for request in batch:
            rng = np.random.default_rng(request.seed)
            image = load_image(request.normal_image, self.image_size)
            out, mask = self.synthesize(image, rng, request)
            pairs.append(SyntheticPair(request, out, mask, MASK_SYNTHESIZED))
        return pairs
