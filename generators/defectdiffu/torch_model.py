"""DefectDiffu's networks: the three-part DiT (TDIA, Sec. 3.2) and the mask generation module with
its inference-time averaging and binarisation (Sec. 3.4).

TDIA is DiT (Peebles & Xie 2023) with a cross-attention layer added to every block; blocks
[0, N) cross-attend the background prompt c_p, [N, N+M) the defect prompt c_d, [N+M, N+M+K) the
fusion prompt c_f (Sec. 4.1: N, M, K = 10, 10, 8, 28 blocks = DiT-XL/2). Built from diffusers'
DiT parts, not PixArt's: the paper initialises from pre-trained DiT (Sec. 4.1), whose blocks use
per-block adaLN-Zero (`BasicTransformerBlock(norm_type="ada_norm_zero")`) driven by a timestep +
class embedder; PixArt's blocks use one shared adaLN-single table and have no DiT checkpoint, so
the DiT weights (`from_dit`) would not load. The text enters only through the added cross-attention
(`attn2`, a plain diffusers `Attention`, so the project's `CrossAttentionHook` records it); the
class input of DiT's adaLN is held at DiT's null class (the paper names no class).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import AttentionMixin, BasicTransformerBlock
from diffusers.models.embeddings import PatchEmbed
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from generators.defectdiffu.options import BLOCKS_PAPER, LAST_STEPS
from generators.diffusion.attention import AttentionRecord

PARTS = ("background", "defect", "fusion")

# DiT-XL/2 at 512 px (Peebles & Xie 2023, Table 1 XL config; 64x64 latent of the SD VAE, 4 channels,
# learned variance -> 8 output channels) with a cross-attention to CLIP ViT-L/14 text states (768).
DIT_XL_2_512 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                    sample_size=64, patch_size=2, cross_attention_dim=768, blocks=BLOCKS_PAPER)
TINY = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, sample_size=8,
            patch_size=2, cross_attention_dim=16, blocks=(2, 2, 1))


class TdiaTransformer(ModelMixin, AttentionMixin, ConfigMixin):
    """The Text-guided Disentangled Integrated Architecture (Sec. 3.2, Fig. 2). Forward takes the
    latents, a timestep and `encoder_hidden_states` = (B, 3, L, D): the encoded background, defect
    and fusion prompts, in that order (or a sequence of three (B, L, D)); it returns the DiT output
    (noise, then learned-variance channels), so the base's `as_denoiser` wraps it unchanged.

    Parameter names follow diffusers' `DiTTransformer2DModel`, so a converted DiT checkpoint loads
    with `from_dit` (the new cross-attention stays at its initialisation). DiT has one timestep and
    one class embedder (Peebles & Xie, Sec. 3.2); diffusers keeps a copy per block, here all blocks
    share block 0's, as in DiT."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 72, in_channels: int = 4,
                 out_channels: int | None = 8, sample_size: int = 64, patch_size: int = 2,
                 cross_attention_dim: int = 768, blocks: Sequence[int] = BLOCKS_PAPER,
                 num_embeds_ada_norm: int = 1000, activation_fn: str = "gelu-approximate", norm_eps: float = 1e-5):
        super().__init__()
        inner = num_attention_heads * attention_head_dim
        self.out_channels = in_channels if out_channels is None else out_channels
        self.null_class = num_embeds_ada_norm  # DiT's classifier-free "null" class index
        self.gradient_checkpointing = False
        self.pos_embed = PatchEmbed(height=sample_size, width=sample_size, patch_size=patch_size,
                                    in_channels=in_channels, embed_dim=inner)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner, num_attention_heads, attention_head_dim,
                                  cross_attention_dim=cross_attention_dim, activation_fn=activation_fn,
                                  num_embeds_ada_norm=num_embeds_ada_norm, attention_bias=True,
                                  norm_type="ada_norm_zero", norm_elementwise_affine=False, norm_eps=norm_eps)
            for _ in range(sum(blocks))])
        shared = self.transformer_blocks[0].norm1.emb
        for block in self.transformer_blocks[1:]:
            block.norm1.emb = shared  # one timestep/class embedder, as in DiT
        self._register_state_dict_hook(_keep_one_embedder)  # safetensors refuses shared tensors
        self._register_load_state_dict_pre_hook(_share_one_embedder, with_module=True)
        self.norm_out = nn.LayerNorm(inner, elementwise_affine=False, eps=1e-6)
        self.proj_out_1 = nn.Linear(inner, 2 * inner)
        self.proj_out_2 = nn.Linear(inner, patch_size * patch_size * self.out_channels)

    # -- structure ------------------------------------------------------------------------------
    def part_of_block(self, index: int) -> int:
        """0 background, 1 defect, 2 fusion: which prompt block `index` cross-attends."""
        n, m, _ = self.config.blocks
        return 0 if index < n else (1 if index < n + m else 2)

    def part_blocks(self, part: str) -> list[int]:
        k = PARTS.index(part)
        return [i for i in range(len(self.transformer_blocks)) if self.part_of_block(i) == k]

    def attention_layers(self, part: str = "defect") -> list[str]:
        """Processor names of a part's cross-attention layers, for `CrossAttentionHook(layers=...)`;
        the trailing ".attn2" keeps block 1 from matching blocks 10-19."""
        return [f"transformer_blocks.{i}.attn2" for i in self.part_blocks(part)]

    @staticmethod
    def split_contexts(encoder_hidden_states) -> list[torch.Tensor]:
        if isinstance(encoder_hidden_states, torch.Tensor):
            if encoder_hidden_states.dim() != 4 or encoder_hidden_states.shape[1] != 3:
                raise ValueError(f"TDIA context must be (B, 3, L, D) (background, defect, fusion); "
                                 f"got {tuple(encoder_hidden_states.shape)}")
            return list(encoder_hidden_states.unbind(1))
        contexts = list(encoder_hidden_states)
        if len(contexts) != 3:
            raise ValueError(f"TDIA needs 3 prompt contexts (background, defect, fusion), got {len(contexts)}")
        return contexts

    # -- forward --------------------------------------------------------------------------------
    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states=None, timestep=None,
                class_labels: torch.Tensor | None = None, cross_attention_kwargs: dict | None = None,
                return_dict: bool = True, **unused):
        b = hidden_states.shape[0]
        p = self.config.patch_size
        h, w = hidden_states.shape[-2] // p, hidden_states.shape[-1] // p
        contexts = self.split_contexts(encoder_hidden_states)
        timestep = torch.as_tensor(timestep, device=hidden_states.device)
        timestep = timestep.expand(b) if timestep.dim() == 0 else timestep
        if class_labels is None:
            class_labels = torch.full((b,), self.null_class, dtype=torch.long, device=hidden_states.device)

        x = self.pos_embed(hidden_states)
        for i, block in enumerate(self.transformer_blocks):
            context = contexts[self.part_of_block(i)]  # Sec. 3.2: each part its own prompt
            args = (x, None, context, None, timestep, cross_attention_kwargs, class_labels)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, *args)
            else:
                x = block(*args)

        conditioning = self.transformer_blocks[0].norm1.emb(timestep, class_labels, hidden_dtype=x.dtype)
        shift, scale = self.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
        x = self.norm_out(x) * (1 + scale[:, None]) + shift[:, None]
        x = self.proj_out_2(x)
        x = x.reshape(b, h, w, p, p, self.out_channels)
        out = torch.einsum("nhwpqc->nchpwq", x).reshape(b, self.out_channels, h * p, w * p)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    # -- weights --------------------------------------------------------------------------------
    def load_dit(self, dit: nn.Module) -> list[str]:
        """Copy a diffusers `DiTTransformer2DModel`'s weights (e.g. a converted DiT-XL/2 512 checkpoint,
        Sec. 4.1); returns the parameters DiT does not have (the added cross-attention and its norm)."""
        result = self.load_state_dict(dit.state_dict(), strict=False)
        if result.unexpected_keys:
            raise ValueError(f"DiT weights that fit no TDIA parameter: {result.unexpected_keys[:5]}")
        return sorted(result.missing_keys)


