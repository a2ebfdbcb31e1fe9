"""Double-free: condition dropout in training (Algorithm 1), guidance at sampling (Eq. 4), zero-shot
defect transfer (Eq. 12) and the w_d sweep (Sec. 4.2, Fig. 4: w_d sets the defect strength).

A context for the three-part transformer is (B, 3, L, D): the encoded background, defect and fusion
prompts (`TdiaTransformer`); `encode` maps a list of `PartPrompts` to one.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from generators.defectdiffu.options import P1, P2
from generators.defectdiffu.vocabulary import GOOD, PartPrompts, guidance_prompts
from generators.diffusion.conditioning import multi_condition_guidance

W_D_SWEEP = (0.5, 1.0, 1.5, 2.0, 2.5)  # the paper prints no values; the authors' public code sweeps these


def double_free_dropout(products: Sequence[str], defects: Sequence[str], draws: torch.Tensor,
                        p1: float = P1, p2: float = P2) -> tuple[list[str | None], list[str]]:
    """Algorithm 1 on a batch, with the uniform draws given (B, 3) so a test can plant them:
    1: with p1, c_p -> null (draw 0); 2: if c_d^r is not good: 3: with p2, c_d -> good (draw 1);
    4: with p1, c_p -> null (draw 2). Line 4 repeats line 1's dropout for defect samples, as printed,
    so a defect sample loses its product with probability 1 - (1 - p1)^2."""
    if draws.shape != (len(products), 3) or len(products) != len(defects):
        raise ValueError(f"need one (3,) draw per sample: {len(products)} products, {len(defects)} defects, "
                         f"draws {tuple(draws.shape)}")
    out_p: list[str | None] = []
    out_d: list[str] = []
    for product, defect, u in zip(products, defects, draws.tolist()):
        c_p, c_d = product, defect
        if u[0] < p1:
            c_p = None
        if defect != GOOD:
            if u[1] < p2:
                c_d = GOOD
            if u[2] < p1:
                c_p = None
        out_p.append(c_p)
        out_d.append(c_d)
    return out_p, out_d


def double_free_guidance(eps_good_null: torch.Tensor, eps_good_product: torch.Tensor,
                         eps_defect_null: torch.Tensor, w_p: float, w_d: float) -> torch.Tensor:
    """Eq. 4: eps(c_g, null) + w_p (eps(c_g, c_p) - eps(c_g, null)) + w_d (eps(c_d, null) - eps(c_g, null))."""
    return multi_condition_guidance(eps_good_null, [eps_good_product, eps_defect_null], [w_p, w_d])


def double_free_eps(denoiser: Callable, latents: torch.Tensor, t, contexts: Sequence[torch.Tensor],
                    w_p: float, w_d: float) -> torch.Tensor:
    """The three eps evaluations of one step in one batched denoiser call, combined by Eq. 4.
    `contexts` = (c_g null, c_g c_p, c_d null), each (B, 3, L, D)."""
    if len(contexts) != 3:
        raise ValueError(f"double-free guidance needs 3 contexts, got {len(contexts)}")
    b = len(latents)
    t = torch.as_tensor(t, device=latents.device)
    t3 = t.repeat(3) if t.dim() == 1 else t
    eps = denoiser(latents.repeat(3, *([1] * (latents.dim() - 1))), t3, torch.cat(list(contexts)))
    eps_good_null, eps_good_product, eps_defect_null = eps.split(b)
    return double_free_guidance(eps_good_null, eps_good_product, eps_defect_null, w_p, w_d)


def guidance_contexts(encode: Callable[[list[PartPrompts]], torch.Tensor], products: Sequence[str],
                      defects: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three (B, 3, L, D) contexts of Eq. 4 for a batch of (product, unified defect) requests."""
    triples = [guidance_prompts(p, d) for p, d in zip(products, defects)]
    return tuple(encode([tr[k] for tr in triples]) for k in range(3))


def zero_shot_transfer_eps(denoiser: Callable, latents: torch.Tensor, t,
                           encode: Callable[[list[PartPrompts]], torch.Tensor], target_product: str,
                           source_defect: str, w_p: float, w_d: float,
                           seen: Sequence[tuple[str, str]] | None = None) -> torch.Tensor:
    """Eq. 12: the background direction of the target product c_T (trained on normal images only)
    plus the defect direction of c_d^s learned on other products. `seen` lists the (product, defect)
    pairs trained with defect images; when given, the transfer must be zero-shot (the target never
    showed this defect) and the defect must have been learned somewhere else."""
    if seen is not None:
        seen = set(seen)
        if (target_product, source_defect) in seen:
            raise ValueError(f"{target_product}/{source_defect} was trained on: not a zero-shot transfer")
        if not any(d == source_defect for _, d in seen):
            raise ValueError(f"defect {source_defect!r} was not learned on any product")
    b = len(latents)
    contexts = guidance_contexts(encode, [target_product] * b, [source_defect] * b)
    return double_free_eps(denoiser, latents, t, contexts, w_p, w_d)


def w_d_for_requests(n: int, sweep: Sequence[float] = W_D_SWEEP) -> list[float]:
    """One defect strength per request, cycling through the sweep (diversity of strength, Fig. 4)."""
    if not sweep:
        raise ValueError("empty w_d sweep")
    return [float(sweep[i % len(sweep)]) for i in range(n)]
