"""STAGE's graded sampling loop (Algorithm 1 with Eq. 7 and 8) step by step against a hand computation.

A toy denoiser whose two branches answer differently (and depend on the mask they are given) and
a scripted noise source (known tensors, drawn in order) make every latent of the loop a known
number. The reference below recomputes each step from the paper, independently of
`generators.stage.torch_model`: the DDPM posterior as the product of the two Gaussians of Ho et
al. 2020 (Eq. 2 is its closed form), binary blends as `where`, soft blends as `lerp`. It checks
the latent that enters each denoiser call and the final x0, so a change of the blend rule, the
mask used, the interval bounds or the branch switch fails (issue 17, part 2).

Noise order (the loop's seeded contract, one draw per line): x_T; the filler of x^p_T; then per
step the background noise of x^back_{t-1}, the posterior noise, and, when the next step is an
anomaly-only step, the noise of q(M_{t-1} | M0).
"""

from __future__ import annotations

import math

import pytest
import torch

from generators.stage.torch_model import AWARE, ONLY, SamplingConfig, graded_diffusion

T = 1000
# respaced steps as diffusers indices; t = index + 1 hits both interval bounds (800, 400, 300),
# steps inside and outside both intervals, t_s = 200 and the last step (t = 1)
TIMESTEPS = [999, 899, 799, 699, 599, 399, 299, 249, 199, 99, 0]
PAPER = SamplingConfig()  # intervals (1000, 800), (400, 300); t_s = 200; EMA; AIF


def abar_schedule() -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)  # DDPM's linear schedule
    return torch.cumprod(1 - betas, 0)


class ScriptedNoise:
    """Known 'random' tensors, handed out in order; the reference reads the same list."""

    def __init__(self, draws: list[torch.Tensor]):
        self.draws, self.used = draws, 0

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        out = self.draws[self.used]
        assert out.shape == x.shape
        self.used += 1
        return out.clone()


class ToyDenoiser:
    """eps = a x + b mask + c t + d mean(x), (a, b, c, d) per branch; the spatial mean stands in for
    a network's receptive field, so the background's latent reaches the anomaly (as in a U-Net).
    Records what it is given."""

    COEFFS = {AWARE: (0.3, 0.7, 1e-4, 0.5), ONLY: (-0.4, 1.3, -2e-4, -0.8)}

    def __init__(self):
        self.calls: list[tuple[int, str, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, index, branch, mask):
        self.calls.append((index, branch, x.clone(), mask.clone()))
        a, b, c, d = self.COEFFS[branch]
        return a * x + b * mask + c * (index + 1) + d * x.mean(dim=(-2, -1), keepdim=True)


def setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (1, 2, 4, 4)
    x_back = torch.randn(shape, generator=g, dtype=torch.float64)
    m0 = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    m0[..., 1:3, 0:2] = 1.0
    m0[..., 3, 3] = 1.0
    draws = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(4 * len(TIMESTEPS) + 2)]
    return x_back, m0, draws


# ------------------------------------------------------------------------------ the hand computation


def gaussian_posterior(x0, x_t, abar_t, abar_prev):
    """q(x_prev | x_t, x0) from N(x_t; sqrt(alpha) x_prev, beta) * N(x_prev; sqrt(abar_prev) x0,
    1 - abar_prev): precision-weighted mean, variance = 1 / total precision."""
    if abar_prev == 1.0:  # the last step: x_prev = x0 exactly
        return x0, 0.0
    alpha = abar_t / abar_prev
    beta = 1.0 - alpha
    p_lik, p_prior = alpha / beta, 1.0 / (1.0 - abar_prev)
    mean = (math.sqrt(alpha) / beta * x_t + math.sqrt(abar_prev) / (1.0 - abar_prev) * x0) / (p_lik + p_prior)
    return mean, 1.0 / (p_lik + p_prior)


def hard(m0, inside, outside):
    return torch.where(m0.expand_as(inside) > 0.5, inside, outside)


def soft(m, inside, outside):
    return torch.lerp(outside, inside, m.expand_as(inside))  # outside + m (inside - outside)


def anomaly_only_step(t: int, cfg: SamplingConfig) -> bool:
    """Alg. 1: t in [d1, d2], bounds included."""
    return cfg.graded and any(lo <= t <= hi for hi, lo in (sorted(iv, reverse=True) for iv in cfg.intervals))