def _keep_one_embedder(module, state_dict, prefix, local_metadata):
    """The shared embedder is saved once, under block 0 (the other blocks' names point at it)."""
    for key in [k for k in state_dict if k.startswith(prefix + "transformer_blocks.") and ".norm1.emb." in k]:
        if not key.startswith(prefix + "transformer_blocks.0."):
            del state_dict[key]
    return state_dict


def _share_one_embedder(module, state_dict, prefix, *args):
    """The inverse of `_keep_one_embedder` for `load_state_dict`: block 0's embedder entries stand
    for every block's, so a state saved with one copy loads strictly."""
    shared = prefix + "transformer_blocks.0.norm1.emb."
    for key in [k for k in state_dict if k.startswith(shared)]:
        for i in range(1, len(module.transformer_blocks)):
            state_dict.setdefault(key.replace("transformer_blocks.0.", f"transformer_blocks.{i}.", 1), state_dict[key])


# -- Sec. 3.4: mask generation ------------------------------------------------------------------------
def defect_block_maps(records: Sequence[AttentionRecord], layers: Sequence[str]) -> torch.Tensor:
    """Eq. 5 maps of the defect blocks concatenated along the channel dimension (Sec. 3.4):
    (B, len(layers) * tokens, h, w), block by block in `layers` order, each block's tokens in
    sequence order; maps are the head mean of each layer's softmax(QK^T/sqrt(d)). When a layer was
    recorded several times (several forward passes), its last record is used."""
    by_layer = {r.layer: r for r in records}
    missing = [name for name in layers if name not in by_layer]
    if missing:
        raise ValueError(f"no recorded cross-attention for {missing[:3]}; recorded: {sorted(by_layer)[:5]}")
    return torch.cat([by_layer[name].maps() for name in layers], 1)


