"""real-only: no synthetic pairs at all.

The segmenter trains on the few-shot real defects and the normal images only; every synthesis
method must beat this row to be worth its compute.
"""

from __future__ import annotations

from generators.base import GenerationRequest, Generator, SyntheticPair


class RealOnly(Generator):
    name = "real-only"

    def plan(self, split, seed: int) -> list[GenerationRequest]:
        return []

    def predict_step(self, batch, batch_idx: int = 0) -> list[SyntheticPair]:
        return []
