"""Conditioning beyond one text prompt: extra per-sample tokens, guidance with several conditions.

- `with_extra_tokens`: per-sample token embeddings appended to the text-encoder states; how
  AnomalyDiffusion (Sec. 3.2) joins its spatial embedding (encoded from each sample's mask) to the
  learned anomaly embedding as the diffusion model's text condition.
- `multi_condition_guidance`: classifier-free guidance with several conditions, each with its own
  scale against one unconditional prediction: eps = eps_u + sum_i s_i (eps_i - eps_u). One
  condition is Ho & Salimans 2022 Eq. 6, (1 + w) eps_c - w eps_u, with s = 1 + w. DefectDiffu's
  double-free guidance (Eq. 4) is two: eps_u = eps(c_g, null), conditions eps(c_g, c_p) and
  eps(c_d, null), scales w_p and w_d.
"""

from __future__ import annotations

from typing import Sequence

import torch


def with_extra_tokens(context: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B,L,D) text context and (B,K,D) (or (B,D): one token) per-sample embeddings -> (B,L+K,D),
    the extra tokens after the prompt's; gradients reach both."""
    if tokens.dim() == 2:
        tokens = tokens[:, None]
    if tokens.dim() != 3 or tokens.shape[0] != context.shape[0] or tokens.shape[-1] != context.shape[-1]:
        raise ValueError(f"extra tokens {tuple(tokens.shape)} do not fit a context {tuple(context.shape)}: "
                         "need (B, K, D) with the context's B and D")
    return torch.cat([context, tokens.to(context.dtype)], dim=1)


def multi_condition_guidance(eps_uncond: torch.Tensor, eps_conds: Sequence[torch.Tensor],
                             scales: Sequence[float]) -> torch.Tensor:
    """eps_u + sum_i s_i (eps_i - eps_u): Ho & Salimans 2022 Eq. 6 (s = 1 + w) for each condition."""
    if len(eps_conds) != len(scales):
        raise ValueError(f"{len(eps_conds)} conditional predictions but {len(scales)} guidance scales")
    out = eps_uncond
    for eps, w in zip(eps_conds, scales):
        out = out + w * (eps - eps_uncond)
    return out
