"""DefectDiffu's sampling (Sec. 3.3, 3.4): from pure noise (no normal image, no input mask), each
step combines three eps evaluations by Eq. 4 and takes one diffusers scheduler step; the mask is
read at every step from the defect blocks' cross-attention, decoded, and averaged over the last
100 steps before its iterative threshold.

Which pass the mask reads is not stated: Eq. 4 has no (c_d, c_p) evaluation, so we read the
(c_d, null) pass, the one whose defect blocks attend the defect prompt (the third B samples of
the batched call).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from generators.defectdiffu.double_free import double_free_eps
from generators.defectdiffu.torch_model import LAST_STEPS, average_last_steps, binarize_masks, defect_block_maps
from generators.diffusion.attention import CrossAttentionHook


def defect_pass_maps(hook: CrossAttentionHook, layers: Sequence[str], batch: int) -> torch.Tensor:
    """The concatenated defect-block maps (Sec. 3.4) of the (c_d, null) pass of the last batched
    double-free call: samples [2B, 3B) of the 3B batch. Clears the hook for the next step."""
    maps = defect_block_maps(hook.records, layers)
    hook.clear()
    if len(maps) != 3 * batch:
        raise ValueError(f"expected the maps of one double-free call (3 x {batch} samples), got {len(maps)}")
    return maps[2 * batch:]


def double_free_sample(denoiser: Callable, scheduler, latents: torch.Tensor, contexts: Sequence[torch.Tensor],
                       w_p: float, w_d: float, mask_at_step: Callable[[], torch.Tensor] | None = None,
                       last: int = LAST_STEPS, generator: torch.Generator | None = None):
    """Run the scheduler's timesteps (set them first) with Eq. 4 guidance. `mask_at_step()`, called
    after each step's denoiser call, returns that step's decoded grey mask M_pre^t (B, H, W) in
    [0, 255] (e.g. `defect_pass_maps` -> `MaskGenerationModule` -> VAE decode -> `mask_gray`).
    Returns (final latents, binary (B, 1, H, W) mask or None): the masks of the last `last` steps
    averaged, then thresholded (isodata)."""
    masks = []
    for t in scheduler.timesteps:
        eps = double_free_eps(denoiser, latents, t, contexts, w_p, w_d)
        if mask_at_step is not None:
            masks.append(mask_at_step())
            masks = masks[-last:]  # only the last `last` steps count
        latents = scheduler.step(eps, t, latents, generator=generator).prev_sample
    mask = binarize_masks(average_last_steps(masks, last)) if masks else None
    return latents, mask
