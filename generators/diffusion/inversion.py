"""BADG's masked DDIM inversion (Sec. 3.2, Eq. 8): run DDIM backwards from the background
latent z0^m = (1 - m) * z0 to z~_T^m, with the noise update applied outside the mask only:

    z~_t^m = sqrt(a_t) [ z~_{t-1}^m / sqrt(a_{t-1})
                         + (1 - m) (sqrt(1/a_t - 1) - sqrt(1/a_{t-1} - 1)) eps(z~_{t-1}^m, t-1, C) ]

(a = abar). diffusers' `DDIMInverseScheduler.step` is that update with the full eps and is linear
in it, so passing (1 - m) * eps keeps the scheduler's own math. Inside the mask the latent stays
0, so BADG's start z_T^* = z~_T^m + m * eps (Theorem 3.2) has pure noise there. The denoiser is
evaluated at the current (less noisy) timestep t - 1, as Eq. 8 writes it (at the first step,
whose level is the clean latent, the U-Net's lowest timestep 0). diffusers' inversion pipelines
evaluate it at the level being stepped to instead; neither is exact in general (Eq. 22 is an Euler
step), both are for a noise that does not depend on z or t. `masked_inversion_step` is Eq. 8
written out, the reference the scheduler's step is tested against.
"""

from __future__ import annotations

import torch

from generators.diffusion.denoiser import Denoiser


def masked_inversion_step(z_prev: torch.Tensor, eps: torch.Tensor, m: torch.Tensor, alpha_prev, alpha_t) -> torch.Tensor:
    """BADG Eq. 8: z~_t^m = sqrt(a_t) [ sqrt(1 / a_{t-1}) z~_{t-1}^m + (1 - m) (sqrt(1 / a_t - 1)
    - sqrt(1 / a_{t-1} - 1)) eps ] (Eq. 4 with the noise masked by the background)."""
    return alpha_t**0.5 * (z_prev / alpha_prev**0.5 + (1 - m) * ((1 / alpha_t - 1) ** 0.5 - (1 / alpha_prev - 1) ** 0.5) * eps)


@torch.no_grad()
def masked_ddim_inversion(z0: torch.Tensor, mask: torch.Tensor, denoiser: Denoiser, scheduler, steps: int,
                          context=None, return_trajectory: bool = False):
    """z~_T^m from z0 (B,C,h,w) and a binary latent mask (B,1,h,w) (1 = defect area) with a
    `DDIMInverseScheduler` (`make_scheduler("ddim_inverse", ...)`) over `steps` steps. With
    `return_trajectory`, also every latent on the way (z~_0^m first)."""
    scheduler.set_timesteps(steps)
    keep = 1 - mask.to(z0.dtype)
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    z = keep * z0  # z0^m := (1 - m) * z0_normal
    path = [z]
    for t in scheduler.timesteps:
        current = max(int(t) - stride, 0)  # the level z is at (the first step starts from the clean latent)
        eps = denoiser(z, current, context)
        z = scheduler.step(keep * eps, int(t), z).prev_sample  # Eq. 8: the eps update masked by (1 - m)
        path.append(z)
    return (z, path) if return_trajectory else z
