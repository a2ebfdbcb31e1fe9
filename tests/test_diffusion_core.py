"""The latent-diffusion core on tiny random models: loader, schedules, tokens, attention hook, latents."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from benchmark.errors import BenchError  # noqa: E402
from generators.diffusion.attention import CrossAttentionHook  # noqa: E402
from generators.diffusion.backbone import LDM_SCHEDULE, backbone_geometry, load_backbone  # noqa: E402
from generators.diffusion.latents import (decode_latents, decode_masks, encode_images, encode_masks,  # noqa: E402
                                          images_to_tensor, mask_to_latent, tensor_to_images)
from generators.diffusion.noise import PerSampleNoise  # noqa: E402
from generators.diffusion.schedulers import alphas_cumprod, make_scheduler  # noqa: E402
from generators.diffusion.tiny import TINY_VERSION, tiny_backbone_folder  # noqa: E402
from generators.diffusion.tokens import LearnedTokens  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def tiny_folder():
    return tiny_backbone_folder()  # built once per session (conftest gives a private cache)


@pytest.fixture
def backbone(tiny_folder):
    torch.manual_seed(0)
    return load_backbone("tiny")  # a fresh copy: tokens modify the tokenizer and text encoder


# -- loader ----------------------------------------------------------------------------------------
def test_tiny_backbone_is_cached_and_loads_through_the_loader(tiny_folder, backbone):
    assert tiny_folder.name == f"tiny-{TINY_VERSION}"
    assert tiny_folder.parent.parent == __import__("generators.diffusion.hub", fromlist=["x"]).cache_root()
    stamp = (tiny_folder / "model_index.json").stat().st_mtime_ns
    assert tiny_backbone_folder() == tiny_folder
    assert (tiny_folder / "model_index.json").stat().st_mtime_ns == stamp  # not rebuilt
    assert not [p for p in tiny_folder.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    same = load_backbone(str(tiny_folder))  # a local folder goes through the same path
    assert type(same.unet) is type(backbone.unet)
    assert backbone.resolution == 128 and backbone.vae_scale_factor == 8 and backbone.latent_channels == 192
    # what a run checks before loading anything: 8 px per cell, one U-Net halving
    assert backbone_geometry("tiny") == (backbone.vae_scale_factor, backbone.size_multiple) == (8, 16)
    assert len(backbone.tokenizer) == 514 and backbone.max_length == 77  # the byte-level CLIP vocabulary
    assert not any(p.requires_grad for m in backbone.modules().values() for p in m.parameters())
    # the same random init every build
    ref = {k: v.clone() for k, v in backbone.unet.state_dict().items()}
    assert all(torch.equal(ref[k], v) for k, v in same.unet.state_dict().items())


def test_missing_weights_raise_one_clear_message(tmp_path):
    with pytest.raises(BenchError) as err:
        load_backbone("CompVis/ldm-text2im-large-256")
    msg = str(err.value)
    assert "huggingface-cli download CompVis/ldm-text2im-large-256" in msg and "backbone=<folder>" in msg
    with pytest.raises(BenchError, match="no folder"):
        load_backbone(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="model_index.json"):
        load_backbone(str(tmp_path / "empty"))


def test_ldm_layout_with_bert_and_vqvae_loads(tmp_path, tiny_folder):
    """The LDM-256 folder layout (vqvae/, bert/ = LDMBertModel, BERT tokenizer) loads, and learned
    tokens work with its tokenizer."""
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel

    from diffusers import AutoencoderKL, UNet2DConditionModel

    from generators.diffusion.tiny import UNET

    root = tmp_path / "ldm"
    torch.manual_seed(0)
    UNet2DConditionModel(**{**UNET, "in_channels": 4, "out_channels": 4}).save_pretrained(root / "unet")
    AutoencoderKL(latent_channels=4, layers_per_block=1, block_out_channels=(8, 8), norm_num_groups=8,
                  down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained(root / "vqvae")
    shutil.copytree(tiny_folder / "scheduler", root / "scheduler")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "anomaly", "bottle", "broken", "large"]
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.txt").write_text("\n".join(words) + "\n")
    (root / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}))
    torch.manual_seed(0)
    LDMBertModel(LDMBertConfig(vocab_size=len(words), d_model=32, encoder_layers=1, encoder_ffn_dim=64,
                               encoder_attention_heads=2, head_dim=16)).save_pretrained(root / "bert")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "LDMTextToImagePipeline", "bert": ["latent_diffusion", "LDMBertModel"],
        "tokenizer": ["transformers", "BertTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vqvae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDIMScheduler"]}))
    b = load_backbone(str(root))
    assert type(b.text_encoder).__name__ == "LDMBertModel" and b.scheduler_config["beta_schedule"] == "scaled_linear"
    assert b.vae_scale_factor == 2 and b.latent_channels == 4  # AutoencoderKL: one halving per extra block
    assert backbone_geometry(str(root)) == (b.vae_scale_factor, b.size_multiple) == (2, 4)  # from config.json
    assert b.max_length == 77  # capped by LDM-BERT's positions, whatever the tokenizer claims
    tokens = LearnedTokens(b.tokenizer, b.text_encoder, 2)
    tokens.add("bottle/broken_large")
    states = tokens.encode([tokens.prompt("bottle/broken_large", "bottle broken large")], b.max_length)
    assert states.shape == (1, 77, 32)
    states.sum().backward()
    assert tokens.vectors[0].grad.abs().sum() > 0
    unet_out = b.unet(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=states.detach()).sample
    assert unet_out.shape == (1, 4, 8, 8)


# -- schedules and samplers ------------------------------------------------------------------------
def test_ldm_linear_schedule_is_diffusers_scaled_linear(backbone):
    s = make_scheduler("ddpm", backbone.scheduler_config)
    betas = s.betas.double()
    assert s.config.num_train_timesteps == 1000 and s.config.prediction_type == "epsilon" and not s.config.clip_sample
    assert betas[0].item() == pytest.approx(0.00085) and betas[-1].item() == pytest.approx(0.012)
    sqrt = betas.sqrt()
    assert torch.allclose(sqrt[1:] - sqrt[:-1], (sqrt[-1] - sqrt[0]) / 999, atol=1e-7)  # linear in sqrt(beta)
    assert torch.allclose(alphas_cumprod(s), torch.cumprod(1 - betas, 0))
    for kind in ("ddim", "dpm"):
        other = make_scheduler(kind, backbone.scheduler_config)
        assert torch.allclose(other.alphas_cumprod, s.alphas_cumprod)
    assert torch.allclose(make_scheduler("ddpm", None).betas, s.betas)  # LDM_SCHEDULE fallback
    assert LDM_SCHEDULE["beta_schedule"] == "scaled_linear"
    with pytest.raises(ValueError, match="unknown sampler"):
        make_scheduler("euler", backbone.scheduler_config)


def test_training_target_and_its_eps_reading_per_prediction_type():
    """The U-Net's target for eps-, v- and x0-prediction, and `as_epsilon` reading each back as the
    eps, against a hand computation on the LDM schedule; DPM-Solver++ (the SeaS sampler) steps the
    same from the true eps with an eps scheduler as from the true x0 with an x0 ("sample") one."""
    from generators.diffusion.ddpm import as_epsilon
    from generators.diffusion.schedulers import training_target

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    t = torch.tensor([10, 500])
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2  # by hand, "scaled_linear"
    abar = torch.cumprod(1 - betas, 0)[t].float().view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    hand = {"epsilon": eps, "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * x0, "sample": x0}
    for kind, target in hand.items():
        scheduler = make_scheduler("ddpm", {**LDM_SCHEDULE, "prediction_type": kind})
        torch.testing.assert_close(scheduler.add_noise(x0, eps, t), x_t)
        torch.testing.assert_close(training_target(scheduler, x0, eps, t), target)
        torch.testing.assert_close(as_epsilon(kind, target, x_t, abar), eps, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="prediction_type"):
        as_epsilon("flow", x0, x_t, abar)

    steps = {}
    for kind, output in (("epsilon", eps), ("sample", x0)):
        scheduler = make_scheduler("dpm", {**LDM_SCHEDULE, "prediction_type": kind})
        scheduler.set_timesteps(5)
        first = int(scheduler.timesteps[0])
        a = float(torch.cumprod(1 - betas, 0)[first])
        state = a**0.5 * x0 + (1 - a) ** 0.5 * eps
        steps[kind] = scheduler.step(output, scheduler.timesteps[0], state).prev_sample
    torch.testing.assert_close(steps["sample"], steps["epsilon"], atol=1e-5, rtol=1e-4)


def test_ddim_and_dpm_sample_with_the_tiny_unet(backbone):
    for kind in ("ddim", "dpm"):
        s = make_scheduler(kind, backbone.scheduler_config)
        s.set_timesteps(4)
        x = torch.randn(1, backbone.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
        ctx = torch.zeros(1, 77, 32)
        with torch.no_grad():
            for t in s.timesteps:
                x = s.step(backbone.unet(x, t, encoder_hidden_states=ctx).sample, t, x).prev_sample
        assert torch.isfinite(x).all()


# -- learned tokens --------------------------------------------------------------------------------
def test_learned_tokens_train_only_their_vectors(backbone):
    keys = list(backbone.text_encoder.state_dict())
    tokens = LearnedTokens(backbone.tokenizer, backbone.text_encoder, per_concept=3)
    plain = tokens.encode(["wood hole"], 77)
    tokens.add("wood/hole")
    tokens.add("grid/crack")
    tokens.add("wood/hole")  # idempotent
    assert tokens.concepts == ["wood/hole", "grid/crack"] and len(backbone.tokenizer) == 514 + 6
    assert [n for n, _ in tokens.named_parameters()] == ["vectors.0", "vectors.1"]
    ids = tokens.input_ids([tokens.prompt("grid/crack", "grid crack")], 77)[0]  # BOS, 9 characters, 3 placeholders
    assert ids[10:13].tolist() == backbone.tokenizer.convert_tokens_to_ids(tokens.placeholders("grid/crack"))
    assert torch.equal(tokens.encode(["wood hole"], 77), plain)  # ordinary prompts are untouched
    init = backbone.text_encoder.get_input_embeddings().weight[backbone.tokenizer("anomaly", add_special_tokens=False).input_ids].mean(0)
    assert torch.allclose(tokens.vectors[0][0], init)
    tokens.encode([tokens.prompt("grid/crack", "grid crack")], 77).square().sum().backward()
    assert tokens.vectors[1].grad.abs().sum() > 0 and tokens.vectors[0].grad.abs().sum() == 0
    assert all(p.grad is None for p in backbone.text_encoder.parameters())
    assert list(backbone.text_encoder.state_dict()) == keys  # the frozen table keeps its name


def test_a_concept_absent_from_the_batch_is_left_alone_by_adamw(backbone):
    tokens = LearnedTokens(backbone.tokenizer, backbone.text_encoder, per_concept=2)
    tokens.add("a/x")
    tokens.add("b/y")
    optimizer = torch.optim.AdamW(tokens.parameters(), lr=5e-3)  # the base's optimizer (weight decay 0.01)

    def step(concept):
        optimizer.zero_grad()
        tokens.encode([tokens.prompt(concept, "t")], 77).square().sum().backward()
        tokens.drop_absent_gradients()
        optimizer.step()

    step("a/x")
    step("b/y")  # b gets Adam moments and one update
    b_after_its_step, a_before = tokens.vectors[1].detach().clone(), tokens.vectors[0].detach().clone()
    for _ in range(4):
        step("a/x")
    assert torch.equal(tokens.vectors[1], b_after_its_step)  # no decay, no stale-momentum drift
    assert not torch.equal(tokens.vectors[0], a_before)  # the concept in the batch still trains
    assert tokens.vectors[1].grad is None and tokens.vectors[0].grad is not None


def test_the_generator_base_drops_absent_concepts_before_each_optimizer_step(backbone, monkeypatch):
    from generators.diffusion.generator import LatentDiffusionGenerator

    calls = []
    tokens = LearnedTokens(backbone.tokenizer, backbone.text_encoder, per_concept=1)
    monkeypatch.setattr(tokens, "drop_absent_gradients", lambda: calls.append(1))
    holder = type("Holder", (), {"tokens": tokens})()
    LatentDiffusionGenerator.on_before_optimizer_step(holder, None)
    assert calls == [1]


def test_learned_tokens_save_and_load(backbone, tiny_folder):
    tokens = LearnedTokens(backbone.tokenizer, backbone.text_encoder, per_concept=2)
    for c in ("a/x", "b/y"):
        tokens.add(c)
    with torch.no_grad():
        tokens.vectors[1].add_(1.0)
    prompt = tokens.prompt("b/y", "b y")
    ref = tokens.encode([prompt], 77)
    state = tokens.trained_state()
    fresh = load_backbone(str(tiny_folder))
    other = LearnedTokens(fresh.tokenizer, fresh.text_encoder, per_concept=2)
    other.add("b/y")  # a different registration order must not matter
    other.load_trained_state(state)
    assert other.concepts == ["b/y", "a/x"]
    assert torch.allclose(other.encode([other.prompt("b/y", "b y")], 77), ref, atol=1e-6)
    with pytest.raises(BenchError, match="tokens per concept"):
        LearnedTokens(fresh.tokenizer, load_backbone("tiny").text_encoder, per_concept=3).load_trained_state(state)


# -- cross-attention hook --------------------------------------------------------------------------
def _unet_inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 192, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)  # tiny: 192 latent channels


def test_attention_hook_records_without_changing_the_output(backbone):
    x, ctx = _unet_inputs()
    unet = backbone.unet
    original = {k: type(v) for k, v in unet.attn_processors.items()}
    with torch.no_grad():
        ref = unet(x, 500, encoder_hidden_states=ctx).sample
        with CrossAttentionHook().attach(unet) as hook:
            out = unet(x, 500, encoder_hidden_states=ctx).sample
            assert torch.allclose(out, ref, atol=1e-5)
            assert len(hook.records) == 4 and all(r.layer.endswith("attn2") for r in hook.records)
            maps = hook.records[0].maps()
            assert maps.shape == (2, 77, 4, 4)
            assert torch.allclose(maps.sum(1), torch.ones(2, 4, 4), atol=1e-5)  # softmax over tokens
            assert hook.maps_at((8, 8)).shape == (2, 4, 77, 8, 8)
            assert hook.token_map([1, 2], (8, 8)).shape == (2, 8, 8)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == original  # restored


def test_attention_hook_reweights_and_restricts_tokens(backbone):
    x, ctx = _unet_inputs()
    unet = backbone.unet
    inside = torch.zeros(2, 1, 8, 8)
    inside[..., :4, :] = 1
    with torch.no_grad(), CrossAttentionHook().attach(unet) as hook:
        ref = unet(x, 500, encoder_hidden_states=ctx).sample
        hook.clear()
        hook.reweight(torch.ones(2, 1, 8, 8), tokens=[1, 2])
        assert torch.allclose(unet(x, 500, encoder_hidden_states=ctx).sample, ref, atol=1e-5)
        hook.clear()
        hook.reweight(torch.zeros(2, 1, 8, 8), tokens=[3])
        unet(x, 500, encoder_hidden_states=ctx)
        assert all(r.maps()[:, 3].abs().max() == 0 and r.maps()[:, 4].abs().max() > 0 for r in hook.records)
        hook.reweight(None)
        hook.clear()
        hook.restrict(inside, inside=[1, 2], outside=[3])
        unet(x, 500, encoder_hidden_states=ctx)
        for r in hook.records:
            m = torch.nn.functional.interpolate(inside, size=r.size)
            maps = r.maps()
            assert (maps[:, 1:3] * (1 - m)).abs().max() == 0 and (maps[:, 3:4] * m).abs().max() == 0
            assert maps[:, 1:3].max() > 0 and torch.allclose(maps.sum(1), torch.ones_like(maps[:, 0]), atol=1e-5)


def test_attention_hook_keeps_gradients_when_asked(backbone):
    x, ctx = _unet_inputs()
    ctx.requires_grad_(True)
    with CrossAttentionHook(detach=False, layers=["down_blocks"]).attach(backbone.unet) as hook:
        backbone.unet(x, 500, encoder_hidden_states=ctx)
        assert len(hook.records) == 1
        hook.token_map([5], (8, 8)).sum().backward()
    assert ctx.grad.abs().sum() > 0


# -- latents and noise -----------------------------------------------------------------------------
def test_vae_round_trip_shapes_and_mask_to_latent(backbone):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    x = images_to_tensor(images)
    assert x.shape == (2, 3, 64, 64) and x.min() >= -1 and x.max() <= 1
    assert all(np.array_equal(a, b) for a, b in zip(tensor_to_images(x), images))
    with torch.no_grad():
        z = encode_images(backbone.vae, x)
        assert z.shape == (2, 192, 8, 8)
        assert torch.equal(z, encode_images(backbone.vae, x))  # the posterior mode: deterministic
        assert torch.equal(z, encode_images(backbone.vae, x, torch.Generator().manual_seed(1), sample=True))
        # the tiny autoencoder is lossless: every pixel comes back bit for bit
        assert all(np.array_equal(a, b) for a, b in zip(tensor_to_images(decode_latents(backbone.vae, z)), images))
        assert torch.equal(z[0, :, 2, 5].view(3, 8, 8), x[0, :, 16:24, 40:48])  # latent cell = its 8x8 block
        zm = encode_masks(backbone.vae, torch.ones(2, 1, 64, 64))
        assert torch.equal(zm, encode_images(backbone.vae, torch.ones(2, 3, 64, 64)))  # mask 1 = white image
        decoded = decode_masks(backbone.vae, zm)
        assert decoded.shape == (2, 1, 64, 64) and set(decoded.unique().tolist()) <= {0.0, 1.0}
    mask = torch.zeros(1, 1, 64, 64)
    mask[0, 0, 17, 41] = 1  # one defect pixel
    small = mask_to_latent(mask, (8, 8))
    assert small.sum() == 1 and small[0, 0, 2, 5] == 1


def test_per_sample_noise_ignores_batch_composition():
    alone = PerSampleNoise([7]).randn(4, 2, 2)
    batch = PerSampleNoise([3, 7]).randn(4, 2, 2)
    assert torch.equal(alone[0], batch[1]) and not torch.equal(batch[0], batch[1])
