"""SeaS' Lightning glue on the tiny backbone and the demo data at 64 px: the two training stages
(SSF moves the U-Net and the tokens, RMP only the mask branch), mixed batches, UA prompts,
generation (deterministic per seed, predicted masks), trained-part checkpoints, presets.
The math itself (DA, NA, Eq. 10, the schedule, the MRMs) is tested in tests/test_seas.py."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from benchmark.config import resolve_options  # noqa: E402
from benchmark.errors import BenchError  # noqa: E402
from generators.base import MASK_PREDICTED, collate_requests  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

SIZE = 64
STEPS, SSF = 4, 2  # 2 SSF steps, then 2 RMP steps


@pytest.fixture(scope="module")
def split():
    from benchmark.data.demo import demo_dataset_path
    from benchmark.data.layouts import read_dataset
    from benchmark.data.split import few_shot_split

    return few_shot_split(read_dataset(demo_dataset_path(), "mvtec", ["wood", "pill"]))


def _options(**kw):
    from generators.seas.lightning_model import SeasGenerator

    # the random `tiny` backbone: the glue's behaviour does not need the smoke preset's pre-trained U-Net
    return resolve_options(SeasGenerator, "smoke", {"backbone": "tiny", "train_steps": STEPS,
                                                    "ssf_steps_per_type": 1, "rmp_steps_per_type": 1,
                                                    "pairs_per_type": 1, "sampling_steps": 4, "mask_steps": 2,
                                                    "noise_timestep": 1500, "rmp_timesteps": None, **kw})


def _trainer(**kw):
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kw)


def _generate(gen, requests, batch_size=3):
    pairs = []

    class Collect(L.Callback):
        def on_predict_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
            pairs.extend(outputs)

    loader = DataLoader(requests, batch_size=batch_size, collate_fn=collate_requests)
    _trainer(callbacks=[Collect()]).predict(gen, dataloaders=loader, return_predictions=False)
    return pairs


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    after = module.state_dict()
    return [k for k in after if not torch.equal(before[k], after[k])]


@pytest.fixture(scope="module")
def trained(split):
    from generators.seas.lightning_model import SeasGenerator

    torch.manual_seed(0)
    gen = SeasGenerator(_options(), SIZE)
    gen.setup_split(split)
    before = {name: _state(getattr(gen, name)) for name in ("unet", "vae", "text_encoder", "rmp")}
    before["tokens"] = [v.detach().clone() for v in gen.tokens.vectors]
    after_ssf = {}

    class AfterSSF(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == SSF:
                after_ssf.update(unet=_state(module.unet), rmp=_state(module.rmp))

    _trainer(max_steps=gen.options.train_steps, max_epochs=-1, callbacks=[AfterSSF()]).fit(gen)
    return gen, before, after_ssf


def test_steps_split_between_ssf_and_rmp(split):
    from generators.seas.lightning_model import SeasGenerator

    gen = SeasGenerator(_options(train_steps=None, ssf_steps_per_type=3, rmp_steps_per_type=2), SIZE)
    gen.setup_split(split)
    # wood and pill have 3 anomaly types each: G = 6; (3 + 2) x 6 steps, the first 3 x 6 SSF
    assert (gen.options.train_steps, gen.ssf_steps) == (30, 18)
    gen = SeasGenerator(_options(train_steps=10, ssf_steps_per_type=3, rmp_steps_per_type=2), SIZE)
    gen.setup_split(split)
    assert (gen.options.train_steps, gen.ssf_steps) == (10, 6)


def test_ssf_trains_unet_and_tokens_then_rmp_trains_the_branch_alone(trained):
    gen, before, after_ssf = trained
    assert gen.ssf_steps == SSF and gen.global_step == STEPS
    for name in ("vae", "text_encoder"):
        assert not _changed(before[name], getattr(gen, name)), name
    assert _changed(before["unet"], gen.unet)  # SSF fine-tunes the U-Net ...
    assert all(not torch.equal(b, a) for b, a in zip(before["tokens"], gen.tokens.vectors[:1]))  # ... and <ob>
    assert not _changed(before["rmp"], _as_module(after_ssf["rmp"]))  # the branch waits for the RMP stage
    assert not _changed(after_ssf["unet"], gen.unet)  # the RMP stage leaves the fine-tuned U-Net alone
    assert [k for k in _changed(after_ssf["rmp"], gen.rmp) if k.endswith("weight")]


def _as_module(state):
    class View:
        def state_dict(self):
            return state
    return View()


def test_mixed_batch_draws_normals_of_the_anomaly_images_products(trained):
    gen, _, _ = trained
    rng = torch.Generator().manual_seed(0)
    gen.options = gen.options.model_copy(update={"normal_batch_size": 3})
    try:
        images, categories = gen._draw_normals(["wood", "pill"], rng)
    finally:
        gen.options = gen.options.model_copy(update={"normal_batch_size": 2})
    assert categories == ["wood", "pill", "wood"] and images.shape == (3, 3, SIZE, SIZE)
    assert images.min() >= -1 and images.max() <= 1


def test_ua_prompts_per_product_and_type(trained):
    gen, _, _ = trained
    wood = gen.prompts["wood"]
    assert wood.defect_types == ["hole", "scratch", "stain"]
    ob = wood.ob_tokens()[0]
    assert gen._prompt("wood", None) == f"a {ob}"
    df = wood.df_tokens("scratch")
    assert gen._prompt("wood", "scratch") == f"a {ob} with {df[0]}, {df[1]}, {df[2]}, {df[3]}"
    assert ob not in gen._prompt("pill", None)  # each product has its own <ob>
    # 2 products x (1 <ob> + 3 types x 4 <df>) one-token concepts
    assert len(gen.tokens.concepts) == 2 * (1 + 3 * 4)
    with pytest.raises(BenchError, match="no learned tokens"):
        gen._prompt("tile", "hole")


def test_generation_is_deterministic_with_predicted_masks(trained, split):
    gen, _, _ = trained
    requests = gen.plan(split, seed=0)
    assert len(requests) == 6 and all(r.mask is None for r in requests)
    first, again = _generate(gen, requests), _generate(gen, requests)
    assert [p.request.id for p in first] == [r.id for r in requests]
    for a, b in zip(first, again):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    for p in first:
        assert p.mask_origin == MASK_PREDICTED and p.image.shape == (SIZE, SIZE, 3) and p.image.dtype == np.uint8
        assert p.mask.shape == (SIZE, SIZE) and p.mask.dtype == bool
    assert len({p.image.tobytes() for p in first}) == len(first)


def test_rmp_probabilities_are_averaged_over_the_last_steps_and_thresholded(trained, split):
    from benchmark.data.images import load_image
    from generators.diffusion.latents import encode_images, images_to_tensor

    gen, _, _ = trained
    gen.eval()
    request = gen.plan(split, seed=0)[0]
    x0 = encode_images(gen.vae, images_to_tensor([load_image(request.normal_image, SIZE)]))
    with torch.no_grad():
        context = gen.encode_prompts([gen._prompt(request.category, request.defect)])
        _, probabilities = gen.denoise(torch.randn_like(x0), context, gen.encode_prompts([""]))
    assert len(probabilities) == gen.options.mask_steps == 2
    for p in probabilities:
        assert p.shape == (1, 1, SIZE, SIZE) and p.min() >= 0 and p.max() <= 1
    pair = gen.predict_step([request])[0]
    assert pair.mask.shape == (SIZE, SIZE)


def test_checkpoint_holds_tokens_unet_and_rmp_and_reproduces_pairs(trained, split, tmp_path):
    from generators.seas.lightning_model import SeasGenerator

    gen, _, _ = trained
    path = tmp_path / "seas.pt"
    gen.save_trained(path)
    blob = torch.load(path, weights_only=False)
    assert set(blob["state"]) == {"tokens", "unet", "rmp"}
    fresh = SeasGenerator(_options(), SIZE)
    fresh.setup_split(split)
    fresh.load_trained(path)
    requests = gen.plan(split, seed=1)[:3]
    for a, b in zip(_generate(gen, requests), _generate(fresh, requests)):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)


def test_normal_image_mode_uses_the_ob_prompt(trained, split, monkeypatch):
    gen, _, _ = trained
    seen = []
    encode = gen.encode_prompts
    monkeypatch.setattr(gen, "encode_prompts", lambda prompts: seen.append(list(prompts)) or encode(prompts))
    request = gen.plan(split, seed=0)[0]
    gen.options = gen.options.model_copy(update={"output": "normal"})
    try:
        gen.predict_step([request])
    finally:
        gen.options = gen.options.model_copy(update={"output": "anomaly"})
    assert seen[0] == [gen.prompts[request.category].normal_prompt()] and seen[1] == [""]


def test_start_latent_uses_the_extended_schedule(trained):
    gen, _, _ = trained
    # re-spread 1500-step SD schedule: abar_1500 = 3.18e-4 (docs/seas.md), against abar_1000 = 4.66e-3
    assert gen.start_schedule()[1499].item() == pytest.approx(3.18e-4, rel=2e-3)
    gen.options = gen.options.model_copy(update={"noise_timestep": 1000})
    try:
        assert gen.start_schedule()[999].item() == pytest.approx(4.66e-3, rel=2e-3)
    finally:
        gen.options = gen.options.model_copy(update={"noise_timestep": 1500})


def test_presets_and_missing_weights():
    from generators.seas.lightning_model import SeasGenerator

    paper = resolve_options(SeasGenerator, "paper", {})
    assert (paper.backbone, paper.resolution, paper.lr, paper.token_lr, paper.rmp_lr, paper.train_batch_size,
            paper.normal_batch_size, paper.sampling_steps, paper.noise_timestep, paper.guidance_scale,
            paper.mask_threshold, paper.ssf_steps_per_type, paper.rmp_steps_per_type, paper.train_steps) == (
        "CompVis/stable-diffusion-v1-4", 512, 4e-6, 4e-5, 5e-4, 2, 2, 25, 1500, 8.0, 0.2, 800, 800, None)
    assert paper.da_scales == (2, 4) and paper.rmp_features == (2, 3) and paper.anomaly_tokens == 4
    smoke = resolve_options(SeasGenerator, "smoke", {})  # the paper's start and sampler on the pre-trained backbone
    assert (smoke.backbone, smoke.noise_timestep, smoke.sampling_steps, smoke.mask_threshold) == (
        "tiny-demo", 1500, 25, 0.2)
    with pytest.raises(BenchError, match="model_index.json"):
        SeasGenerator(resolve_options(SeasGenerator, "paper", {"backbone": "/no/such/sd-v1-4"}), 512)
    with pytest.raises(BenchError, match="rmp_features"):
        SeasGenerator(_options(rmp_features=(2, 3)), SIZE)  # the tiny U-Net has 2 up blocks


def test_rmp_reads_the_prompted_half_of_the_guidance_batch(trained, split):
    """The U-Net runs on [x, x] with [unconditional, prompt] contexts; the RMP must get the
    features of the prompted half (authors' pipeline): recompute them from that half alone."""
    from benchmark.data.images import load_image
    from generators.diffusion.latents import encode_images, images_to_tensor
    from generators.seas.torch_model import unet_decoder_features

    gen, _, _ = trained
    gen.eval()
    requests = gen.plan(split, seed=0)[:2]
    x0 = encode_images(gen.vae, images_to_tensor([load_image(r.normal_image, SIZE) for r in requests]))
    calls, rmp_inputs = [], []
    pre = gen.unet.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((args[0].clone(), args[1], kwargs["encoder_hidden_states"].clone())),
        with_kwargs=True)
    forward = gen.rmp.forward
    gen.rmp.forward = lambda features, vae: rmp_inputs.append([f.clone() for f in features]) or forward(features, vae)
    try:
        with torch.no_grad():
            context = gen.encode_prompts([gen._prompt(r.category, r.defect) for r in requests])
            gen.denoise(torch.randn_like(x0), context, gen.encode_prompts([""] * 2))
    finally:
        pre.remove()
        del gen.rmp.forward
    sample, t, both = calls[-1]
    assert torch.equal(both[2:], context) and not torch.equal(both[:2], context)
    with torch.no_grad(), unet_decoder_features(gen.unet, gen.options.rmp_features) as taps:
        gen.unet(sample[2:], t, encoder_hidden_states=both[2:])
    for got, expected in zip(rmp_inputs[-1], taps.outputs):
        assert torch.allclose(got, expected, atol=1e-5)