def reference(x_back, m0, draws, abar, cfg: SamplingConfig, denoise):
    """Returns (the latent each denoiser call receives, with its branch and mask; the final x0)."""
    noise = iter(draws)
    a = [float(v) for v in abar]
    seen = []
    x = next(noise)  # x_T ~ N(0, I)
    xp = hard(m0, x, math.sqrt(1 - a[TIMESTEPS[0]]) * next(noise))  # x^p_T: noised M0 = 0 outside M0
    for i, index in enumerate(TIMESTEPS):
        t = index + 1
        a_t = a[index]
        a_prev = 1.0 if i == len(TIMESTEPS) - 1 else a[TIMESTEPS[i + 1]]
        zeta = max(0.0, (t - cfg.t_s) / (T - cfg.t_s))  # Eq. 8
        m_t = zeta * (1 - m0) + m0 if cfg.mask_alignment == "ema" else m0
        back = math.sqrt(a_prev) * x_back + math.sqrt(1 - a_prev) * next(noise)  # q(x^back_{t-1} | x^back)
        z = next(noise)
        if anomaly_only_step(t, cfg):
            seen.append((index, ONLY, xp, m0))
            eps = denoise(xp, index, ONLY, m0)
            x0 = (xp - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            mean, var = gaussian_posterior(x0, xp, a_t, a_prev)
            xp_new = mean + math.sqrt(var) * z
            x = hard(m0, xp_new, back)  # Eq. 7, t in [d1, d2]
        else:
            seen.append((index, AWARE, x, m_t))
            eps = denoise(x, index, AWARE, m_t)
            x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            if cfg.anomaly_inference and cfg.inference_mask == "ema":  # the authors' code: x0 blended by M_t^p
                x0 = soft(m_t, x0, x_back)
            elif cfg.anomaly_inference:  # Eq. 4-6: the clean background outside M0
                x0 = hard(m0, x0, x_back)
            mean, var = gaussian_posterior(x0, x, a_t, a_prev)
            x_new = mean + math.sqrt(var) * z
            x = x_new if cfg.mask_alignment == "none" else soft(m_t, x_new, back)  # Eq. 7, otherwise
            xp_new = x
        if i + 1 < len(TIMESTEPS) and anomaly_only_step(TIMESTEPS[i + 1] + 1, cfg):
            noised_mask = math.sqrt(a_prev) * m0 + math.sqrt(1 - a_prev) * next(noise)  # q(M_{t-1} | M0)
            xp = hard(m0, xp_new, noised_mask)  # Eq. 7: x^p_{t-1}
    return seen, x


# ------------------------------------------------------------------------------ tests

CONFIGS = {
    "paper": PAPER,
    "no-graded": SamplingConfig(graded=False),
    "binary-mask": SamplingConfig(mask_alignment="binary"),
    "no-reinjection": SamplingConfig(mask_alignment="none"),
    "no-aif": SamplingConfig(anomaly_inference=False),
    "authors-interval": SamplingConfig(intervals=((800, 700),)),
    "reversed-bounds": SamplingConfig(intervals=((300, 400), (799, 900))),
    "authors-code": SamplingConfig(intervals=((800, 700), (400, 300)), inference_mask="ema"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_graded_loop_matches_the_hand_computation_step_by_step(name):
    cfg = CONFIGS[name]
    x_back, m0, draws = setup()
    abar = abar_schedule()
    model = ToyDenoiser()
    got = graded_diffusion(model, x_back, m0, TIMESTEPS, abar, ScriptedNoise(draws), cfg)
    expected_calls, expected = reference(x_back, m0, draws, abar, cfg, ToyDenoiser())

    assert [(i, b) for i, b, _, _ in model.calls] == [(i, b) for i, b, _, _ in expected_calls], "branch per step"
    for step, ((index, branch, x_in, mask), (_, _, x_ref, mask_ref)) in enumerate(zip(model.calls, expected_calls)):
        where = f"step {step} (t={index + 1}, {branch})"
        assert torch.allclose(mask.double(), mask_ref.expand_as(mask).double(), atol=1e-12), f"{where}: mask"
        assert torch.allclose(x_in.double(), x_ref, atol=1e-9, rtol=1e-9), f"{where}: latent"
    assert torch.allclose(got.double(), expected, atol=1e-9, rtol=1e-9), "x0"


def test_the_schedule_exercises_both_branches_the_bounds_and_the_ema_ramp():
    """The fixture itself: what the comparison above can see."""
    expected_calls, _ = reference(*setup(), abar_schedule(), PAPER, ToyDenoiser())
    branches = {index + 1: branch for index, branch, _, _ in expected_calls}
    assert [t for t, b in branches.items() if b == ONLY] == [1000, 900, 800, 400, 300]
    assert branches[700] == branches[250] == branches[1] == AWARE
    soft_masks = [m for _, b, _, m in expected_calls if b == AWARE and ((m > 0) & (m < 1)).any()]
    assert len(soft_masks) == 3  # t = 700, 600, 250: the EMA mask between all-ones and M0


def test_ema_blend_differs_from_a_hard_mask_blend():
    """Sanity of the fixture: with the EMA mask replaced by M0 the final x0 changes too. With a
    per-pixel denoiser it would not: Eq. 4-6 discard the prediction outside M0 at every step, so
    the EMA mask reaches the anomaly only through the network's receptive field (docs/stage.md)."""
    x_back, m0, draws = setup()
    abar = abar_schedule()
    _, paper = reference(x_back, m0, draws, abar, PAPER, ToyDenoiser())
    _, binary = reference(x_back, m0, draws, abar, CONFIGS["binary-mask"], ToyDenoiser())
    assert (paper - binary).abs().max() > 1e-3


def test_ema_inference_mask_keeps_generated_context_outside_m0():
    """The authors' sampler (Eq. 4-6 with M_t^p): outside M0 the x0 that enters the posterior is
    zeta(t) * prediction + (1 - zeta(t)) * x^back, so at t = T (zeta = 1) the background of x0 is
    the network's own prediction. Checked on the first step by hand: x_T and the toy eps are known."""
    x_back, m0, draws = setup()
    abar = abar_schedule()
    cfg = CONFIGS["authors-code"]
    model = ToyDenoiser()
    graded_diffusion(model, x_back, m0, TIMESTEPS[:2], abar, ScriptedNoise(draws), cfg)
    a_t, a_prev = float(abar[999]), float(abar[899])
    x_T = draws[0]
    eps = model(x_T, 999, AWARE, torch.ones_like(m0))  # zeta(1000) = 1: the EMA mask is all ones
    x0_pred = (x_T - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    mean, var = gaussian_posterior(x0_pred, x_T, a_t, a_prev)  # nothing replaced by x^back
    back = math.sqrt(a_prev) * x_back + math.sqrt(1 - a_prev) * draws[2]
    expected = mean + math.sqrt(var) * draws[3]  # the blend with M_T^p = 1 keeps the posterior sample
    _, _, x_second, _ = model.calls[1]
    assert torch.allclose(x_second, expected, atol=1e-9)
    assert not torch.allclose(x_second, back)