class MaskGenerationModule(nn.Module):
    """Concatenated defect-block attention maps (B, blocks * tokens, h, w) at the token grid -> the
    mask latent M_f (B, C, h * patch, w * patch), decoded by the VAE like an image (Sec. 3.4). The
    paper gives no architecture; ours is the smallest that maps channels and upsamples: a 1x1 conv,
    nearest upsampling by the patch size, two 3x3 convs (SiLU between, replicate padding)."""

    def __init__(self, in_channels: int, latent_channels: int = 4, patch_size: int = 2, hidden: int = 64):
        super().__init__()
        self.patch_size = patch_size
        self.inp = nn.Conv2d(in_channels, hidden, 1)
        # replicate padding: with zero padding the border cells see a different input than the
        # interior and the isodata threshold splits off a frame (seen on the smoke run)
        self.mid = nn.Conv2d(hidden, hidden, 3, padding=1, padding_mode="replicate")
        self.out = nn.Conv2d(hidden, latent_channels, 3, padding=1, padding_mode="replicate")

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.inp(maps))
        x = F.interpolate(x, scale_factor=self.patch_size, mode="nearest")
        return self.out(F.silu(self.mid(x)))


def cell_mask_target(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The smoke preset's mask latent target (`mask_latent="cell"`, a departure from Eq. 6's VAE-encoded
    mask): each latent cell's mask area fraction, as a grey level in [-1, 1] (0 -> -1, 1 -> +1, as
    `encode_masks` maps the mask image), one channel (B, 1, h, w). The tiny autoencoders spread a
    cell's 8 x 8 pixels over many channels (pixel-unshuffle: one pixel per channel), so a mask module
    with a small per-channel error painted the same sub-pixel dots into every cell; one channel per
    cell cannot."""
    return F.adaptive_avg_pool2d(masks.float(), size) * 2 - 1


def upsample_cell_mask(mask_latent: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A one-channel cell mask latent (B, 1, h, w) -> a grey mask image (B, 1, H, W) in [-1, 1]
    units, bilinear between cell centres (the decoder of `mask_latent="cell"`; `mask_gray` reads it)."""
    return F.interpolate(mask_latent, size=size, mode="bilinear", align_corners=False)


def mask_gray(decoded: torch.Tensor) -> torch.Tensor:
    """A VAE-decoded mask image (B, 3, H, W) (or an upsampled cell mask, B, 1, H, W) in [-1, 1] ->
    M_pre^t (B, H, W) in [0, 255] (Sec. 3.4):
    channel mean, then the image's own [-1, 1] -> [0, 255] map."""
    return ((decoded.float().mean(1).clamp(-1, 1) + 1) * 127.5)


def average_last_steps(masks: Sequence[torch.Tensor], last: int = LAST_STEPS) -> torch.Tensor:
    """M_pre = mean of M_pre^t over the last `last` denoising steps (Sec. 3.4); `masks` in step order
    (the final step last). With fewer steps than `last`, all are averaged."""
    if not masks:
        raise ValueError("no mask predictions to average")
    return torch.stack(list(masks[-last:])).mean(0)


def isodata_threshold(values: torch.Tensor, tol: float = 1e-4, max_iter: int = 256) -> float:
    """Ridler-Calvard iterative (isodata) threshold of one map: t = (mean below-or-at t + mean above t) / 2,
    iterated from the global mean (Sec. 3.4 "an iterative thresholding method"). Hand-written:
    scikit-image (`threshold_isodata`) is not a project dependency and scipy has none. A flat map
    returns its value (nothing above it)."""
    x = values.detach().flatten().double()
    t = x.mean().item()
    for _ in range(max_iter):
        low, high = x[x <= t], x[x > t]
        if len(low) == 0 or len(high) == 0:
            return t
        new = 0.5 * (low.mean().item() + high.mean().item())
        if abs(new - t) < tol:
            return new
        t = new
    return t


def binarize_masks(mask: torch.Tensor, min_range: float = 1.0) -> torch.Tensor:
    """Averaged M_pre (B, H, W) in [0, 255] -> binary (B, 1, H, W): each map above its isodata
    threshold. A map whose values span less than `min_range` grey levels has no two classes to
    split: it is all background (an empty mask), not half noise."""
    out = torch.zeros_like(mask, dtype=torch.float32)
    for i, m in enumerate(mask):
        if (m.max() - m.min()).item() >= min_range:
            out[i] = (m > isodata_threshold(m)).float()
    return out[:, None]
