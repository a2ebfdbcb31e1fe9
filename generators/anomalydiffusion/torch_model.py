"""AnomalyDiffusion's inference math (no training loop).

Notation follows the paper: m the anomaly mask, y (y_0) the normal sample, x_t the generated
latent, x0_hat the decoded clean-image prediction, abar the cumulative alpha product (diffusers'
`alphas_cumprod`, 0-based timesteps).

- Eq. 1   `blend_latents`, `blended_ddim_sampling`: generated inside m, the forward-noised normal
          latent q(y_{t-1} | y_0) outside, after every step.
- Eq. 7   `adaptive_scaling_softmax`: w_m = ||m||_1 * Softmax(f(||m*y - m*x0_hat||^2)) over pixels.
- Eq. 8   `attention_weight_map`, `AdaptiveAttentionReweighting`: m'_c = m_c * w_m through the
          project's cross-attention hook, the map resized to each layer's grid.
- Eq. 10  `guided_mask_eps`: classifier-free guidance for mask sampling, s = 5.
- Supp. C.1 / authors' code: `binarise_mask`, `touches_border` (the authors' border rule).
- Smoke only: `StoredSetDenoiser`, the ideal denoiser of a stored set of mask latents.
- `options.DdimSettings`: sampler steps and eta (the paper states none; see options.DDIM_SETTINGS).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from generators.diffusion.attention import CrossAttentionHook
from generators.diffusion.conditioning import multi_condition_guidance
from generators.diffusion.ddpm import add_noise
from generators.anomalydiffusion.options import MASK_GUIDANCE_SCALE, MASK_THRESHOLDS, DdimSettings
from generators.diffusion.noise import PerSampleNoise


# -- Eq. 1: blended latent diffusion --------------------------------------------------------------
def blend_latents(x_prev: torch.Tensor, y0: torch.Tensor, noise: torch.Tensor, abar_prev, m: torch.Tensor) -> torch.Tensor:
    """Eq. 1: x_{t-1} = p_theta(x_{t-1} | x_t, e) * m + q(y_{t-1} | y_0) * (1 - m), with
    q(y_{t-1} | y_0) = sqrt(abar_{t-1}) y_0 + sqrt(1 - abar_{t-1}) noise; m (B,1,h,w) latent mask.
    At the last step abar_{t-1} = 1, so the background is y_0 itself."""
    abar = torch.as_tensor(abar_prev, dtype=y0.dtype, device=y0.device)
    m = m.to(x_prev.dtype)
    return x_prev * m + add_noise(y0, noise, abar) * (1 - m)


# -- Eq. 7 / 8: adaptive attention re-weighting ---------------------------------------------------
def adaptive_scaling_softmax(m: torch.Tensor, y: torch.Tensor, x0_hat: torch.Tensor, floor: float = 1e-8) -> torch.Tensor:
    """Eq. 7: w_m = ||m||_1 * Softmax(f(||m*y - m*x0_hat||^2)), (B,1,H,W) from mask (B,1,H,W) and
    images (B,C,H,W). The squared norm is per pixel over channels, the softmax over the pixels of
    each image. f(x) = 1/x on the mask and -inf off it: the paper's f sends x = 0 to -inf, which is
    how it drops the pixels outside the mask, where m*y - m*x0_hat vanishes identically; a pixel
    inside whose prediction equals y exactly would give 1/0, so the difference is floored at
    `floor` (most normal-looking, largest weight) rather than dropped. Weights are 0 outside the
    mask and average exactly 1 inside (the ||m||_1 factor)."""
    m = m.float()
    diff = (m * y.float() - m * x0_hat.float()).pow(2).sum(1, keepdim=True)  # per-pixel ||.||^2
    inside = m > 0.5
    logits = torch.where(inside, 1.0 / diff.clamp_min(floor), torch.full_like(diff, float("-inf")))
    b = m.shape[0]
    area = inside.flatten(1).sum(1).float()  # ||m||_1 for a binary mask
    soft = logits.flatten(1).softmax(1)
    soft = torch.where(area[:, None] > 0, soft, torch.zeros_like(soft))  # an empty mask: no weights (softmax of all -inf is nan)
    return (area[:, None] * soft).view(b, 1, *m.shape[-2:])


def attention_weight_map(w_m: torch.Tensor, m: torch.Tensor, clamp: tuple[float, float] | None = None) -> torch.Tensor:
    """The multiplier applied to the cross-attention map: w_m inside the mask, 1 outside (the
    paper re-weights to fill the mask; it does not switch attention off in the background, which
    a factor 0 would). `clamp`: the authors' public code clamps the weight to [1, 1.5], an
    option; the paper has no clamp."""
    w = w_m if clamp is None else w_m.clamp(*clamp)
    inside = (m > 0.5).to(w.dtype)
    return inside * w + (1 - inside)


def to_latent_grid(weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel-level (B,1,H,W) weight -> the latent grid by area averaging (keeps a cell's mean weight;
    the hook then resizes it to each attention layer's grid)."""
    return weight if tuple(weight.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(weight, size)


class AdaptiveAttentionReweighting:
    """Sec. 3.3 at one denoising step: from the decoded prediction x0_hat, the normal image y and
    the pixel mask, compute Eq. 7's map and install it on the cross-attention hook (Eq. 8:
    m'_c = m_c * w_m, `CrossAttentionHook.reweight`). `tokens`: the context columns re-weighted;
    None = every token (the paper's m_c * w_m), or e.g. the anomaly-embedding positions (the
    authors' code re-weights only those). `clamp`: see `attention_weight_map`."""

    def __init__(self, hook: CrossAttentionHook, tokens: Sequence[int] | None = None,
                 clamp: tuple[float, float] | None = None):
        self.hook, self.tokens, self.clamp = hook, tokens, clamp

    def weight(self, m: torch.Tensor, y: torch.Tensor, x0_hat: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
        return to_latent_grid(attention_weight_map(adaptive_scaling_softmax(m, y, x0_hat), m, self.clamp), latent_size)

    def set(self, m: torch.Tensor, y: torch.Tensor, x0_hat: torch.Tensor, latent_size: tuple[int, int]) -> None:
        self.hook.reweight(self.weight(m, y, x0_hat, latent_size), self.tokens)

    def clear(self) -> None:
        self.hook.reweight(None)


# -- Eq. 10 and the masks (their constants: options.py) ---------------------------------------------
def guided_mask_eps(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float = MASK_GUIDANCE_SCALE) -> torch.Tensor:
    """Eq. 10: eps(x_t) + s (eps(x_t, e_m) - eps(x_t))."""
    return multi_condition_guidance(eps_uncond, [eps_cond], [scale])


def binarise_mask(decoded: torch.Tensor, threshold: float = MASK_THRESHOLDS["midpoint"]) -> torch.Tensor:
    """A decoded mask sample (B,C,H,W) in [-1, 1] -> binary (B,1,H,W): the channel mean, mapped to
    [0, 1], above `threshold`. The paper says nothing; 0.5 is the midpoint between the two values
    the mask images hold, the authors' code uses 0.8 (MASK_THRESHOLDS)."""
    return ((decoded.float().mean(1, keepdim=True) + 1) / 2 > threshold).float()


def touches_border(mask: torch.Tensor, fraction: float = 1 / 3) -> torch.Tensor:
    """The authors' rejection rule for generated masks (generate_mask.py, `check_mask`): a mask
    (B,1,H,W) is rejected when any of its four border rows/columns has more than `fraction` * W
    mask pixels. Returns (B,) bool, True = reject. Not in the paper."""
    b = mask > 0.5
    limit = fraction * mask.shape[-1]
    edges = [b[..., 0, :], b[..., -1, :], b[..., :, 0], b[..., :, -1]]
    return torch.stack([e.flatten(1).sum(1) > limit for e in edges], 1).any(1)


# -- the smoke stand-in for the LDM's mask prior ------------------------------------------------------
class StoredSetDenoiser:
    """The ideal denoiser of N stored latents (N,C,h,w): x_0 drawn uniformly from them and
    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (Ho et al. Eq. 4) give the posterior weight
    of latent i proportional to exp(-||x_t - sqrt(abar_t) x_i||^2 / (2 (1 - abar_t))), and
    x0_hat = E[x_0 | x_t] is the minimiser of Eq. 9's loss over that set: a denoiser that memorises
    it. The smoke preset samples masks with it because the random tiny U-Net has no prior for e_m
    to steer. Distances in float64: near t = 0 they differ by ~1e-2 on norms of ~1e4."""

    def __init__(self, stored: torch.Tensor):
        self.flat = stored.double().flatten(1)
        self.sq_norm = self.flat.pow(2).sum(1)

    def x0(self, x_t: torch.Tensor, abar_t) -> torch.Tensor:
        a = torch.as_tensor(abar_t, dtype=torch.float64, device=x_t.device)
        x = x_t.double().flatten(1)
        sq = x.pow(2).sum(1, keepdim=True) - 2 * a.sqrt() * x @ self.flat.T + a * self.sq_norm[None]  # ||x - sqrt(a) x_i||^2
        weights = (-sq / (2 * (1 - a))).softmax(1)
        return (weights @ self.flat).view_as(x_t).to(x_t.dtype)

    def eps(self, x_t: torch.Tensor, abar_t) -> torch.Tensor:
        """eps = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t) (Ho et al. Eq. 4 solved for eps)."""
        a = torch.as_tensor(abar_t, dtype=x_t.dtype, device=x_t.device)
        return (x_t - a.sqrt() * self.x0(x_t, abar_t)) / (1 - a).sqrt()


# -- the blended sampling loop (its DDIM settings: options.DdimSettings) ---------------------------
# denoise(x_t, t) -> eps_hat; decode(x0 latent) -> image in [-1, 1]
Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def blended_ddim_sampling(denoise: Denoise, scheduler, x_T: torch.Tensor, y0: torch.Tensor, m: torch.Tensor,
                          noise: PerSampleNoise, settings: DdimSettings,
                          aar: AdaptiveAttentionReweighting | None = None,
                          decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                          y_pixels: torch.Tensor | None = None, m_pixels: torch.Tensor | None = None,
                          x0_from: str = "current") -> torch.Tensor:
    """DDIM (diffusers' `DDIMScheduler.step`) with Eq. 1 after every step and, when `aar` is given,
    Eq. 7/8 before every conditional prediction. `x0_from`: "current" (the paper: x0_hat =
    D(p_theta(z_0 | z_t, e)) at this step, one extra un-reweighted U-Net call) or "previous" (the
    prediction of the step before, no extra call; the first step is then not re-weighted).
    `m` is the latent mask; `y_pixels`, `m_pixels` the normal image and mask at pixel size."""
    scheduler.set_timesteps(settings.steps, device=x_T.device)
    acp = scheduler.alphas_cumprod.to(x_T.device)
    step = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    x, x0_latent = x_T, None
    for t in scheduler.timesteps:
        tt = t.expand(x.shape[0]) if t.dim() == 0 else t
        if aar is not None:
            aar.clear()
            if x0_from == "current":
                eps = denoise(x, tt)
                x0_latent = (x - (1 - acp[t]).sqrt() * eps) / acp[t].sqrt()  # Ho et al. Eq. 15
            if x0_latent is not None:
                aar.set(m_pixels, y_pixels, decode(x0_latent), tuple(x.shape[-2:]))
        eps = denoise(x, tt)
        out = scheduler.step(eps, t, x, eta=settings.eta, variance_noise=noise.randn_like(x))
        x, x0_latent = out.prev_sample, out.pred_original_sample
        prev = int(t) - step
        abar_prev = acp[prev] if prev >= 0 else scheduler.final_alpha_cumprod.to(x.device)
        x = blend_latents(x, y0, noise.randn_like(y0), abar_prev, m)  # Eq. 1
    if aar is not None:
        aar.clear()
    return x