def test_da_weight_scales_the_da_term_only(trained):
    gen, _, _ = trained
    n = gen.unet.config.in_channels
    side = SIZE // gen.backbone.vae_scale_factor
    x0 = torch.randn(4, n, side, side, generator=torch.Generator().manual_seed(3))
    masks = torch.zeros(4, 1, SIZE, SIZE)
    masks[:2, :, 8:24, 16:40] = 1  # the two anomaly rows; rows 2, 3 are normal images
    defect = gen.prompts["wood"].defect_types[0]
    prompts = [gen._prompt("wood", defect)] * 2 + [gen._prompt("wood", None)] * 2
    original = gen.options
    out = {}
    try:
        for w in (0.0, 1.0, 2.5):
            gen.options = original.model_copy(update={"da_weight": w})
            with torch.no_grad():
                out[w] = gen.ssf_losses(x0, masks, prompts, ["wood"] * 2, [defect] * 2, 2,
                                        torch.Generator().manual_seed(0))
    finally:
        gen.options = original
    da = sum(float(v) for k, v in out[1.0].items() if k.startswith("da_"))  # per-resolution terms, unweighted
    assert da > 0
    for w, terms in out.items():
        assert float(terms["diffusion"]) == pytest.approx(float(out[1.0]["diffusion"]))
        assert float(terms["loss"]) == pytest.approx(float(terms["diffusion"] + terms["na"]) + w * da, rel=1e-6)


