"""BADG (Cho et al., "Background-Aware Defect Generation for Robust Industrial Anomaly Detection"):
the math, no training loop.

Notation follows the paper: alpha_t is the cumulative product (diffusers' `alphas_cumprod`), m the
binary defect mask at latent size, m' that mask resized to an attention layer's grid, C1 = [C_def,
C_bg] the context of the full latent z_t and C2 = [C_m, C_bg] the context of the masked latent
z_t^m = (1 - m) * z_t.

- Eq. 10, 11, 31  `group_softmax_mix`, `inside_outside_bias`, `MaskedCrossAttention` (a diffusers
  attention processor on every cross-attention layer): C_def / C_m attended only inside m', C_bg
  only outside.
- Sec. 3.3.1       `BadgTokens`: the three DreamBooth-style prompts and the contexts C1, C2.
- Eq. 3            `ddim_step`; Eq. 9 `composite_noise`, `composite_ddim_sampling` (background from
  the C2 pass, defect from the C1 pass).
- Sec. 3.2         `initial_latent`: z_T* = z~_T^m + m * eps (justified by Theorem 3.2).
- Eq. 13           `refine_mask`: the upsampled m' * C_def attention thresholded at 1/2.
- Sec. 4.1, Alg. 1 `BadgModel`: the fine-tuned U-Net with the masked attention, both passes in one
  U-Net call, and inference (inversion, initialisation, composite sampling, the Eq. 13 map).
The masked DDIM inversion (Eq. 8) is the diffusion core's (`generators.diffusion.inversion`), the
loss (Eq. 5-7) in `loss.py`.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from generators.diffusion.attention import CrossAttentionHook, CrossAttentionProcessor
from generators.diffusion.backbone import Backbone
from generators.diffusion.inversion import masked_ddim_inversion


# -- Eq. 10 / 11 / 31: masked cross-attention ---------------------------------------------------------
def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """m': the latent mask (B,1,h,w) on an attention layer's grid, as the fraction of each cell
    inside the mask (area average). The paper only says "resized mask"; the area fraction keeps
    Eq. 10 a convex mix at coarse layers where a cell straddles the mask border, and is the mask
    itself (binary) at the latent's own grid."""
    mask = mask.float()
    return mask if tuple(mask.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(mask, size)


def token_groups(n_tokens: int, n_inside: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (n_tokens,) masks of the two context groups: the first `n_inside` tokens (C_def in
    C1, C_m in C2) and the rest (C_bg)."""
    inside = torch.arange(n_tokens, device=device) < n_inside
    return inside, ~inside


def inside_outside_bias(query_inside: torch.Tensor, inside_tokens: torch.Tensor, outside_tokens: torch.Tensor,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Eq. 10 as an additive attention bias for a binary m': (B, q, n) with the dtype's lowest value
    where a query inside the mask meets a C_bg token or a query outside meets a C_def / C_m token,
    0 elsewhere. `query_inside` (B, q) bool. With every token in one of the two groups, one
    softmax of scores + bias is Eq. 10 exactly (each row is the softmax over its own group)."""
    q = query_inside[..., None]
    banned = (q & outside_tokens) | (~q & inside_tokens)
    return torch.zeros(banned.shape, dtype=dtype, device=banned.device).masked_fill(banned, torch.finfo(dtype).min)


def group_softmax_mix(scores: torch.Tensor, m_q: torch.Tensor, inside_tokens: torch.Tensor,
                      outside_tokens: torch.Tensor) -> torch.Tensor:
    """Eq. 10 / 11 as one probability matrix over the concatenated context: columns of the inside
    group hold m' * softmax(Q K_def^T / tau) (M_def), columns of C_bg hold (1 - m') * softmax(Q
    K_bg^T / tau) (M_bg), so `probs @ [V_def; V_bg]` is Eq. 10 and the inside columns are the map
    that Eq. 13 thresholds. `scores` (B, q, n) are Q K^T / tau; `m_q` (B, q, 1) is m' per query
    (soft values mix the two softmaxes, as Eq. 10's elementwise product reads)."""
    low = torch.finfo(scores.dtype).min
    m_def = scores.masked_fill(outside_tokens, low).softmax(-1)  # softmax over the inside group only
    m_bg = scores.masked_fill(inside_tokens, low).softmax(-1)  # softmax over C_bg only
    return m_q * m_def + (1 - m_q) * m_bg


class MaskedCrossAttention(CrossAttentionHook):
    """The project's cross-attention hook with BADG's masked cross-attention (Eq. 10 / 11) as the
    processor of every cross-attention layer; it records the mixed probabilities like the base hook.

    `set(mask, n_inside)`: latent mask (B,1,h,w) and the number of leading context tokens in the
    inside group; the same call serves C1 (C_def inside) and C2 (C_m inside), whose groups have the
    same lengths. Self-attention is left alone, as in the paper (Eq. 12)."""

    def __init__(self, record: bool = False, detach: bool = True, layers: Sequence[str] | None = None):
        super().__init__(record=record, detach=detach, layers=layers)
        self.n_inside: int | None = None

    def set(self, mask: torch.Tensor | None, n_inside: int | None = None) -> None:
        self.mask, self.n_inside = mask, n_inside


class MaskedCrossAttnProcessor(CrossAttentionProcessor):
    """The project's cross-attention processor with Eq. 10 / 11 in place of the single softmax."""

    def attention_probs(self, attn, query, key, attention_mask, size: tuple[int, int]) -> torch.Tensor:
        hook = self.hook
        if hook.mask is None or hook.n_inside is None:
            return attn.get_attention_scores(query, key, attention_mask)
        inside, outside = token_groups(key.shape[1], hook.n_inside, key.device)
        m_q = resize_mask(hook.mask, size).flatten(1).repeat_interleave(attn.heads, 0)[..., None]  # (B*heads, q, 1)
        # two softmaxes through diffusers' own score code (keeps its upcasting), each over one group
        base = 0 if attention_mask is None else attention_mask
        m_def = attn.get_attention_scores(query, key, base + _ban(outside, query.dtype))  # softmax over C_def / C_m
        m_bg = attn.get_attention_scores(query, key, base + _ban(inside, query.dtype))  # softmax over C_bg
        return m_q.to(m_def.dtype) * m_def + (1 - m_q.to(m_def.dtype)) * m_bg  # Eq. 10 / 11


MaskedCrossAttention.processor_class = MaskedCrossAttnProcessor


def _ban(tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(n,) additive bias: the dtype's lowest value on `tokens`, 0 elsewhere."""
    return torch.zeros(tokens.shape, dtype=dtype, device=tokens.device).masked_fill(tokens, torch.finfo(dtype).min)


# -- Sec. 3.3.1: DreamBooth-style tokens --------------------------------------------------------------
def rare_identifier(name: str, length: int = 3) -> str:
    """A DreamBooth identifier (Ruiz et al. 2023, Sec. 3.2: a short rare word, like "sks") derived
    from `name`, so it is fixed across runs without a registry to checkpoint. The paper gives no
    prompt strings; consonant-only strings are rarely words, and distinct names rarely collide."""
    letters = "bcdfghjklmnpqrstvwxz"
    digest = hashlib.sha256(name.encode()).digest()
    return "".join(letters[b % len(letters)] for b in digest[:length])


class BadgTokens:
    """The three prompts of BADG with the frozen text encoder (only the U-Net trains, Sec. 4.1):

    - C_def, per (category, defect type): "<id> <defect words> defect";
    - C_m, one for every category: "<id> masked region" (what fills the zeroed defect area of z^m);
    - C_bg, per category: "<id> <category words>".

    Each prompt is encoded alone (BOS, words, EOS, padding) and C1 = [C_def, C_bg], C2 = [C_m, C_bg]
    are concatenations along the token axis; the first `group_length` tokens form the inside group.
    `encode(prompts) -> (B, L, D)` is the frozen text encoder at length `group_length`."""

    MASK_NAME = "masked region"

    def __init__(self, tokenizer, encode: Callable[[list[str]], torch.Tensor], group_length: int):
        self.tokenizer, self.encode, self.group_length = tokenizer, encode, group_length

    @staticmethod
    def words(name: str) -> str:
        return name.replace("_", " ").replace("/", " ")

    def prompts(self, category: str, defect: str) -> dict[str, str]:
        return {"def": f"{rare_identifier(f'{category}/{defect}')} {self.words(defect)} defect",
                "m": f"{rare_identifier(self.MASK_NAME)} {self.MASK_NAME}",
                "bg": f"{rare_identifier(category)} {self.words(category)}"}

    def contexts(self, categories: list[str], defects: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """C1 = [C_def, C_bg] and C2 = [C_m, C_bg], each (B, 2 * group_length, D)."""
        p = [self.prompts(c, d) for c, d in zip(categories, defects)]
        c_def, c_m, c_bg = (self.encode([x[k] for x in p]) for k in ("def", "m", "bg"))
        return torch.cat([c_def, c_bg], 1), torch.cat([c_m, c_bg], 1)

    def defect_positions(self, category: str, defect: str) -> list[int]:
        """Positions in C1 of C_def's words (after BOS, before EOS and padding): the tokens whose
        attention Eq. 13 thresholds. Summing every C_def token would give m' itself (a softmax
        sums to 1), so the map is the mass on the words that name the defect."""
        n = len(self.tokenizer(self.prompts(category, defect)["def"], add_special_tokens=False).input_ids)
        return list(range(1, min(1 + n, self.group_length - 1)))


# -- Eq. 3, 9: DDIM sampling with the composite noise --------------------------------------------------
def ddim_step(z_t: torch.Tensor, eps: torch.Tensor, alpha_t, alpha_prev) -> torch.Tensor:
    """Eq. 3: z_{t-1} = sqrt(alpha_{t-1}) * (z_t - sqrt(1 - alpha_t) eps) / sqrt(alpha_t)
    + sqrt(1 - alpha_{t-1}) eps (deterministic DDIM, eta = 0)."""
    x0 = (z_t - (1 - alpha_t) ** 0.5 * eps) / alpha_t**0.5
    return alpha_prev**0.5 * x0 + (1 - alpha_prev) ** 0.5 * eps


def composite_noise(m: torch.Tensor, eps_c1: torch.Tensor, eps_c2: torch.Tensor) -> torch.Tensor:
    """Eq. 9's noise: (1 - m) * eps_theta(., t, C2) + m * eps_theta(z_t*, t, C1)."""
    return (1 - m) * eps_c2 + m * eps_c1


def initial_latent(z_inverted: torch.Tensor, m: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Sec. 3.2 (after Theorem 3.2): z_T* = z~_T^m + m * eps, eps ~ N(0, I)."""
    return z_inverted + m * eps


# denoise_pair(z for the C1 pass, z for the C2 pass, timestep) -> (eps C1, eps C2), one U-Net call
DenoisePair = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def composite_ddim_sampling(denoise_pair: DenoisePair, z_T: torch.Tensor, m: torch.Tensor, scheduler,
                            c2_input: str = "masked", trajectory: list | None = None) -> torch.Tensor:
    """Eq. 9 over `scheduler.timesteps` (a diffusers `DDIMScheduler`, eta = 0, its timesteps set):
    each step feeds z_t* to the C1 pass and, by default, (1 - m) * z_t* to the C2 pass, then takes
    diffusers' DDIM step (Eq. 3) with the composite noise.

    Eq. 9 prints eps_theta(z_t*, t, C2); the proof of Proposition 3.3 (Eq. 26-30) evaluates the C2
    pass on the masked latent z_t^m = (1 - m) * z_t*, which is also what the regulariser trained
    it on (Eq. 5, 7). Only the masked input keeps the background independent of the defect, so it
    is the default; c2_input="full" is Eq. 9 as printed. `trajectory`, when a list, receives z_t*
    before each step and z_0* at the end."""
    if c2_input not in ("masked", "full"):
        raise ValueError(f"c2_input must be 'masked' or 'full', not {c2_input!r}")
    z = z_T
    for t in scheduler.timesteps:
        if trajectory is not None:
            trajectory.append(z)
        eps_c1, eps_c2 = denoise_pair(z, (1 - m) * z if c2_input == "masked" else z, t)
        z = scheduler.step(composite_noise(m, eps_c1, eps_c2), t, z).prev_sample  # Eq. 9 = Eq. 3 with that noise
    if trajectory is not None:
        trajectory.append(z)
    return z


def masked_ddim_sampling(denoise: Callable[[torch.Tensor, int], torch.Tensor], z_T: torch.Tensor, m: torch.Tensor,
                         scheduler) -> torch.Tensor:
    """The background-only path z_t^m of Proposition 3.3 (Eq. 26): DDIM sampling of z~_T^m with the
    C2 noise masked by (1 - m). The reference path the composite sampler's background must follow."""
    z = z_T
    for t in scheduler.timesteps:
        z = scheduler.step((1 - m) * denoise(z, t), t, z).prev_sample
    return z


# -- Eq. 13: mask refinement ---------------------------------------------------------------------------
def refine_mask(defect_map: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Eq. 13: m* = [Resize(m' * softmax(Q K_def^T / tau)) >= 1/2], bilinear up to the mask's size.

    `defect_map` (B,1,h,w) or (B,h,w): m' * M_def on the C_def words (the inside columns recorded
    by `MaskedCrossAttention`, averaged over layers and steps by the caller). Bilinear upsampling
    spreads a coarse map past the mask's border, so the result is intersected with `mask`
    (B,1,H,W): the refined mask is a subset of the given one, as m' in Eq. 13 intends."""
    if defect_map.dim() == 3:
        defect_map = defect_map[:, None]
    up = F.interpolate(defect_map.float(), size=mask.shape[-2:], mode="bilinear", align_corners=False)
    return ((up >= threshold) & (mask > 0.5)).to(mask.dtype if mask.is_floating_point() else torch.float32)


# -- the model: Stable Diffusion with a fine-tuned U-Net, BADG's prompts and masked attention ----------
class BadgModel(nn.Module):
    """The U-Net (the only trained part, "we only trained the U-Net part ... followed by
    Dreambooth", Sec. 4.1), the frozen VAE and text encoder, BADG's prompts, and the masked
    cross-attention installed on every cross-attention layer of the U-Net."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        self.unet, self.vae, self.text_encoder = backbone.unet, backbone.vae, backbone.text_encoder
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        self.unet.requires_grad_(True)
        self.tokens = BadgTokens(backbone.tokenizer, self._encode, backbone.max_length)
        self.attention = MaskedCrossAttention(record=False).attach(self.unet)

    def train(self, mode: bool = True) -> "BadgModel":
        super().train(mode)
        self.vae.eval()
        self.text_encoder.eval()  # frozen: no dropout
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.unet.parameters())

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.text_encoder.parameters()).device
        ids = self.backbone.tokenizer(prompts, padding="max_length", max_length=self.backbone.max_length,
                                      truncation=True, return_tensors="pt").input_ids.to(device)
        return self.text_encoder(ids)[0]

    def contexts(self, categories: list[str], defects: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens.contexts(categories, defects)

    def denoise_pair(self, z_c1: torch.Tensor, z_c2: torch.Tensor, t, c1: torch.Tensor, c2: torch.Tensor,
                     m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """eps_theta(z_c1, t, C1) and eps_theta(z_c2, t, C2) in one U-Net call, both with the
        masked cross-attention on m (Eq. 10 for C1, Eq. 11 for C2)."""
        t = torch.as_tensor(t, device=z_c1.device).expand(len(z_c1))
        self.attention.set(torch.cat([m, m]), self.tokens.group_length)
        eps = self.unet(torch.cat([z_c1, z_c2]), torch.cat([t, t]), encoder_hidden_states=torch.cat([c1, c2])).sample
        return eps.chunk(2)

    def denoise(self, z: torch.Tensor, t, context: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """eps_theta(z, t, C) for one context with the masked cross-attention (the inversion's C2 pass)."""
        t = torch.as_tensor(t, device=z.device).expand(len(z))
        self.attention.set(m, self.tokens.group_length)
        return self.unet(z, t, encoder_hidden_states=context).sample

    @torch.no_grad()
    def generate(self, z0_normal: torch.Tensor, m: torch.Tensor, eps: torch.Tensor, c1: torch.Tensor,
                 c2: torch.Tensor, sampler, inverse, defect_positions: list[list[int]],
                 c2_input: str = "masked") -> tuple[torch.Tensor, torch.Tensor]:
        """Algorithm 1, inference: masked inversion of (1 - m) z_0^normal (Eq. 8), z_T* (Sec. 3.2),
        composite sampling (Eq. 9). Returns z_0* and the defect map for Eq. 13: m' * M_def summed
        over each sample's C_def words, averaged over layers and sampling steps, at latent size."""
        z_inv = masked_ddim_inversion(z0_normal, m, lambda z, t, c: self.denoise(z, t, c, m), inverse,
                                      inverse.num_inference_steps, context=c2)
        size, n = tuple(m.shape[-2:]), len(m)
        total = torch.zeros(n, 1, *size, device=m.device)

        def pair(z, zm, t):
            nonlocal total
            self.attention.clear()
            out = self.denoise_pair(z, zm, t, c1, c2, m)
            maps = self.attention.maps_at(size)[:n].mean(1)  # C1 half, mean over layers: (B, tokens, h, w)
            total = total + torch.stack([maps[b, pos].sum(0) for b, pos in enumerate(defect_positions)])[:, None]
            self.attention.clear()
            return out

        self.attention.record = True
        try:
            z0 = composite_ddim_sampling(pair, initial_latent(z_inv, m, eps), m, sampler, c2_input=c2_input)
        finally:
            self.attention.record = False
            self.attention.clear()
        return z0, total / len(sampler.timesteps)

    def trained_state(self) -> dict:
        return {"unet": {k: v.detach().cpu().clone() for k, v in self.unet.state_dict().items()}}

    def load_trained_state(self, state: dict) -> None:
        self.unet.load_state_dict(state["unet"])
