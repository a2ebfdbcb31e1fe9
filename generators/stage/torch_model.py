"""STAGE (Xu et al., "Segmentation-oriented Industrial Anomaly Synthesis via Graded Diffusion with
Explicit Mask Alignment"): the math, no training loop.

Notation follows the paper: t counts 1..T (T = 1000), diffusers' timestep index is t - 1; abar is
diffusers' `alphas_cumprod`, indexed by that index; M0 is the binary anomaly mask at latent size.

- Eq. 2  the DDPM posterior q(x_{t-1} | x_t, x_0): `generators.diffusion.ddpm.posterior`.
- Eq. 3  `compose`: x0 = M0 * x^p + (1 - M0) * x^back (also every blend of Eq. 7 / Alg. 1).
- Eq. 4-6 `anomaly_inference_step`: the reverse step whose mean takes the predicted anomaly inside
  M0 and the clean background latent outside.
- Eq. 7 / Algorithm 1 `graded_diffusion`: the sampling loop with the two branches.
- Eq. 8  `zeta`, `ema_mask`: explicit mask alignment.
- Sec. III-D `MaskGuidanceAdapter`; `StageModel` runs the frozen denoiser and then one adapter per branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from generators.diffusion.ddpm import ddpm_step, posterior, predict_x0
from generators.diffusion.noise import PerSampleNoise

AWARE, ONLY = "aware", "only"  # anomaly-aware branch (full latent), anomaly-only branch (M0 * x0)


# -- Eq. 8: explicit mask alignment ---------------------------------------------------------------
def zeta(t: torch.Tensor | int, T: int, t_s: int) -> torch.Tensor | float:
    """Eq. 8: (t - t_s) / (T - t_s) for t > t_s, else 0 (t counts 1..T); a float for an int t."""
    if isinstance(t, int):
        return max(0.0, (t - t_s) / (T - t_s))
    return ((torch.as_tensor(t, dtype=torch.float32) - t_s) / (T - t_s)).clamp(min=0.0)


def ema_mask(m0: torch.Tensor, t: torch.Tensor | int, T: int, t_s: int) -> torch.Tensor:
    """Eq. 8: M_t^p = zeta(t) (1 - M0) + M0; all ones at t = T, M0 for t <= t_s. `t` is an int
    or one value per sample."""
    z = zeta(t, T, t_s)
    if isinstance(z, torch.Tensor):
        z = z.to(m0.device, m0.dtype).view(-1, *([1] * (m0.dim() - 1)))
    return z * (1 - m0) + m0


# -- Eq. 2-6: DDPM posterior (generators.diffusion.ddpm) and anomaly inference ----------------------
def compose(m: torch.Tensor, inside: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
    """Eq. 3: m * inside + (1 - m) * outside (the same blend serves Eq. 4, Eq. 7 and Alg. 1)."""
    return m * inside + (1 - m) * outside


def anomaly_inference_step(x0_anomaly, x_back, x_t, m0, abar_t, abar_prev, noise) -> torch.Tensor:
    """Eq. 4-6: mean = M0 * mu(x0_anomaly, x_t^p) (Eq. 5 top) + (1 - M0) * mu(x^back, x_t^back)
    (Eq. 5 bottom), one shared variance (Eq. 6). The posterior is per pixel and linear in x0, so
    with binary M0 this is the posterior of the composed x0 = M0 * x0_anomaly + (1 - M0) * x^back
    (Eq. 3) and x_t: one posterior instead of two. At the last step it is x^back outside M0.
    The authors' code passes the soft EMA mask as `m0`; by the same linearity that is the posterior
    of m * x0_anomaly + (1 - m) * x^back, which is what their `p_mean_variance` computes."""
    mean, var = posterior(compose(m0, x0_anomaly, x_back), x_t, abar_t, abar_prev)  # Eq. 3-5
    return mean + var**0.5 * noise  # Eq. 6


# -- Algorithm 1 / Eq. 7: graded diffusion ----------------------------------------------------------
def in_intervals(t: int, intervals) -> bool:
    """Alg. 1 "if t in [d1, d2]": inclusive, either bound order, any number of intervals."""
    return any(min(a, b) <= t <= max(a, b) for a, b in intervals)


@dataclass(frozen=True)
class SamplingConfig:
    T: int = 1000
    intervals: tuple[tuple[int, int], ...] = ((1000, 800), (400, 300))  # paper; authors' code: (800, 700)
    t_s: int = 200
    graded: bool = True  # False: the anomaly-aware branch at every step (ablation "AIF+EMA")
    anomaly_inference: bool = True  # False: plain DDPM posterior (ablations without AIF)
    mask_alignment: str = "ema"  # "ema" (Eq. 8), "binary" (M0: the "AIF+PD" ablation), "none" (no re-injection)
    inference_mask: str = "m0"  # Eq. 4-6 with M0 (paper) or with the EMA mask M_t^p (authors' code, docs/stage.md 1)


# denoise(x_t, timestep_index, branch, mask) -> predicted noise
Denoise = Callable[[torch.Tensor, int, str, torch.Tensor], torch.Tensor]


def graded_diffusion(denoise: Denoise, x_back: torch.Tensor, m0: torch.Tensor, timesteps: list[int],
                     abar: torch.Tensor, noise: PerSampleNoise, cfg: SamplingConfig) -> torch.Tensor:
    """Algorithm 1 with Eq. 7; returns x0-hat. `timesteps` are diffusers indices, descending (all
    T of them for the paper's ancestral DDPM, fewer for a respaced run); `abar` is alphas_cumprod.

    State: x (x-hat_t, the anomaly-aware latent) and xp (x-hat_t^p, the anomaly-only latent).
    Inside [d1, d2] the anomaly-only branch denoises xp (MGA sees M0), and x is M0 * xp plus the
    forward-noised background; elsewhere the anomaly-aware branch denoises x with the AIF posterior
    (MGA sees M_t^p), the background is re-injected through M_t^p, and xp is refreshed from x.
    Outside M0, xp holds the forward-noised mask q(M_{t-1} | M0), which is sqrt(1 - abar) * eps
    there: Eq. 7's choice (Alg. 1 writes M_{t-1}^p), and exactly what the anomaly-only branch saw
    in training (its input is the noised M0 * x0, pure noise outside M0). The blend uses M_t^p,
    the mask the adapter saw at this step (Eq. 7; Alg. 1 writes M_{t-1}^p, one step apart). The
    anomaly-only step is a plain posterior: AIF only changes pixels outside M0, which Eq. 7
    overwrites with the background there."""
    ab = abar.double().tolist()  # python floats: the step's scalars cost nothing
    x = noise.randn_like(x_back)  # x_T ~ N(0, I)
    xp = compose(m0, x, (1 - ab[timesteps[0]]) ** 0.5 * noise.randn_like(x_back))  # x-hat_T^p per Eq. 7
    only = [cfg.graded and in_intervals(index + 1, cfg.intervals) for index in timesteps]
    for i, index in enumerate(timesteps):
        t, last = index + 1, i + 1 == len(timesteps)
        a_t, a_prev = ab[index], (1.0 if last else ab[timesteps[i + 1]])
        mask_t = ema_mask(m0, t, cfg.T, cfg.t_s) if cfg.mask_alignment == "ema" else m0
        back_prev = a_prev**0.5 * x_back + (1 - a_prev) ** 0.5 * noise.randn_like(x_back)  # q(x_{t-1}^back | x^back)
        z = noise.randn_like(x_back)
        if only[i]:
            xp_prev = ddpm_step(predict_x0(xp, denoise(xp, index, ONLY, m0), a_t), xp, a_t, a_prev, z)
            x = compose(m0, xp_prev, back_prev)  # Eq. 7, t in [d1, d2]
        else:
            x0 = predict_x0(x, denoise(x, index, AWARE, mask_t), a_t)
            if cfg.anomaly_inference:
                m_inference = mask_t if cfg.inference_mask == "ema" else m0
                x_prev = anomaly_inference_step(x0, x_back, x, m_inference, a_t, a_prev, z)
            else:
                x_prev = ddpm_step(x0, x, a_t, a_prev, z)
            x = x_prev if cfg.mask_alignment == "none" else compose(mask_t, x_prev, back_prev)  # Eq. 7, otherwise
            xp_prev = x
        if not last and only[i + 1]:  # x-hat^p is read only by the next anomaly-only step
            mask_prev = a_prev**0.5 * m0 + (1 - a_prev) ** 0.5 * noise.randn_like(x_back)  # q(M_{t-1} | M0)
            xp = compose(m0, xp_prev, mask_prev)  # Eq. 7 (Alg. 1 writes M_{t-1}^p for the filler)
    return x


# -- Sec. III-D: mask guidance adapter ---------------------------------------------------------------
ADAPTER_LAYER_ORDERS = ("conv-relu-bn", "conv-bn-relu")  # the paper's Sec. III-D; the authors' class `MGA`


class MaskGuidanceAdapter(nn.Module):
    """[frozen denoiser output, mask] -> N x (conv 3x3, ReLU, BN) -> conv 3x3 -> noise.

    The authors' code repeats the mask to the latent's 4 channels (8 input channels) and uses
    hidden widths 64-256-512-256-64; its blocks are conv-BN-ReLU with a 1x1 last conv
    (`layer_order="conv-bn-relu"`, `head_kernel=1`). `residual=True` (not in the paper) adds the
    UNet's own prediction back, with a zero-initialised last conv, so training starts from the
    frozen model."""

    def __init__(self, latent_channels: int = 4, hidden: tuple[int, ...] = (64, 256, 512, 256, 64), residual: bool = False,
                 layer_order: str = "conv-relu-bn", head_kernel: int = 3):
        super().__init__()
        if layer_order not in ADAPTER_LAYER_ORDERS:
            raise ValueError(f"layer_order must be one of {ADAPTER_LAYER_ORDERS}, not {layer_order!r}")
        layers, c = [], 2 * latent_channels
        for h in hidden:
            relu, bn = nn.ReLU(inplace=True), nn.BatchNorm2d(h)
            layers += [nn.Conv2d(c, h, 3, padding=1), *((relu, bn) if layer_order == "conv-relu-bn" else (bn, relu))]
            c = h
        self.body = nn.Sequential(*layers, nn.Conv2d(c, latent_channels, head_kernel, padding=head_kernel // 2))
        self.residual = residual
        if residual:
            nn.init.zeros_(self.body[-1].weight)
            nn.init.zeros_(self.body[-1].bias)

    def forward(self, eps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.body(torch.cat([eps, mask.to(eps.dtype).expand_as(eps)], 1))
        return eps + out if self.residual else out


# -- the model: frozen denoiser + two adapters ---------------------------------------------------------
class StageModel(nn.Module):
    """The frozen denoiser followed by one mask guidance adapter per branch. The denoiser is a
    reference the generator owns (`LatentDiffusionGenerator.unet`); only the adapters are this
    module's own trained state."""

    def __init__(self, unet: nn.Module, latent_channels: int = 4,
                 adapter_channels: tuple[int, ...] = (64, 256, 512, 256, 64), adapter_residual: bool = False,
                 adapter_layer_order: str = "conv-relu-bn", adapter_head_kernel: int = 3):
        super().__init__()
        self.__dict__["unet"] = unet  # a plain reference: the generator registers and moves it
        self.adapters = nn.ModuleDict({b: MaskGuidanceAdapter(latent_channels, adapter_channels, adapter_residual,
                                                              adapter_layer_order, adapter_head_kernel)
                                       for b in (AWARE, ONLY)})

    def denoise(self, x_t: torch.Tensor, index, context: torch.Tensor, mask: torch.Tensor, branch: str) -> torch.Tensor:
        """One branch: frozen UNet, then that branch's MGA with its mask."""
        eps = self.unet(x_t, index, encoder_hidden_states=context).sample
        return self.adapters[branch](eps, mask)

    def denoise_both(self, x_t, xp_t, index, context, mask_aware, m0):
        """Both branches with one batched UNet call (training)."""
        eps = self.unet(torch.cat([x_t, xp_t]), torch.cat([index, index]),
                        encoder_hidden_states=torch.cat([context, context])).sample
        eps_x, eps_p = eps.chunk(2)
        return self.adapters[AWARE](eps_x, mask_aware), self.adapters[ONLY](eps_p, m0)
