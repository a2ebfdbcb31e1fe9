"""BADG's masked DDIM inversion (Sec. 3.2, Eq. 8) of the background latent z_0^m = (1 - m) * z_0^normal.

Written here because the shared diffusion core (generators/diffusion/) has no inversion on main
yet. The core's `generators/diffusion/inversion.py`, being added with the shared generator base,
makes the same choices (noise at the current level, timestep 0 at the first step; checked equal
to 0.0 on a toy denoiser); once it is on main, BADG should call it and keep only what is here for
its tests. The update math is diffusers' `DDIMInverseScheduler` (Eq. 4); BADG only masks the noise
it is given (Eq. 8), so the defect area of z~_t^m stays exactly zero.
"""

from __future__ import annotations

from typing import Callable

import torch

# denoise(z, timestep) -> eps_theta(z, timestep, C2)
Denoise = Callable[[torch.Tensor, int], torch.Tensor]


def masked_inversion_step(z_prev: torch.Tensor, eps: torch.Tensor, m: torch.Tensor, alpha_prev, alpha_t) -> torch.Tensor:
    """Eq. 8: z~_t^m = sqrt(alpha_t) [ sqrt(1 / alpha_{t-1}) z~_{t-1}^m + (1 - m) * (sqrt(1 / alpha_t - 1)
    - sqrt(1 / alpha_{t-1} - 1)) eps ] (Eq. 4 with the noise masked by the background)."""
    return alpha_t**0.5 * (z_prev / alpha_prev**0.5 + (1 - m) * ((1 / alpha_t - 1) ** 0.5 - (1 / alpha_prev - 1) ** 0.5) * eps)


def masked_ddim_inversion(denoise: Denoise, z0_masked: torch.Tensor, m: torch.Tensor, inverse_scheduler,
                          noise_level: str = "current", trajectory: list | None = None) -> torch.Tensor:
    """Eq. 8 over `inverse_scheduler.timesteps` (a diffusers `DDIMInverseScheduler`, timesteps set,
    ascending), from z_0^m to z~_T^m; returns z~_T^m.

    Which timestep the noise is evaluated at: Eq. 8 writes eps_theta(z~_{t-1}^m, t-1, C2), the
    noise level of the latent it is given ("current", the default; at the first step, whose level
    is the clean latent, the U-Net's lowest timestep 0). diffusers' inversion pipelines evaluate
    it at the level being stepped to ("target"), the timestep at which the sampler will undo the
    step. `trajectory`, when a list, receives z~_{t-1}^m before each step and z~_T^m at the end."""
    if noise_level not in ("current", "target"):
        raise ValueError(f"noise_level must be 'current' or 'target', not {noise_level!r}")
    step_ratio = inverse_scheduler.config.num_train_timesteps // inverse_scheduler.num_inference_steps
    z = (1 - m) * z0_masked  # z_0^m := (1 - m) * z_0^normal (a no-op when already masked)
    for t in inverse_scheduler.timesteps:
        if trajectory is not None:
            trajectory.append(z)
        level = int(t) if noise_level == "target" else max(int(t) - step_ratio, 0)
        eps = denoise(z, level)
        z = inverse_scheduler.step((1 - m) * eps, t, z).prev_sample  # Eq. 8: Eq. 4's update, noise masked
    if trajectory is not None:
        trajectory.append(z)
    return z


def masked_ddim_sampling(denoise: Denoise, z_T: torch.Tensor, m: torch.Tensor, scheduler) -> torch.Tensor:
    """The background-only path z_t^m of Proposition 3.3 (Eq. 26): DDIM sampling of z~_T^m with the
    C2 noise masked by (1 - m). The reference path the composite sampler's background must follow."""
    z = z_T
    for t in scheduler.timesteps:
        z = scheduler.step((1 - m) * denoise(z, t), t, z).prev_sample
    return z
