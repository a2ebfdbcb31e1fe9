"""The `tiny-demo-dit` smoke transformer (generators/defectdiffu/tiny_dit.py): the linear skip at hand
values, pre-training images from an unused seed, a pre-training that lowers the eps-MSE, a cached
folder keyed by the recipe."""

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

SMALL = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=None, sample_size=4,
             patch_size=2, cross_attention_dim=32, blocks=(1, 1, 1))


def test_linear_skip_tdia_adds_the_linear_mmse_eps():
    from generators.defectdiffu.tiny_dit import LinearSkipTdia
    from generators.defectdiffu.torch_model import TdiaTransformer

    torch.manual_seed(0)
    tdia = LinearSkipTdia(**SMALL)
    for p in tdia.parameters():  # DiT zero-initialises nothing here, but make the network's part non-trivial
        p.data.add_(0.01 * torch.randn_like(p))
    plain = TdiaTransformer.from_config(tdia.config)
    plain.load_state_dict(tdia.state_dict())
    x, context = torch.randn(2, 4, 4, 4), torch.randn(2, 3, 77, 32)
    with torch.no_grad():
        got = tdia(x, context, torch.tensor([0, 999])).sample
        base = plain(x, context, torch.tensor([0, 999])).sample
        scalar = tdia(x, context, 0, return_dict=False)[0]
    assert not torch.allclose(base, torch.zeros_like(base))
    # hand values of the LDM schedule: abar at index 0 = 1 - 0.00085, skip sqrt(0.00085) = 0.029155;
    # abar at index 999 = 4.66e-3 (docs/seas.md), skip sqrt(0.99534) = 0.997667
    torch.testing.assert_close(got[0] - base[0], 0.029155 * x[0], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(got[1] - base[1], 0.997667 * x[1], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(scalar[0], got[0])  # a scalar timestep applies to the whole batch


def test_defect_pretraining_images_come_from_an_unused_seed():
    from benchmark.data.demo import CATEGORIES, render_demo_image
    from generators.defectdiffu.tiny_dit import PRETRAIN, pretraining_defect_images

    pixels, masks, categories, defects = pretraining_defect_images(1, PRETRAIN["seed"], 32)
    expected = [(c, d) for c in sorted(CATEGORIES) for d in CATEGORIES[c]]
    assert list(zip(categories, defects)) == expected and pixels.shape == (len(expected), 3, 32, 32)
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert masks.shape == (len(expected), 1, 32, 32) and set(masks.unique().tolist()) == {0.0, 1.0}
    for k, (category, defect) in enumerate(expected):  # not the benchmark's (seed 0) image of that index
        rendered = render_demo_image(category, defect, PRETRAIN["seed"], 0, 32, "test")
        assert torch.equal(masks[k, 0], torch.from_numpy(rendered.mask > 0).float())  # the image's own mask
        bench = render_demo_image(category, defect, 0, 0, 32, "test").image
        ours = np.round((pixels[k].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
        assert not np.array_equal(bench, ours)


def test_pretraining_lowers_the_eps_loss():
    from generators.defectdiffu.tiny_dit import LinearSkipTdia, pretrain_tdia, pretraining_mask_module
    from generators.diffusion.backbone import load_backbone

    tiny = load_backbone("tiny")
    torch.manual_seed(0)
    tdia = LinearSkipTdia(**SMALL)
    mask_module = pretraining_mask_module(tdia, 77)
    before = {k: v.clone() for k, v in mask_module.state_dict().items()}
    latents = torch.randn(4, 4, 4, 4) * 0.3 + torch.linspace(-1, 1, 4).view(1, 4, 1, 1)  # a non-Gaussian set
    masks = torch.zeros(4, 1, 32, 32)
    masks[1, :, 8:16, 8:24] = masks[3, :, 20:28, 4:12] = 1
    losses = pretrain_tdia(tdia, mask_module, tiny.tokenizer, tiny.text_encoder, latents, masks, ["wood", "pill"] * 2,
                           ["good", "hole", "good", "stain"], steps=30, batch_size=4, lr=1e-2, ema=0.9, seed=1000,
                           p1=0.2, p2=0.2, lambda_mask=1.0)
    # measured: the first five steps average 0.775, the last five 0.302 (seeded, one thread)
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])
    assert not torch.equal(before["out.weight"], mask_module.state_dict()["out.weight"])  # the mask module trained


def test_built_once_into_a_folder_named_by_the_recipe(monkeypatch):
    from generators.defectdiffu import tiny_dit

    monkeypatch.setattr(tiny_dit, "PRETRAIN", {**tiny_dit.PRETRAIN, "steps": 2, "normals_per_category": 2,
                                               "defects_per_type": 1, "size": 32})
    folder = tiny_dit.tiny_demo_dit_folder()
    assert folder.name.startswith("tiny-demo-dit-")
    assert json.loads((folder / "recipe.json").read_text())["steps"] == 2
    vae, tdia, mask_state = tiny_dit.load_tiny_demo_dit()
    assert isinstance(tdia, tiny_dit.LinearSkipTdia) and tdia.config.in_channels == vae.config.latent_channels == 32
    assert mask_state["out.weight"].shape[:2] == (1, tiny_dit.MASK_HIDDEN)  # one channel per latent cell
    assert tuple(tdia.config.blocks) == tiny_dit.TDIA["blocks"] and tdia.config.patch_size == 2
    mtime = (folder / "recipe.json").stat().st_mtime_ns
    assert tiny_dit.tiny_demo_dit_folder() == folder  # cached: not rebuilt
    assert (folder / "recipe.json").stat().st_mtime_ns == mtime
    monkeypatch.setattr(tiny_dit, "PRETRAIN", {**tiny_dit.PRETRAIN, "steps": 3})
    assert tiny_dit.tiny_demo_dit_folder() != folder  # another recipe, another folder
