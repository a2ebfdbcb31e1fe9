"""The DDPM quantities every sampler here is built from (Ho et al. 2020), on diffusers'
`alphas_cumprod` (abar, indexed by diffusers' 0-based timestep; papers count t = 1..T).

- `add_noise`: the forward process q(x_t | x_0) (Ho et al. Eq. 4).
- `predict_x0`: x0 from a predicted noise (Ho et al. Eq. 15).
- `as_epsilon`: the eps a v- or x0-predicting U-Net's output stands for (to compare it with eps).
- `posterior`: mean and variance of q(x_{t-1} | x_t, x_0) (Ho et al. Eq. 6-7), respacing-aware.
- `ddpm_step`: one ancestral step, x_{t-1} ~ N(mean, var).
Written as plain functions rather than `DDPMScheduler.step` because methods such as STAGE's
anomaly inference need the posterior of a composed x0 and their own per-sample noise; a test shows
`ddpm_step` equals the diffusers step given the same x0 and noise.
"""

from __future__ import annotations

import torch


def add_noise(x0: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """Ho et al. Eq. 4: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps; `abar` broadcastable to x0 (B,1,1,1)."""
    abar = abar.to(x0.dtype)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, abar_t) -> torch.Tensor:
    """Ho et al. Eq. 15: x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    return (x_t - (1 - abar_t) ** 0.5 * eps) / abar_t**0.5


def as_epsilon(prediction_type: str, pred: torch.Tensor, x_t: torch.Tensor, abar_t) -> torch.Tensor:
    """The eps a U-Net's output stands for, given what it predicts (diffusers' `prediction_type`):
    "epsilon" as is; "v_prediction" (v = sqrt(abar) eps - sqrt(1 - abar) x0, Salimans & Ho 2022)
    sqrt(abar) v + sqrt(1 - abar) x_t; "sample" (x0) Eq. 4 solved for eps,
    (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
    if prediction_type == "epsilon":
        return pred
    if prediction_type == "v_prediction":
        return abar_t**0.5 * pred + (1 - abar_t) ** 0.5 * x_t
    if prediction_type == "sample":
        return (x_t - abar_t**0.5 * pred) / (1 - abar_t) ** 0.5
    raise ValueError(f"unknown prediction_type '{prediction_type}'")


def posterior(x0: torch.Tensor, x_t: torch.Tensor, abar_t, abar_prev):
    """Ho et al. Eq. 6-7: mean and variance of q(x_prev | x_t, x0). With respaced steps beta_t and
    alpha_t are those of the jump t -> prev: alpha_t = abar_t / abar_prev (Nichol & Dhariwal 2021,
    Sec. 4). abar_t, abar_prev: floats (fast in a sampling loop) or tensors broadcastable to x0."""
    alpha_t = abar_t / abar_prev
    beta_t = 1 - alpha_t
    mean = (abar_prev**0.5 * beta_t / (1 - abar_t)) * x0 + (alpha_t**0.5 * (1 - abar_prev) / (1 - abar_t)) * x_t
    var = (1 - abar_prev) / (1 - abar_t) * beta_t
    return mean, var


def ddpm_step(x0, x_t, abar_t, abar_prev, noise) -> torch.Tensor:
    """x_prev ~ N(mean, var) of the posterior; the last step (abar_prev = 1) has var = 0."""
    mean, var = posterior(x0, x_t, abar_t, abar_prev)
    return mean + var**0.5 * noise
