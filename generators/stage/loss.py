"""STAGE's training loss, Eq. 12, and the forward pass that feeds it.

As printed, Eq. 12 applies the anomaly-only network to the full latent x_t and the anomaly-aware
network to the masked latent x_t^p. The text (Sec. III-B, III-E) and the authors' code say the
reverse: the anomaly-aware branch learns the full anomaly latent x0, weighted by the EMA mask
M_t^p ("integrates contextual information via the EMA strategy"), and the anomaly-only branch
learns x^p = M0 * x0. We follow the text:

    L_p = E || eps_1 - eps_ao(x_t^p, t) ||_1 + E || M_t^p * (eps_2 - eps_aa(x_t, t)) ||_1

Both terms are means over all latent elements (the masked term is not renormalised by the mask
area). The authors' code weights the anomaly-aware term 4x (`l_simple_weight = 4.` of its DDPM
class, applied to the image branch only): `aware_weight`, 1 in the paper. Its LDM logvar/VLB terms
are inactive there (logvar 0, `original_elbo_weight` 0), so nothing else differs.
"""

from __future__ import annotations

import torch

from generators.diffusion.ddpm import add_noise
from generators.stage.torch_model import StageModel, compose, ema_mask


def anomaly_only_loss(eps_1: torch.Tensor, eps_only: torch.Tensor) -> torch.Tensor:
    """Eq. 12, first term (labels as the text): || eps_1 - eps_ao(x_t^p, t) ||_1."""
    return (eps_1 - eps_only).abs().mean()


def anomaly_aware_loss(eps_2: torch.Tensor, eps_aware: torch.Tensor, mask_t: torch.Tensor) -> torch.Tensor:
    """Eq. 12, second term (labels as the text): || M_t^p * (eps_2 - eps_aa(x_t, t)) ||_1."""
    return (mask_t * (eps_2 - eps_aware)).abs().mean()


def stage_loss(model: StageModel, x0: torch.Tensor, m0: torch.Tensor, context: torch.Tensor, index: torch.Tensor,
               eps_1: torch.Tensor, eps_2: torch.Tensor, abar: torch.Tensor, T: int, t_s: int,
               aware_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Noise x0 (anomaly-aware) and M0 * x0 (anomaly-only) at the same timesteps `index`
    (diffusers indices, one per sample) with independent noise, run both branches, return Eq. 12
    (the anomaly-aware term times `aware_weight`)."""
    a = abar.to(x0.device)[index].view(-1, 1, 1, 1)
    x_t = add_noise(x0, eps_2, a)
    xp_t = add_noise(compose(m0, x0, torch.zeros_like(x0)), eps_1, a)  # x^p = M0 * x0
    mask_t = ema_mask(m0, index + 1, T, t_s)  # Eq. 8 at the paper's t = index + 1
    eps_aware, eps_only = model.denoise_both(x_t, xp_t, index, context, mask_t, m0)
    only, aware = anomaly_only_loss(eps_1, eps_only), anomaly_aware_loss(eps_2, eps_aware, mask_t)
    return {"loss": only + aware_weight * aware, "loss_only": only, "loss_aware": aware}
