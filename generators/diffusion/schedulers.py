"""Noise schedules and samplers: diffusers' schedulers on the backbone's own beta schedule.

The backbone's `scheduler/scheduler_config.json` says which betas it was trained with; the LDM
(and Stable Diffusion v1) use CompVis' "linear" schedule, beta from 0.00085 to 0.012 over
T = 1000 steps, linear in sqrt(beta), which diffusers calls `scaled_linear` (LDM_SCHEDULE is the
fallback when a folder has no scheduler config). Only the schedule is taken from the backbone;
the sampler kind and its spacing are the method's choice. `training_target` is what a U-Net of
the schedule's `prediction_type` learns (eps, v or x0), so the training losses follow the backbone.
"""

from __future__ import annotations

import torch

from generators.diffusion.hub import LDM_SCHEDULE

SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")


def scheduler_class(kind: str):
    from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    classes = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler,
               "ddim_inverse": DDIMInverseScheduler}
    if kind not in classes:
        raise ValueError(f"unknown sampler '{kind}'; known: {', '.join(classes)}")
    return classes[kind]


def make_scheduler(kind: str, backbone_config: dict | None = None, **overrides):
    """A fresh `kind` scheduler ("ddpm", "ddim", "dpm", "ddim_inverse") on the backbone's beta schedule.

    Latents are not in [-1, 1], so sample clipping is off; the prediction type is the backbone's
    (epsilon for the LDM and SD v1). `overrides` go to the scheduler (e.g. timestep_spacing)."""
    source = backbone_config or LDM_SCHEDULE
    config = {k: source[k] for k in SCHEDULE_KEYS if source.get(k) is not None}
    config["prediction_type"] = source.get("prediction_type", "epsilon")
    if kind in ("ddpm", "ddim", "ddim_inverse"):
        config["clip_sample"] = False
    return scheduler_class(kind)(**{**config, **overrides})


def alphas_cumprod(scheduler) -> torch.Tensor:
    """abar_t for t = 0..T-1 (diffusers' 0-based index; papers count t = 1..T)."""
    return scheduler.alphas_cumprod.to(torch.float64)


def training_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the U-Net learns to predict for x_t = `scheduler.add_noise(x0, noise, timesteps)`, by the
    scheduler's `prediction_type`: the noise ("epsilon"), v = sqrt(abar) eps - sqrt(1 - abar) x0
    ("v_prediction", diffusers' `get_velocity`) or x0 itself ("sample")."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    if kind == "sample":
        return x0
    raise ValueError(f"unknown prediction_type '{kind}'")
