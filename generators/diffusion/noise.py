"""Per-sample random streams, so a generated pair depends on its request's seed only.

Each sample of a batch draws from its own CPU `torch.Generator`, so the same request gives the
same pair whatever the batch it lands in, the number of ranks, or the device (noise is drawn on
the CPU and moved).
"""

from __future__ import annotations

import torch


class PerSampleNoise:
    def __init__(self, seeds: list[int], device=None, dtype=torch.float32):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.device, self.dtype = device, dtype

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, *shape: int) -> torch.Tensor:
        """(B, *shape) standard normal, sample b drawn from generator b."""
        x = torch.empty((len(self.generators), *shape), dtype=self.dtype)
        for row, g in zip(x, self.generators):
            torch.randn(shape, generator=g, dtype=self.dtype, out=row)
        return x if self.device is None else x.to(self.device, non_blocking=True)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(*x.shape[1:])
