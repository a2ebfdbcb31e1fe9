"""How much noise Eq. 7 leaves on STAGE's background: measured, for docs/stage.md.

Outside M0 the anomaly-aware step blends the posterior sample x_{t-1} with a freshly noised copy of
the background, x^back_{t-1} ~ q(. | x^back), through the EMA mask M_t^p (Eq. 7). The two copies
carry independent noise, so their blend has less noise than either: std sqrt(w^2 s1^2 + (1-w)^2 s2^2)
with w = zeta(t), and the deficit compounds over the steps. This script runs the real
`graded_diffusion` with x^back = 0 (so whatever is left outside M0 is noise) and a denoiser that
predicts zero noise (outside M0 the AIF posterior ignores the prediction anyway), and prints, at
the steps where the anomaly-aware branch reads the latent, the noise std outside M0 divided by the
training noise std sqrt(1 - abar_t) that the network saw at that t.

    python tools/stage_background_noise.py [--samples 64] [--steps 1000]
"""

from __future__ import annotations

import argparse

import torch
from diffusers import DDPMScheduler

from generators.diffusion.noise import PerSampleNoise
from generators.stage.torch_model import AWARE, SamplingConfig, graded_diffusion


def measure(cfg: SamplingConfig, samples: int, steps: int, report=(900, 800, 700, 600, 500, 400, 300, 250, 200, 100)):
    # the LDM's schedule (CompVis/ldm-text2im-large-256: scaled_linear, 0.00085 .. 0.012)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(steps)
    abar = scheduler.alphas_cumprod.double()
    m0 = torch.zeros(samples, 1, 16, 16, dtype=torch.float64)
    m0[:, :, 6:10, 6:10] = 1.0
    outside = (m0[:, 0] == 0).unsqueeze(1).expand(samples, 4, 16, 16)
    seen: dict[int, float] = {}

    def denoise(x, index, branch, mask):
        t = index + 1
        if branch == AWARE and t in report:
            seen[t] = float(x[outside].std() / (1 - abar[index]) ** 0.5)
        return torch.zeros_like(x)

    x_back = torch.zeros(samples, 4, 16, 16, dtype=torch.float64)
    noise = PerSampleNoise(list(range(samples)), dtype=torch.float64)
    graded_diffusion(denoise, x_back, m0, [int(t) for t in scheduler.timesteps], abar, noise, cfg)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    configs = {"paper (graded, EMA)": SamplingConfig(),
               "anomaly-aware branch only (AIF+EMA)": SamplingConfig(graded=False)}
    for name, cfg in configs.items():
        seen = measure(cfg, args.samples, args.steps)
        print(f"{name}: noise std (variance) outside M0 / training: "
              + ", ".join(f"t={t}: {100 * v:.0f}% ({100 * v * v:.0f}%)" for t, v in sorted(seen.items(), reverse=True)))


if __name__ == "__main__":
    main()
