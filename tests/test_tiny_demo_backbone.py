"""The `tiny-demo` backbone (generators/diffusion/tiny_demo.py): the PCA patch autoencoder against
numpy's eigendecomposition, pre-training data disjoint from the benchmark's demo images, a
pre-training that lowers the eps-MSE, a cached folder keyed by the recipe."""

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


def test_ema_pretraining_ends_on_the_moving_average_of_the_weights(monkeypatch):
    """Two steps with decay d end on d w_1 + (1 - d) w_2 (the average starts from the first step's
    weights), w_k the weights after k plain steps of the same seeded run."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from generators.diffusion import tiny_demo
    from generators.diffusion.backbone import load_backbone
    from generators.diffusion.tiny import UNET
    from generators.diffusion.tiny_demo import pretrain_unet

    tiny = load_backbone("tiny")
    scheduler = DDPMScheduler(**tiny.scheduler_config)
    recipe = dict(batch_size=2, lr=1e-2, images_per_category=1, seed=1000, size=32, prompt="a {category}",
                  drop_prompt=0.1)

    def weights_after(steps: int, ema_decay: float = 0.0) -> torch.Tensor:
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**{**UNET, "sample_size": 4})
        pretrain_unet(unet, tiny.vae, tiny.tokenizer, tiny.text_encoder, scheduler, steps=steps,
                      ema_decay=ema_decay, **recipe)
        return torch.cat([p.detach().flatten() for p in unet.parameters()])

    w1, w2 = weights_after(1), weights_after(2)
    assert not torch.allclose(w1, w2)
    torch.testing.assert_close(weights_after(2, ema_decay=0.9), 0.9 * w1 + 0.1 * w2)
    assert "ema_decay" not in tiny_demo.recipe()  # off: the recipe (and folder) of before
    monkeypatch.setattr(tiny_demo, "PRETRAIN", {**tiny_demo.PRETRAIN, "ema_decay": 0.9})
    assert tiny_demo.recipe()["ema_decay"] == 0.9


def test_built_once_into_a_folder_named_by_the_recipe(monkeypatch):
    from generators.diffusion import tiny_demo
    from generators.diffusion.backbone import backbone_geometry, load_backbone

    monkeypatch.setattr(tiny_demo, "PRETRAIN", {**tiny_demo.PRETRAIN, "steps": 2, "images_per_category": 1,
                                                "size": 32})
    folder = tiny_demo.tiny_demo_backbone_folder()
    assert folder.name.startswith("tiny-demo-")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_sias_bench_tiny_demo"]["steps"] == 2
    backbone = load_backbone("tiny-demo")
    assert backbone.folder == folder
    assert tuple(backbone.unet.config.block_out_channels) == tiny_demo.UNET_CHANNELS
    assert backbone.latent_channels == tiny_demo.LATENT_CHANNELS == 32  # the PCA latent
    mtime = (folder / "model_index.json").stat().st_mtime_ns
    assert tiny_demo.tiny_demo_backbone_folder() == folder  # cached: not rebuilt
    assert (folder / "model_index.json").stat().st_mtime_ns == mtime
    monkeypatch.setattr(tiny_demo, "PRETRAIN", {**tiny_demo.PRETRAIN, "steps": 3})
    assert tiny_demo.tiny_demo_backbone_folder() != folder  # another recipe, another folder


def test_issue_11_variants_build_their_own_folders(monkeypatch):
    """PATCH and PREDICTION (measured for issue 11, docs/seas.md) change the recipe only when they
    differ from 8 and "epsilon"; a v-prediction build has a plain U-Net, an x0 one the x0 skip, and
    each says so in its scheduler."""
    from diffusers import UNet2DConditionModel

    from generators.diffusion import tiny_demo
    from generators.diffusion.backbone import backbone_geometry, load_backbone

    monkeypatch.setattr(tiny_demo, "PRETRAIN", {**tiny_demo.PRETRAIN, "steps": 2, "images_per_category": 1,
                                                "size": 32})
    assert "patch" not in tiny_demo.recipe() and "prediction" not in tiny_demo.recipe()
    default = tiny_demo.tiny_demo_backbone_folder()
    monkeypatch.setattr(tiny_demo, "PATCH", 4)
    patch4 = tiny_demo.tiny_demo_backbone_folder()
    backbone = load_backbone("tiny-demo")
    assert patch4 != default and backbone.vae_scale_factor == 4 and backbone.unet.config.sample_size == 8
    assert backbone_geometry("tiny-demo") == (backbone.vae_scale_factor, backbone.size_multiple) == (4, 8)
    monkeypatch.setattr(tiny_demo, "PATCH", 8)
    monkeypatch.setattr(tiny_demo, "PREDICTION", "v_prediction")
    folder = tiny_demo.tiny_demo_backbone_folder()
    backbone = load_backbone("tiny-demo")
    assert folder not in (default, patch4) and backbone.folder == folder
    assert backbone.scheduler_config["prediction_type"] == "v_prediction"
    assert type(backbone.unet) is UNet2DConditionModel  # no linear skip: E[v | x_t] = 0 for whitened data
    monkeypatch.setattr(tiny_demo, "PREDICTION", "sample")
    x0_folder = tiny_demo.tiny_demo_backbone_folder()
    backbone = load_backbone("tiny-demo")
    assert x0_folder not in (default, patch4, folder) and backbone.folder == x0_folder
    assert backbone.scheduler_config["prediction_type"] == "sample"
    assert type(backbone.unet) is tiny_demo.LinearSkipX0UNet  # what was trained is what loads


def test_pca_autoencoder_matches_an_eigendecomposition_and_whitens(tmp_path):
    from generators.diffusion.tiny_demo import PatchPCAAutoencoder

    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1  # factor 4: 2 x 2 blocks of 48 values per image
    ae = PatchPCAAutoencoder(factor=4, latent_channels=5).fit(pixels)
    # independent route: the blocks by explicit loops, their covariance, numpy's eigh
    blocks = np.array([[pixels[b, c, 4 * i + y, 4 * j + x].item() for c in range(3) for y in range(4) for x in range(4)]
                       for b in range(6) for i in range(2) for j in range(2)])
    cov = np.cov(blocks, rowvar=False)  # (n - 1) normalised
    values, vectors = np.linalg.eigh(cov)
    top = vectors[:, ::-1][:, :5]
    # the same subspace (signs of eigenvectors are arbitrary): equal projection matrices
    np.testing.assert_allclose(ae.basis.numpy() @ ae.basis.numpy().T, top @ top.T, atol=1e-5)
    np.testing.assert_allclose(ae.scale.numpy() ** 2, values[::-1][:5], rtol=1e-4)
    np.testing.assert_allclose(ae.mean.numpy(), blocks.mean(0), atol=1e-6)
    z = ae.encode(pixels).latent_dist.mode()
    assert z.shape == (6, 5, 2, 2)
    np.testing.assert_allclose(z.permute(1, 0, 2, 3).reshape(5, -1).var(1, unbiased=True).numpy(), 1.0, rtol=1e-4)
    # decode(encode(x)) is the projection of each block on the subspace, plus the mean
    recon = ae.decode(z).sample
    expected = (blocks - blocks.mean(0)) @ top @ top.T + blocks.mean(0)
    got = np.array([[recon[b, c, 4 * i + y, 4 * j + x].item() for c in range(3) for y in range(4) for x in range(4)]
                    for b in range(6) for i in range(2) for j in range(2)])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    ae.save_pretrained(tmp_path)
    again = PatchPCAAutoencoder.from_pretrained(tmp_path)
    assert torch.equal(again.decode(z).sample, recon)


# hand values of the LDM schedule: abar at index 0 = 1 - beta_1 = 1 - 0.00085, at index 999 4.66e-3
# (docs/seas.md); the eps skip sqrt(1 - abar) is 0.029155 and 0.997667, the x0 skip sqrt(abar) 0.999575
# and 0.068265
@pytest.mark.parametrize("unet_class, at_0, at_999", [("LinearSkipUNet", 0.029155, 0.997667),
                                                      ("LinearSkipX0UNet", 0.999575, 0.068265)])
def test_linear_skip_unets_add_the_linear_mmse_estimate_of_their_target(unet_class, at_0, at_999):
    from diffusers import UNet2DConditionModel

    from generators.diffusion import tiny_demo
    from generators.diffusion.tiny import UNET

    torch.manual_seed(0)
    unet = getattr(tiny_demo, unet_class)(**{**UNET, "in_channels": 4, "out_channels": 4, "sample_size": 4})
    plain = UNet2DConditionModel.from_config(unet.config)
    plain.load_state_dict(unet.state_dict())
    x, context = torch.randn(2, 4, 4, 4), torch.randn(2, 77, 32)
    with torch.no_grad():
        got = unet(x, torch.tensor([0, 999]), encoder_hidden_states=context).sample
        base = plain(x, torch.tensor([0, 999]), encoder_hidden_states=context).sample
        scalar = unet(x, 0, encoder_hidden_states=context, return_dict=False)[0]
    torch.testing.assert_close(got[0] - base[0], at_0 * x[0], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(got[1] - base[1], at_999 * x[1], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(scalar[0], got[0])  # a scalar timestep applies to the whole batch


def test_pretraining_set_adds_defect_images_of_the_unused_seed_with_generic_captions():
    from benchmark.data.demo import render_demo_image
    from generators.diffusion.tiny_demo import pretraining_set

    pixels, captions, masks = pretraining_set(1, 1000, 32, "a {category}", defects_per_type=1,
                                       defect_prompt="a {category} with a {defect}")
    # 4 normal images (sorted categories), then one per defect type, types in the demo data's order
    assert captions == ["a carpet_like", "a grid", "a pill", "a wood",
                        "a carpet_like with a hole", "a carpet_like with a scratch", "a carpet_like with a stain",
                        "a grid with a crack", "a grid with a hole", "a grid with a stain",
                        "a pill with a crack", "a pill with a scratch", "a pill with a stain",
                        "a wood with a hole", "a wood with a scratch", "a wood with a stain"]
    assert pixels.shape == (16, 3, 32, 32)
    for k, caption in enumerate(captions[4:], start=4):
        category, defect = caption[2:].split(" with a ")
        ours = np.round((pixels[k].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
        rendered = render_demo_image(category, defect, 1000, 0, 32, "test")
        assert np.array_equal(ours, rendered.image) and np.array_equal(masks[k, 0].numpy() > 0, rendered.mask > 0)
        # the benchmark's defect images (seed 0) are not in it
        assert not np.array_equal(ours, render_demo_image(category, defect, 0, 0, 32, "test").image)
    assert masks[:4].sum() == 0 and masks.shape == (16, 1, 32, 32)
    normal_only, normal_captions, _ = pretraining_set(1, 1000, 32, "a {category}")
    assert torch.equal(normal_only, pixels[:4]) and normal_captions == captions[:4]


def test_weighted_mse_by_hand():
    from generators.diffusion.tiny_demo import weighted_mse

    pred = torch.tensor([[[[1.0, 2.0]], [[0.0, 0.0]]]])  # (1, 2 channels, 1, 2 cells)
    target = torch.zeros_like(pred)
    # weights 1 and 3 on the two cells, both channels: (1*1 + 3*4 + 1*0 + 3*0) / (1 + 3 + 1 + 3) = 13 / 8
    assert weighted_mse(pred, target, torch.tensor([[[[1.0, 3.0]]]])).item() == pytest.approx(13 / 8)
    # all weights 1: the plain mean (1 + 4) / 4
    assert weighted_mse(pred, target, torch.ones(1, 1, 1, 2)).item() == pytest.approx(5 / 4)
