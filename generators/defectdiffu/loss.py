"""DefectDiffu's training objective (Sec. 3.4, 3.5): the mask prediction loss (Eq. 6), the Adaptive
Attention-enhanced Loss (Eq. 7-10) and the total (Eq. 11).

Squared norms are means over elements (the diffusers convention for Eq. 2), per sample where a
per-sample weight applies, then over the batch. Where the paper is silent (which tokens make the
attention map, how the mask is resized, whether R carries gradients) the choice is made here once
and listed in docs/defectdiffu.md.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from generators.defectdiffu.options import LAMBDA_MASK
from generators.diffusion.attention import AttentionRecord

ALPHA = 1e-3  # Eq. 8 (Sec. 4.1)
R_MIN, R_MAX = 2.0, 8.0  # Eq. 9


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The real mask (B, 1, H, W) "scaled to the size of Map" (Sec. 3.5): the fraction of each cell
    inside the mask (area average), so a defect smaller than a cell still counts, in proportion."""
    mask = mask.float()
    return mask if tuple(mask.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(mask, size)


def mean_attention_map(records: Sequence[AttentionRecord], layers: Sequence[str],
                       token_positions: torch.Tensor) -> torch.Tensor:
    """Eq. 7: Map = (1/M) sum_i softmax(Q_i K^T / sqrt(d)) over the M extracted defect-block maps
    (head mean per layer), read at the defect-word tokens (a (B, L) bool mask of the defect prompt's
    positions; the mean over them). (B, h, w). The softmax sums to 1 over all tokens, so a map of all
    tokens is flat; the defect words are the tokens whose attention should sit on the defect."""
    chosen = [r.maps() for r in records if r.layer in set(layers)]
    if not chosen:
        raise ValueError(f"no recorded cross-attention for the layers {list(layers)[:3]}")
    maps = torch.stack(chosen).mean(0)  # (B, L, h, w)
    weights = token_positions.to(maps.device, maps.dtype)
    weights = weights / weights.sum(1, keepdim=True).clamp(min=1)
    return torch.einsum("blhw,bl->bhw", maps, weights)


def attention_ratio(attention_map: torch.Tensor, mask: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """Eq. 8 per sample: Rat = sum (1 - mask) * Map / (sum mask * Map + alpha); `attention_map` (B, h, w),
    `mask` (B, 1, h, w) or (B, h, w) at the map's size. (B,)."""
    m = mask.reshape(attention_map.shape).to(attention_map.dtype)
    outside = ((1 - m) * attention_map).flatten(1).sum(1)
    inside = (m * attention_map).flatten(1).sum(1)
    return outside / (inside + alpha)


def clipped_ratio(ratio: torch.Tensor, low: float = R_MIN, high: float = R_MAX) -> torch.Tensor:
    """Eq. 9: R = 8 if Rat >= 8, 2 if Rat <= 2, else Rat."""
    return ratio.clamp(low, high)


def defect_region_loss(eps_pred: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor,
                       weight: torch.Tensor) -> torch.Tensor:
    """Eq. 10: loss_d = R || mask * eps_theta - mask * eps ||^2, per sample (mean over elements),
    weighted by that sample's R (B,), then the batch mean. `mask` (B, 1, h, w) at the latent size."""
    per_sample = (mask * eps_pred - mask * eps).square().flatten(1).mean(1)
    return (weight * per_sample).mean()


def mask_prediction_loss(mask_latent: torch.Tensor, mask_target: torch.Tensor) -> torch.Tensor:
    """Eq. 6: loss_m = || M_f - Mask_f ||^2 (mean over elements); Mask_f is the VAE-encoded real mask
    (`generators.diffusion.latents.encode_masks`)."""
    return F.mse_loss(mask_latent, mask_target)


def adaptive_attention_loss(records: Sequence[AttentionRecord], layers: Sequence[str],
                            token_positions: torch.Tensor, eps_pred: torch.Tensor, eps: torch.Tensor,
                            mask: torch.Tensor, alpha: float = ALPHA, detach_ratio: bool = True) -> dict:
    """Eq. 7-10 from the recorded defect-block attention and the real (B, 1, H, W) mask: the mask is
    resized to the map for Eq. 8 and to the latent for Eq. 10. R is a weight (no gradient) unless
    `detach_ratio=False`. Returns {"loss_d", "rat", "r"}."""
    attention_map = mean_attention_map(records, layers, token_positions)
    rat = attention_ratio(attention_map, resize_mask(mask, tuple(attention_map.shape[-2:])), alpha)
    r = clipped_ratio(rat)
    if detach_ratio:
        r = r.detach()
    loss_d = defect_region_loss(eps_pred, eps, resize_mask(mask, tuple(eps.shape[-2:])), r)
    return {"loss_d": loss_d, "rat": rat.detach(), "r": r.detach()}


def total_loss(eps_pred: torch.Tensor, eps: torch.Tensor, loss_d: torch.Tensor, loss_m: torch.Tensor,
               lam: float = LAMBDA_MASK) -> torch.Tensor:
    """Eq. 11: || eps_theta(z_t, t, c_d, c_p) - eps ||^2 + loss_d + lambda loss_m."""
    return F.mse_loss(eps_pred, eps) + loss_d + lam * loss_m


def defect_token_positions(tokenizer, defects: Sequence[str], length: int) -> torch.Tensor:
    """(B, length) bool: the defect-name tokens of "A photo of {defect}" (between the template's
    tokens and EOS); none for "good", whose map is not used (its mask is empty)."""
    from generators.defectdiffu.vocabulary import GOOD, words

    prefix = len(tokenizer("A photo of").input_ids) - 1  # BOS + template words, without EOS
    out = torch.zeros(len(defects), length, dtype=torch.bool)
    for i, defect in enumerate(defects):
        if defect == GOOD:
            continue
        end = min(len(tokenizer(f"A photo of {words(defect)}").input_ids) - 1, length)
        out[i, prefix:end] = True
    return out
