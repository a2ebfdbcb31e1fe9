"""SeaS' losses: Separation and Sharing Fine-tuning (SSF) and the Refined Mask Prediction loss.

The appendix (our only source text) refers to the main-text Eq. 3 (DA loss) without printing it;
what it does say, and what we implement:
- DA loss (Eq. 3, A.2, Table 10, Table 13): on the encoder cross-attention maps A^2 (32x32) and
  A^3 (16x16) of SD at 512 px, i.e. 1/2 and 1/4 of the latent grid, the mean map of the type's
  anomaly tokens is aligned with the mask M^l ("the average ... tends to 1" in the defect region),
  and a second term ("ST", ablated in Table 10) aligns the <ob> map with 0 inside the mask:

      L_DA^l = mean_p (Abar_df^l(p) - M^l(p))^2 + mean_{p: M^l(p) = 1} (A_ob^l(p) - 0)^2

  A per-token map is Eq. 8: the mean over heads of the softmax attention (the project's
  `AttentionRecord.maps`), here also averaged over the encoder layers of one resolution.
- NA loss: || eps_ob - eps_theta(z_ob, t_ob, e_ob) ||^2 on normal images with "a <ob>" (the second
  term of the Table 10 "with AT" formula, which keeps it).
- Total SSF loss: L = L_eps(anomaly images, P_n) + sum_l L_DA^l + L_NA, every weight 1 (the paper
  prints no weights).
- RMP loss, Eq. 10: L_M = F(M_df_hat, M_df) + F(M_ob_hat, M_ob) + F(M'_df_hat, M'_df) +
  F(M'_ob_hat, M'_ob), coarse (unprimed, latent grid) and refined (primed, image size) masks of
  anomaly (df) and normal (ob) images; normal targets are all zero (A.3). F: focal loss, gamma 2.
Where the paper is silent we take the authors' choices (min-max normalised maps, mask cells by max
pooling, focal loss without class weights); docs/seas.md lists each.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from generators.diffusion.attention import AttentionRecord, CrossAttentionHook

DA_SCALES = (2, 4)  # A^2, A^3: 32x32 and 16x16 of SD's 64x64 latent (Table 13)
ENCODER = "down_blocks"  # diffusers' name of the U-Net encoder blocks
FOCAL_GAMMA = 2.0


def da_sizes(latent_size: tuple[int, int], scales: Sequence[int] = DA_SCALES) -> list[tuple[int, int]]:
    """Grids of the DA layers for a latent grid: (64, 64) -> [(32, 32), (16, 16)]."""
    return [(latent_size[0] // s, latent_size[1] // s) for s in scales]


def mask_at(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B,1,H,W) binary mask -> (B,1,h,w): a cell is anomalous when any of its pixels is, so a
    small defect keeps at least one cell at 16x16 (the authors max-pool for the same reason)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask.float()
    return F.adaptive_max_pool2d(mask.float(), size)


def encoder_maps(records: Sequence[AttentionRecord], size: tuple[int, int], layers: str = ENCODER) -> torch.Tensor:
    """(B, tokens, h, w): Eq. 8 maps (head mean) of the encoder cross-attention layers whose query
    grid is `size`, averaged over those layers."""
    chosen = [r.maps() for r in records if layers in r.layer and tuple(r.size) == tuple(size)]
    if not chosen:
        found = sorted({(r.layer.split(".")[0], tuple(r.size)) for r in records})
        raise ValueError(f"no {layers} cross-attention layer at {size}; recorded: {found}")
    return torch.stack(chosen).mean(0)


def gather_tokens(maps: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, tokens, h, w), (B, K) sequence positions -> (B, K, h, w)."""
    index = positions.to(maps.device).long()[..., None, None].expand(-1, -1, *maps.shape[-2:])
    return maps.gather(1, index)


