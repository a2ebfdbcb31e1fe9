"""BADG's disentanglement loss (Sec. 3.1, Eq. 5-7) and the two noisings that feed it.

    L(theta) = || m * (eps - eps_theta(z_t, t, C1)) ||^2          matching loss
             + || (1 - m) * (eps - eps_theta(z_t^m, t, C2)) ||^2  regulariser          (Eq. 5)

with one shared eps: z_t = sqrt(alpha_t) z_0 + sqrt(1 - alpha_t) eps (Eq. 6) and z_t^m =
sqrt(alpha_t) (1 - m) z_0 + sqrt(1 - alpha_t) (1 - m) eps (Eq. 7), so z_t^m = (1 - m) z_t.
Each squared norm is taken as a mean over every latent element (diffusers' MSE convention; the
paper's norm is a sum, a constant factor the learning rate absorbs), and the masked terms are not
renormalised by the mask's area, so the two terms keep Eq. 5's relative weight.
"""

from __future__ import annotations

from typing import Callable

import torch


def noised_latents(z0: torch.Tensor, m: torch.Tensor, eps: torch.Tensor, alpha_t: torch.Tensor):
    """Eq. 6 and Eq. 7: (z_t, z_t^m) from one shared eps; `alpha_t` broadcastable to z0 (B,1,1,1)."""
    a = alpha_t.to(z0.dtype)
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * eps  # Eq. 6
    z_t_m = a.sqrt() * ((1 - m) * z0) + (1 - a).sqrt() * ((1 - m) * eps)  # Eq. 7, z_0^m := (1 - m) z_0
    return z_t, z_t_m


def matching_loss(eps: torch.Tensor, eps_c1: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Eq. 5, first term: || m * (eps - eps_theta(z_t, t, C1)) ||^2 (mean over elements)."""
    return (m * (eps - eps_c1)).pow(2).mean()


def background_regulariser(eps: torch.Tensor, eps_c2: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Eq. 5, second term: || (1 - m) * (eps - eps_theta(z_t^m, t, C2)) ||^2 (mean over elements)."""
    return ((1 - m) * (eps - eps_c2)).pow(2).mean()


def disentanglement_loss(eps: torch.Tensor, eps_c1: torch.Tensor, eps_c2: torch.Tensor, m: torch.Tensor) -> dict:
    """Eq. 5: matching loss + regulariser (for a binary m also || eps - m eps_C1 - (1 - m) eps_C2 ||^2)."""
    matching, regulariser = matching_loss(eps, eps_c1, m), background_regulariser(eps, eps_c2, m)
    return {"loss": matching + regulariser, "loss_matching": matching, "loss_regulariser": regulariser}


# denoise_pair(z_t, z_t^m, timesteps) -> (eps_theta(z_t, t, C1), eps_theta(z_t^m, t, C2))
DenoisePair = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def badg_loss(denoise_pair: DenoisePair, z0: torch.Tensor, m: torch.Tensor, eps: torch.Tensor,
              timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> dict:
    """Algorithm 1, line 3: noise z_0 and (1 - m) z_0 with the same eps at the same timesteps (one
    per sample, diffusers indices), run the C1 and C2 passes, return Eq. 5 and its two terms."""
    a = alphas_cumprod.to(z0.device, z0.dtype)[timesteps].view(-1, *([1] * (z0.dim() - 1)))
    z_t, z_t_m = noised_latents(z0, m, eps, a)
    eps_c1, eps_c2 = denoise_pair(z_t, z_t_m, timesteps)
    return disentanglement_loss(eps, eps_c1, eps_c2, m)
