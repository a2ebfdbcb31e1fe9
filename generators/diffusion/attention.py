"""A cross-attention hook: record per-layer, per-token attention maps; re-weight or mask them.

Installed as a diffusers attention processor on every cross-attention layer (`attn2`) of a UNet;
self-attention keeps its original processor. What the next methods need from it:
- SeaS (DA loss) and DefectDiffu (attention loss, mask module) read the maps, with gradients:
  `record=True, detach=False`, then `maps_at(size)` / `token_map(tokens, size)`.
- AnomalyDiffusion (adaptive attention re-weighting) multiplies the attention probabilities of
  some tokens by a spatial weight: `reweight(weight, tokens)`.
- BADG (masked cross-attention) lets some tokens be attended only inside a spatial mask and
  others only outside: `restrict(mask, inside=..., outside=...)`.
Spatial inputs are given once at latent resolution (B,1,h,w) and resized to each layer's grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AttentionRecord:
    layer: str
    probs: torch.Tensor  # (B, heads, h*w, tokens)
    size: tuple[int, int]  # (h, w) of the layer's query grid

    def maps(self) -> torch.Tensor:
        """(B, tokens, h, w): mean over heads."""
        b, _, _, n = self.probs.shape
        return self.probs.mean(1).transpose(1, 2).reshape(b, n, *self.size)


class CrossAttentionHook:
    def __init__(self, record: bool = True, detach: bool = True, layers: Sequence[str] | None = None):
        self.record = record
        self.detach = detach
        self.layers = layers  # substrings of processor names to hook; None = every cross-attention
        self.records: list[AttentionRecord] = []
        self.weight: torch.Tensor | None = None
        self.weight_tokens: Sequence[int] | None = None
        self.mask: torch.Tensor | None = None
        self.inside: Sequence[int] = ()
        self.outside: Sequence[int] = ()
        self._latent_size: tuple[int, int] | None = None
        self._unet: nn.Module | None = None
        self._original: dict | None = None
        self._pre_hook = None

    # -- installing -------------------------------------------------------------------------
    def attach(self, unet: nn.Module) -> "CrossAttentionHook":
        self._unet, self._original = unet, dict(unet.attn_processors)
        processors = {}
        for name, proc in self._original.items():
            hooked = name.endswith("attn2.processor") and (self.layers is None or any(s in name for s in self.layers))
            processors[name] = self.processor_class(self, name.removesuffix(".processor")) if hooked else proc
        unet.set_attn_processor(processors)
        self._pre_hook = unet.register_forward_pre_hook(self._remember_latent_size, with_kwargs=True)
        return self

    def detach_from_unet(self) -> None:
        if self._unet is not None:
            self._unet.set_attn_processor(self._original)
            self._pre_hook.remove()
            self._unet = self._original = self._pre_hook = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach_from_unet()

    def _remember_latent_size(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self._latent_size = tuple(sample.shape[-2:])

    # -- controls ---------------------------------------------------------------------------
    def clear(self) -> None:
        self.records = []

    def reweight(self, weight: torch.Tensor | None, tokens: Sequence[int] | None = None) -> None:
        """Multiply the attention probabilities of `tokens` (all when None) by `weight` (B,1,h,w)."""
        self.weight, self.weight_tokens = weight, tokens

    def restrict(self, mask: torch.Tensor | None, inside: Sequence[int] = (), outside: Sequence[int] = ()) -> None:
        """Queries outside `mask` (B,1,h,w) cannot attend `inside` tokens; queries inside cannot
        attend `outside` tokens (masked before the softmax). Keep at least one token (e.g. BOS)
        in neither group, so no query is left with nothing to attend."""
        self.mask, self.inside, self.outside = mask, tuple(inside), tuple(outside)

    # -- reading ----------------------------------------------------------------------------
    def maps_at(self, size: tuple[int, int]) -> torch.Tensor:
        """(B, layers, tokens, h, w): every recorded layer's head-mean maps resized to `size`."""
        maps = [F.interpolate(r.maps(), size=size, mode="bilinear", align_corners=False) for r in self.records]
        return torch.stack(maps, 1)

    def token_map(self, tokens: Sequence[int], size: tuple[int, int]) -> torch.Tensor:
        """(B, h, w): mean over layers and the given tokens."""
        return self.maps_at(size)[:, :, list(tokens)].mean((1, 2))

    # -- used by the processor --------------------------------------------------------------
    def layer_size(self, n_queries: int) -> tuple[int, int]:
        h, w = self._latent_size
        factor = round(math.sqrt(h * w / n_queries))
        return h // factor, w // factor

    @staticmethod
    def spatial(x: torch.Tensor, size: tuple[int, int], heads: int) -> torch.Tensor:
        """(B,1,H,W) -> (B*heads, h*w, 1), matching the processor's head-batched layout."""
        x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False) if x.shape[-2:] != size else x.float()
        return x.flatten(1).repeat_interleave(heads, 0)[..., None]


class CrossAttentionProcessor:
    """diffusers' plain `AttnProcessor` with a hook between the softmax and the value product."""

    def __init__(self, hook: CrossAttentionHook, layer: str):
        self.hook, self.layer = hook, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        hook = self.hook
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        query, key, value = (attn.head_to_batch_dim(t) for t in (query, key, value))

        size = hook.layer_size(query.shape[1])
        probs = self.attention_probs(attn, query, key, attention_mask, size)
        if hook.record:
            kept = probs.detach() if hook.detach else probs
            hook.records.append(AttentionRecord(self.layer, kept.unflatten(0, (-1, attn.heads)), size))

        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def attention_probs(self, attn, query, key, attention_mask, size: tuple[int, int]) -> torch.Tensor:
        """(B*heads, queries, tokens) probabilities: the softmax, restricted (`hook.restrict`) and
        re-weighted (`hook.reweight`); a method that changes the softmax itself overrides this."""
        hook = self.hook
        if hook.mask is not None and (hook.inside or hook.outside):
            attention_mask = self._restriction_bias(query, key, size, attn.heads, attention_mask)
        probs = attn.get_attention_scores(query, key, attention_mask)
        if hook.weight is not None:
            scale = hook.spatial(hook.weight, size, attn.heads).to(probs.dtype)  # (B*heads, q, 1)
            if hook.weight_tokens is not None:
                chosen = torch.zeros(probs.shape[-1], dtype=torch.bool, device=probs.device)
                chosen[list(hook.weight_tokens)] = True
                scale = torch.where(chosen, scale, torch.ones_like(scale))
            probs = probs * scale
        return probs

    def _restriction_bias(self, query, key, size, heads, attention_mask):
        hook = self.hook
        inside_q = hook.spatial(hook.mask, size, heads) > 0.5  # (B*heads, q, 1)
        n_tokens = key.shape[1]
        in_tok = torch.zeros(n_tokens, dtype=torch.bool, device=key.device)
        out_tok = torch.zeros_like(in_tok)
        in_tok[list(hook.inside)] = True
        out_tok[list(hook.outside)] = True
        banned = (~inside_q & in_tok) | (inside_q & out_tok)  # (B*heads, q, tokens)
        bias = torch.zeros(banned.shape, dtype=query.dtype, device=query.device).masked_fill(banned, torch.finfo(query.dtype).min)
        return bias if attention_mask is None else attention_mask + bias


CrossAttentionHook.processor_class = CrossAttentionProcessor  # a subclass of the hook may install its own
