"""The `tiny-demo` backbone (generators/diffusion/tiny_demo.py): pre-training data disjoint from the
benchmark's demo images, a pre-training that lowers the eps-MSE, a cached folder keyed by the recipe."""

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_pretraining_images_are_normal_demo_images_of_an_unused_seed():
    from benchmark.data.demo import CATEGORIES, render_demo_image
    from generators.diffusion.tiny_demo import PRETRAIN, pretraining_images

    pixels, categories = pretraining_images(2, PRETRAIN["seed"], 32)
    assert pixels.shape == (2 * len(CATEGORIES), 3, 32, 32) and categories == sorted(
        [c for c in CATEGORIES for _ in range(2)])
    assert pixels.min() >= -1 and pixels.max() <= 1
    # not one of the benchmark's (seed 0) normal training images of the same category and index
    for k, category in enumerate(categories):
        bench = render_demo_image(category, "good", 0, k % 2, 32, "train").image
        ours = np.round((pixels[k].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
        assert not np.array_equal(bench, ours)


def test_pretraining_lowers_the_eps_loss():
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from generators.diffusion.backbone import load_backbone
    from generators.diffusion.tiny import UNET
    from generators.diffusion.tiny_demo import pretrain_unet

    tiny = load_backbone("tiny")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**UNET, "sample_size": 4})
    scheduler = DDPMScheduler(**tiny.scheduler_config)
    losses = pretrain_unet(unet, tiny.vae, tiny.tokenizer, tiny.text_encoder, scheduler, steps=20, batch_size=4,
                           lr=1e-2, images_per_category=1, seed=1000, size=32, prompt="a {category}",
                           drop_prompt=0.1)
    # measured: the first five steps average 1.10, the last five 1.01 (seeded, one thread)
    assert len(losses) == 20 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05


def test_built_once_into_a_folder_named_by_the_recipe(monkeypatch):
    from generators.diffusion import tiny_demo
    from generators.diffusion.backbone import load_backbone

    monkeypatch.setattr(tiny_demo, "PRETRAIN", {**tiny_demo.PRETRAIN, "steps": 2, "images_per_category": 1,
                                                "size": 32})
    folder = tiny_demo.tiny_demo_backbone_folder()
    assert folder.name.startswith("tiny-demo-")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_sias_bench_tiny_demo"]["steps"] == 2
    backbone = load_backbone("tiny-demo")
    assert backbone.folder == folder
    assert tuple(backbone.unet.config.block_out_channels) == tiny_demo.UNET_CHANNELS
    assert backbone.latent_channels == 192  # the tiny backbone's pixel-unshuffle autoencoder, unchanged
    mtime = (folder / "model_index.json").stat().st_mtime_ns
    assert tiny_demo.tiny_demo_backbone_folder() == folder  # cached: not rebuilt
    assert (folder / "model_index.json").stat().st_mtime_ns == mtime
    monkeypatch.setattr(tiny_demo, "PRETRAIN", {**tiny_demo.PRETRAIN, "steps": 3})
    assert tiny_demo.tiny_demo_backbone_folder() != folder  # another recipe, another folder
