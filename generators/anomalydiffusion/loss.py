"""AnomalyDiffusion's training losses.

    L_diff = || m * (eps - eps_theta(z_t, t, {e_a, e_s})) ||^2          masked textual inversion (Eq. 5)
    e_m*   = argmin E || eps - eps_theta(z_t, t, e_m) ||^2               mask embedding (Eq. 9)

m is the anomaly mask on the latent grid (the paper leaves the resizing implicit; we take the
base's `mask_to_latent`, where a latent cell is in the mask when any of its pixels is, so thin
defects survive the 8x downsampling). Each squared norm is a mean over every latent element
(diffusers' MSE convention; the paper's norm is a sum, a constant factor the learning rate
absorbs), and the masked loss is not renormalised by the mask's area: Eq. 5 has no such factor.
"""

from __future__ import annotations

import torch


def masked_diffusion_loss(eps: torch.Tensor, eps_pred: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Eq. 5: || m * (eps - eps_hat) ||^2 as a mean over elements; `m` (B,1,h,w) broadcasts over
    the latent channels, so background cells give no gradient to e_a or E."""
    return (m.to(eps.dtype) * (eps - eps_pred)).pow(2).mean()


def mask_embedding_loss(eps: torch.Tensor, eps_pred: torch.Tensor) -> torch.Tensor:
    """Eq. 9: plain textual inversion on the (encoded) mask images, || eps - eps_hat ||^2 (mean)."""
    return (eps - eps_pred).pow(2).mean()