def min_max(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each sample's map rescaled to [0, 1]: a softmax share over 77 tokens cannot reach the
    mask's 1 (the mean of 4 tokens is at most 1/4); the authors rescale, per batch, we per sample."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    shape = (-1,) + (1,) * (maps.dim() - 1)
    return (maps - lo.view(shape)) / (hi - lo).clamp(min=eps).view(shape)


def decoupled_anomaly_alignment(df_map: torch.Tensor, ob_map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 3 at one resolution, on (B,h,w) maps and a (B,1,h,w) mask:
    mean_p (Abar_df - M)^2 + mean_{p in M} A_ob^2 (zero when no cell is anomalous)."""
    m = mask[:, 0]
    align = (df_map - m).square().mean()
    inside = m > 0.5
    separate = ob_map[inside].square().mean() if inside.any() else ob_map.sum() * 0.0
    return align + separate


def da_loss(records: Sequence[AttentionRecord], mask: torch.Tensor, ob_positions: torch.Tensor,
            df_positions: torch.Tensor, sizes: Sequence[tuple[int, int]], normalize: bool = True) -> dict:
    """Eq. 3 summed over the DA resolutions. `records` come from a `CrossAttentionHook(detach=False)`
    on the U-Net run with the anomaly prompts; `mask` (B,1,H,W) is the image mask; positions are
    (B, N') for <ob> and (B, N) for <df> (`UnbalancedPrompts.prompt_positions`). Returns
    {"da": total, "da_<h>": per resolution}."""
    out = {}
    for size in sizes:
        maps = encoder_maps(records, size)
        df = gather_tokens(maps, df_positions).mean(1)  # Abar_df: mean over the type's N tokens
        ob = gather_tokens(maps, ob_positions).mean(1)  # N' = 1: the <ob> map itself
        if normalize:
            df, ob = min_max(df), min_max(ob)
        out[f"da_{size[0]}"] = decoupled_anomaly_alignment(df, ob, mask_at(mask, size))
    out["da"] = sum(out.values())
    return out


def da_loss_from_hook(hook: CrossAttentionHook, *args, **kwargs) -> dict:
    """`da_loss` on everything the hook recorded since its last `clear()`."""
    return da_loss(hook.records, *args, **kwargs)


def epsilon_loss(eps: torch.Tensor, eps_pred: torch.Tensor) -> torch.Tensor:
    """|| eps - eps_theta(z_t, t, e) ||^2, mean over elements: the LDM loss on anomaly images with
    P_n, and the NA loss on normal images with "a <ob>"."""
    return (eps.float() - eps_pred.float()).square().mean()


def normal_alignment_loss(eps_ob: torch.Tensor, eps_pred_ob: torch.Tensor) -> torch.Tensor:
    """NA loss (Table 10 text): || eps_ob - eps_theta(z_ob, t_ob, e_ob) ||^2 on normal images."""
    return epsilon_loss(eps_ob, eps_pred_ob)


def ssf_loss(eps_df: torch.Tensor, eps_pred_df: torch.Tensor, eps_ob: torch.Tensor, eps_pred_ob: torch.Tensor,
             da: torch.Tensor) -> dict:
    """SSF total: L_eps(anomaly) + L_DA (both resolutions) + L_NA, unit weights."""
    diffusion, na = epsilon_loss(eps_df, eps_pred_df), normal_alignment_loss(eps_ob, eps_pred_ob)
    return {"loss": diffusion + da + na, "diffusion": diffusion, "na": na, "da": da}


# -- Refined Mask Prediction, Eq. 10 -------------------------------------------------------------
def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """F: mean over pixels of -(1 - p_t)^gamma log p_t, with p = softmax over the 2 channels.
    A 2-way softmax is a sigmoid of the logit difference, so torchvision's binary focal loss
    (alpha = -1: no class weight) computes it exactly. logits (B,2,h,w), target (B,1,h,w)."""
    return sigmoid_focal_loss(logits[:, 1:2] - logits[:, 0:1], target.float(), alpha=-1, gamma=gamma,
                              reduction="mean")


def rmp_loss(coarse: torch.Tensor, refined: torch.Tensor, mask: torch.Tensor, normal: torch.Tensor,
             gamma: float = FOCAL_GAMMA) -> dict:
    """Eq. 10 on a mixed batch. coarse (B,2,h,w) and refined (B,2,H,W) logits, mask (B,1,H,W)
    (all zero for normal images), normal (B,) bool. Each F is a mean over its own images."""
    normal = normal.to(coarse.device).bool()
    target = torch.where(normal.view(-1, 1, 1, 1), torch.zeros_like(mask), mask).float()  # M_ob = 0 (A.3)
    coarse_target = mask_at(target, tuple(coarse.shape[-2:]))
    terms = {}
    for name, rows in (("df", ~normal), ("ob", normal)):
        if rows.any():
            terms[f"coarse_{name}"] = focal_loss(coarse[rows], coarse_target[rows], gamma)
            terms[f"refined_{name}"] = focal_loss(refined[rows], target[rows], gamma)
    terms["loss"] = sum(terms.values())
    return terms