def test_ssf_target_is_eps_v_or_x0_as_the_backbone_predicts(trained):
    """With the U-Net's output forced to 0, the diffusion term is the mean square of the target over
    the anomaly rows: eps, v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022) for a
    v-prediction backbone, or the clean latent x0 for an x0 ("sample") one, with t and eps drawn
    from the same seeded generator as the loss draws them."""
    from generators.diffusion.schedulers import make_scheduler

    gen, _, _ = trained
    n = gen.unet.config.in_channels
    side = SIZE // gen.backbone.vae_scale_factor
    x0 = torch.randn(4, n, side, side, generator=torch.Generator().manual_seed(4))
    masks = torch.zeros(4, 1, SIZE, SIZE)
    masks[:2, :, 8:24, 16:40] = 1
    defect = gen.prompts["pill"].defect_types[0]
    prompts = [gen._prompt("pill", defect)] * 2 + [gen._prompt("pill", None)] * 2

    def zero_output(module, args, output):
        output.sample = torch.zeros_like(output.sample)
        return output

    original = gen.forward_noise
    handle = gen.unet.register_forward_hook(zero_output)
    out = {}
    try:
        for kind in ("epsilon", "v_prediction", "sample"):
            gen.forward_noise = make_scheduler("ddpm", {**gen.backbone.scheduler_config, "prediction_type": kind})
            with torch.no_grad():
                out[kind] = gen.ssf_losses(x0, masks, prompts, ["pill"] * 2, [defect] * 2, 2,
                                           torch.Generator().manual_seed(5))
    finally:
        handle.remove()
        gen.forward_noise = original
    rng = torch.Generator().manual_seed(5)
    t = gen.draw_timesteps(4, rng)
    eps = gen.draw_noise(x0, rng)
    abar = original.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    assert float(out["epsilon"]["diffusion"]) == pytest.approx(float(eps[:2].square().mean()), rel=1e-5)
    assert float(out["v_prediction"]["diffusion"]) == pytest.approx(float(v[:2].square().mean()), rel=1e-5)
    assert float(out["v_prediction"]["na"]) == pytest.approx(float(v[2:].square().mean()), rel=1e-5)
    assert float(out["sample"]["diffusion"]) == pytest.approx(float(x0[:2].square().mean()), rel=1e-5)
    assert float(out["sample"]["na"]) == pytest.approx(float(x0[2:].square().mean()), rel=1e-5)
