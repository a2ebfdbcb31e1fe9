"""The `tiny-demo` backbone: the tiny backbone with a wider U-Net pre-trained once to denoise demo images.

Why: a method that regenerates the whole image from (almost) pure noise, as SeaS does from
t = 1500, needs a denoiser that already knows what images look like; SeaS starts from Stable
Diffusion. The random `tiny` U-Net learns nothing useful in a smoke fit (its eps-loss stays near 1:
a 3x3 conv maps the 192 pixel-unshuffle channels to 32, so it cannot pass x_t through, which the
eps target needs at high noise). This backbone is `tiny` (same autoencoder, text encoder,
tokenizer, schedule) with a U-Net of `UNET` channels, trained for `PRETRAIN["steps"]` AdamW
steps on the eps-MSE (Ho et al. 2020 Eq. 14) of normal demo images rendered from a seed the demo
dataset does not use (`PRETRAIN["seed"]`), so no benchmark image is in its training set. Prompts
are "a <category>" (the product's name, as SD knows the word "wood"), dropped to "" with
probability 0.1 so classifier-free guidance has an unconditional model. It never sees a defect.

Built on first use and cached under `$SIAS_BENCH_CACHE/models/tiny-demo-<recipe hash>` (temp dir
+ rename, like `tiny`); the hash covers the recipe, the tiny backbone's and the demo data's
versions, so a changed recipe builds a new folder. The build's cost is measured in docs/seas.md.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import logging

import numpy as np
import torch

from generators.diffusion.hub import cache_root, quiet_hub_libraries
from generators.diffusion.tiny import TINY_VERSION, tiny_backbone_folder

log = logging.getLogger(__name__)

TINY_DEMO = "tiny-demo"
UNET_CHANNELS = (64, 128)  # measured: (32, 64) is at eps-MSE 0.88 after 1100 steps, this one at 0.75 after 600
PRETRAIN = dict(steps=600, batch_size=8, lr=1e-3, images_per_category=48, seed=1000, size=128,
                prompt="a {category}", drop_prompt=0.1)


def recipe() -> dict:
    from benchmark.data.demo import DEMO_VERSION

    return {"unet_channels": list(UNET_CHANNELS), **PRETRAIN, "tiny_version": TINY_VERSION,
            "demo_version": DEMO_VERSION}


def tiny_demo_backbone_folder() -> Path:
    key = hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_root() / "models" / f"{TINY_DEMO}-{key}"
    if not (folder / "model_index.json").exists():
        build_tiny_demo_backbone(folder)
    return folder


def pretraining_images(images_per_category: int, seed: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """Normal demo images of every category from `seed` (the benchmark's demo data uses 0), in
    [-1, 1], with each image's category."""
    from benchmark.data.demo import CATEGORIES, render_demo_image

    images, categories = [], []
    for category in sorted(CATEGORIES):
        for index in range(images_per_category):
            images.append(render_demo_image(category, "good", seed, index, size, "train").image)
            categories.append(category)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return pixels, categories


def pretrain_unet(unet, vae, tokenizer, text_encoder, scheduler, steps: int, batch_size: int, lr: float,
                  images_per_category: int, seed: int, size: int, prompt: str, drop_prompt: float, **_) -> list[float]:
    """Train `unet` in place on the eps-MSE of demo normal images; returns the per-step losses."""
    pixels, categories = pretraining_images(images_per_category, seed, size)
    names = sorted(set(categories))
    pixels = torch.cat([pixels, pixels.flip(-1)])  # horizontal flips, in pixel space
    label = torch.tensor([names.index(c) for c in categories] * 2)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
        ids = tokenizer([prompt.format(category=c) for c in names] + [""], padding="max_length",
                        max_length=text_encoder.config.max_position_embeddings, truncation=True,
                        return_tensors="pt").input_ids
        contexts = text_encoder(ids)[0]  # one per category, the last is the empty prompt
    rng = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr)
    T = scheduler.config.num_train_timesteps
    unet.train()
    losses = []
    for _ in range(steps):
        pick = torch.randint(len(latents), (batch_size,), generator=rng)
        x0 = latents[pick]
        t = torch.randint(T, (batch_size,), generator=rng)
        eps = torch.randn(x0.shape, generator=rng)
        context = torch.where((torch.rand(batch_size, generator=rng) < drop_prompt).view(-1, 1, 1),
                              contexts[-1], contexts[label[pick]])
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, eps, t), t,
                                                 encoder_hidden_states=context).sample, eps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if len(losses) % 100 == 0:
            log.info("tiny-demo pre-training: step %d/%d, eps-MSE of the last 100 steps %.4f", len(losses), steps,
                     float(np.mean(losses[-100:])))
    unet.eval()
    return losses


def build_tiny_demo_backbone(folder: Path) -> Path:
    """Copy `tiny`, replace its U-Net by a pre-trained wider one, write atomically."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from generators.diffusion.backbone import load_backbone
    from generators.diffusion.hub import TINY
    from generators.diffusion.tiny import TINY_SEED, UNET

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        base = load_backbone(TINY, freeze=True)  # its autoencoder, text encoder and tokenizer are kept
        shutil.copytree(tiny_backbone_folder(), tmp, dirs_exist_ok=True)
        shutil.rmtree(tmp / "unet")
        scheduler = DDPMScheduler.from_pretrained(tmp / "scheduler")
        with torch.random.fork_rng(devices=[]), quiet_hub_libraries():
            torch.manual_seed(TINY_SEED)
            unet = UNet2DConditionModel(**{**UNET, "block_out_channels": UNET_CHANNELS})
            losses = pretrain_unet(unet, base.vae, base.tokenizer, base.text_encoder, scheduler, **PRETRAIN)
            unet.save_pretrained(tmp / "unet")
        index = json.loads((tmp / "model_index.json").read_text())
        index["_sias_bench_tiny_demo"] = {**recipe(), "final_loss_last_100": float(np.mean(losses[-100:]))}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=1))
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: keep its copy
            if not (folder / "model_index.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
