"""The `tiny` backbone: random-init components small enough for CPU tests and the smoke profile.

UNet2DConditionModel (32/64 channels, one cross-attention level, context 32), a lossless
parameter-free autoencoder (`pixel_autoencoder`: 8x pixel-unshuffle, 192 latent channels; a random
AutoencoderKL reconstructs nothing, so no pair made with it keeps its normal image), a 2-layer
CLIPTextModel, and CLIP's tokenizer class over a 514-token byte-level vocabulary (`clip_tokenizer`;
no other package's files). Built once from a fixed seed, saved in
diffusers layout to `$SIAS_BENCH_CACHE/models/tiny-<version>` (temp dir + rename, so a reader never
sees half a folder) and loaded like any other backbone. Bump TINY_VERSION when the recipe changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from generators.diffusion.clip_tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, write_clip_tokenizer
from generators.diffusion.hub import LDM_SCHEDULE, atomic_folder, cache_root, quiet_hub_libraries

TINY_VERSION = 3  # 2: lossless pixel-unshuffle autoencoder; 3: byte-level CLIP tokenizer (514 tokens)
TINY_SEED = 0

VAE = dict(factor=8, in_channels=3, scaling_factor=1.0)
LATENT_CHANNELS = VAE["in_channels"] * VAE["factor"] ** 2
UNET = dict(
    sample_size=16, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)
TEXT = dict(
    vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=77, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
)


def tiny_backbone_folder() -> Path:
    folder = cache_root() / "models" / f"tiny-{TINY_VERSION}"
    if not (folder / "model_index.json").exists():
        build_tiny_backbone(folder)
    return folder


def build_tiny_backbone(folder: Path) -> Path:
    """Write the tiny backbone to `folder` atomically; a concurrent builder's result is kept."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from generators.diffusion.pixel_autoencoder import PixelShuffleAutoencoder

    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        with torch.random.fork_rng(devices=[]), quiet_hub_libraries():
            torch.manual_seed(TINY_SEED)
            UNet2DConditionModel(**UNET).save_pretrained(tmp / "unet")
            PixelShuffleAutoencoder(**VAE).save_pretrained(tmp / "vae")
            CLIPTextModel(CLIPTextConfig(**TEXT)).save_pretrained(tmp / "text_encoder")
        write_clip_tokenizer(tmp / "tokenizer")
        DDPMScheduler(**LDM_SCHEDULE, clip_sample=False, steps_offset=1).save_pretrained(tmp / "scheduler")
        index = {
            "_class_name": "StableDiffusionPipeline",
            "_sias_bench_tiny_version": TINY_VERSION,
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["generators.diffusion.pixel_autoencoder", "PixelShuffleAutoencoder"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "DDPMScheduler"],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder
