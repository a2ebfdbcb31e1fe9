"""STAGE: each equation on tensors, the sampling loop with a mock denoiser, and the generator on the
tiny backbone at 64 px (fit, predict, checkpoints, determinism)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from benchmark.config import resolve_options  # noqa: E402
from benchmark.data.images import load_mask  # noqa: E402
from benchmark.errors import BenchError  # noqa: E402
from generators.base import MASK_GIVEN, collate_requests  # noqa: E402
from generators.diffusion.noise import PerSampleNoise  # noqa: E402
from generators.diffusion.schedulers import alphas_cumprod, make_scheduler  # noqa: E402
from generators.diffusion.ddpm import posterior  # noqa: E402
from generators.diffusion.few_shot import place_mask  # noqa: E402
from generators.stage.loss import anomaly_aware_loss, anomaly_only_loss, stage_loss  # noqa: E402
from generators.stage.torch_model import (AWARE, ONLY, MaskGuidanceAdapter, SamplingConfig,  # noqa: E402
                                          anomaly_inference_step, compose, ema_mask, graded_diffusion,
                                          in_intervals, zeta)

T, TS = 1000, 200


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _mask(h=8, w=8, box=(2, 5, 3, 7)):
    m = torch.zeros(1, 1, h, w)
    m[..., box[0]:box[1], box[2]:box[3]] = 1
    return m


@pytest.fixture(scope="module")
def abar():
    return alphas_cumprod(make_scheduler("ddpm", None)).float()


# -- Eq. 8: explicit mask alignment ------------------------------------------------------------------
def test_zeta_is_one_at_T_zero_below_t_s_and_linear_between():
    assert zeta(T, T, TS) == 1 and zeta(TS, T, TS) == 0 and zeta(1, T, TS) == 0
    ts = torch.arange(TS, T + 1)
    z = zeta(ts, T, TS)
    assert torch.allclose(z[1:] - z[:-1], torch.full((T - TS,), 1 / (T - TS)), atol=1e-6)


def test_ema_mask_all_ones_at_T_m0_below_t_s_linear_between():
    m0 = _mask()
    assert torch.equal(ema_mask(m0, T, T, TS), torch.ones_like(m0))
    for t in (TS, 100, 1):
        assert torch.equal(ema_mask(m0, t, T, TS), m0)
    mid = ema_mask(m0, (T + TS) // 2, T, TS)
    assert torch.allclose(mid, m0 + 0.5 * (1 - m0))
    a, b, c = (ema_mask(m0, t, T, TS) for t in (300, 400, 500))
    assert torch.allclose(b - a, c - b, atol=1e-6) and torch.equal(b * m0, m0)  # linear, M0 kept at 1
    per_sample = ema_mask(m0.repeat(2, 1, 1, 1), torch.tensor([T, TS]), T, TS)
    assert torch.equal(per_sample[0], torch.ones_like(m0[0])) and torch.equal(per_sample[1], m0[0])


# -- Eq. 3-6: composition and anomaly inference (the DDPM posterior: tests/test_diffusion_parts.py) -----
def test_compose_eq3():
    m = _mask(4, 4, (0, 2, 0, 4))
    inside, outside = torch.full((1, 4, 4, 4), 2.0), torch.full((1, 4, 4, 4), -1.0)
    out = compose(m, inside, outside)
    assert (out[..., :2, :] == 2).all() and (out[..., 2:, :] == -1).all()


def test_anomaly_inference_step_eq4_to_6(abar):
    g = torch.Generator().manual_seed(0)
    xp, xb, xt, z = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(4))
    m0 = _mask()
    out = anomaly_inference_step(xp, xb, xt, m0, abar[400], abar[399], z)
    mp, var = posterior(xp, m0 * xt, abar[400], abar[399])  # Eq. 5 with x_t^p = M0 * x_t
    mb, _ = posterior(xb, (1 - m0) * xt, abar[400], abar[399])  # Eq. 5 with x_t^back = (1 - M0) * x_t
    assert torch.allclose(out, m0 * mp + (1 - m0) * mb + var.sqrt() * z, atol=1e-6)  # Eq. 4 + Eq. 6
    last = anomaly_inference_step(xp, xb, xt, m0, abar[0], torch.tensor(1.0), z)
    assert torch.allclose(last, compose(m0, xp, xb), atol=1e-5)  # t = 1: x^back outside, x^p inside


# -- Algorithm 1 / Eq. 7: graded diffusion with a mock denoiser ---------------------------------------
def _recording_denoiser(scale=0.0, seed=0):
    calls, g = [], torch.Generator().manual_seed(seed)

    def denoise(x, index, branch, mask):
        calls.append((index + 1, branch, mask.clone()))
        return scale * torch.randn(x.shape, generator=g)

    return denoise, calls


def _run(abar, steps=1000, cfg=SamplingConfig(), scale=0.0, seed=0):
    s = make_scheduler("ddpm", None, timestep_spacing="trailing")
    s.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x_back, m0 = torch.randn(2, 4, 8, 8, generator=g), _mask().repeat(2, 1, 1, 1)
    denoise, calls = _recording_denoiser(scale, seed)
    x0 = graded_diffusion(denoise, x_back, m0, [int(t) for t in s.timesteps], abar, PerSampleNoise([1, 2]), cfg)
    return x0, x_back, m0, calls


@pytest.mark.parametrize("intervals", [((1000, 800), (400, 300)), ((800, 700), (400, 300))])
def test_anomaly_only_branch_runs_exactly_inside_the_intervals(abar, intervals):
    _, _, m0, calls = _run(abar, cfg=SamplingConfig(intervals=intervals))
    assert [t for t, _, _ in calls] == list(range(1000, 0, -1))
    inside = {t for a, b in intervals for t in range(min(a, b), max(a, b) + 1)}
    assert {t for t, b, _ in calls if b == ONLY} == inside
    assert {t for t, b, _ in calls if b == AWARE} == set(range(1, 1001)) - inside
    for t, branch, mask in calls:  # MGA input: M0 for the anomaly-only branch, M_t^p otherwise
        assert torch.equal(mask, m0 if branch == ONLY else ema_mask(m0, t, T, TS))


def test_respaced_sampling_keeps_the_branch_rule(abar):
    _, _, _, calls = _run(abar, steps=20)
    ts = [t for t, _, _ in calls]
    assert ts[0] == 1000 and len(ts) == 20
    assert all((b == ONLY) == in_intervals(t, ((1000, 800), (400, 300))) for t, b, _ in calls)
    _, _, _, flat = _run(abar, steps=20, cfg=SamplingConfig(graded=False))
    assert all(b == AWARE for _, b, _ in flat)


def test_in_intervals_is_inclusive_and_order_free():
    assert in_intervals(800, ((1000, 800),)) and in_intervals(1000, ((800, 1000),))
    assert not in_intervals(799, ((1000, 800), (400, 300))) and in_intervals(300, ((1000, 800), (400, 300)))


@pytest.mark.parametrize("cfg", [SamplingConfig(graded=False, mask_alignment="none"), SamplingConfig()])
def test_anomaly_inference_ends_on_the_clean_background_outside_m0(abar, cfg):
    x0, x_back, m0, _ = _run(abar, steps=50, cfg=cfg, scale=0.5)
    outside = (1 - m0).bool().expand_as(x0)
    assert torch.allclose(x0[outside], x_back[outside], atol=1e-5)
    assert not torch.allclose(x0[~outside], x_back[~outside], atol=1e-2)  # something was generated inside


def test_without_anomaly_inference_or_reinjection_the_background_drifts(abar):
    x0, x_back, m0, _ = _run(abar, steps=50, cfg=SamplingConfig(graded=False, anomaly_inference=False,
                                                                 mask_alignment="none"), scale=0.5)
    outside = (1 - m0).bool().expand_as(x0)
    assert (x0[outside] - x_back[outside]).abs().max() > 1e-2


def test_sampling_is_a_function_of_the_seeds(abar):
    a, _, _, _ = _run(abar, steps=20, scale=0.5, seed=3)
    b, _, _, _ = _run(abar, steps=20, scale=0.5, seed=3)
    assert torch.equal(a, b)


# -- Sec. III-D: the mask guidance adapter -------------------------------------------------------------
def test_mask_guidance_adapter_shapes_and_widths():
    mga = MaskGuidanceAdapter()
    convs = [m for m in mga.body if isinstance(m, torch.nn.Conv2d)]
    assert [c.in_channels for c in convs] + [convs[-1].out_channels] == [8, 64, 256, 512, 256, 64, 4]
    assert all(c.kernel_size == (3, 3) for c in convs)
    kinds = [type(m).__name__ for m in mga.body]
    assert kinds[:3] == ["Conv2d", "ReLU", "BatchNorm2d"]  # conv - ReLU - BN blocks
    eps, m = torch.randn(2, 4, 8, 8), _mask().repeat(2, 1, 1, 1)
    assert mga(eps, m).shape == (2, 4, 8, 8)
    residual = MaskGuidanceAdapter(hidden=(8,), residual=True).eval()
    assert torch.equal(residual(eps, m), eps)  # starts as the frozen UNet's prediction


def test_mask_guidance_adapter_in_the_authors_layer_order():
    """The authors' MGA: conv - BN - ReLU blocks and a 1x1 head. A hand computation of one block
    with known weights tells the two orders apart (ReLU before BN keeps no negative input to BN)."""
    mga = MaskGuidanceAdapter(latent_channels=1, hidden=(1,), layer_order="conv-bn-relu", head_kernel=1).eval()
    kinds = [type(m).__name__ for m in mga.body]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"] and mga.body[-1].kernel_size == (1, 1)
    conv, bn, _, head = mga.body
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0  # the block's conv passes the eps channel through
        conv.bias.zero_()
        bn.running_mean.fill_(1.0)  # BN in eval: (x - 1) / sqrt(1 + eps_bn)
        head.weight.fill_(2.0)
        head.bias.fill_(0.5)
    eps = torch.tensor([[[[-1.0, 0.5], [2.0, 3.0]]]])
    out = mga(eps, torch.zeros(1, 1, 2, 2))
    expected = 2.0 * torch.tensor([[[[0.0, 0.0], [1.0, 2.0]]]]) / (1 + 1e-5) ** 0.5 + 0.5  # relu((x - 1)/s)
    assert torch.allclose(out, expected, atol=1e-6)
    paper = MaskGuidanceAdapter(latent_channels=1, hidden=(1,)).eval()
    conv, _, bn, head = paper.body
    with torch.no_grad():  # the same weights in the paper's order; a 3x3 head used at its centre only
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        conv.bias.zero_()
        bn.running_mean.fill_(1.0)
        head.weight.zero_()
        head.weight[0, 0, 1, 1] = 2.0
        head.bias.fill_(0.5)
    expected_paper = 2.0 * (eps.clamp(min=0) - 1) / (1 + 1e-5) ** 0.5 + 0.5
    assert torch.allclose(paper(eps, torch.zeros(1, 1, 2, 2)), expected_paper, atol=1e-6)
    with pytest.raises(ValueError, match="layer_order"):
        MaskGuidanceAdapter(layer_order="bn-conv")


# -- Eq. 12: the loss ------------------------------------------------------------------------------
def test_loss_terms():
    e, p = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    assert anomaly_only_loss(e, p) == 1
    m = torch.zeros(1, 1, 2, 2)
    m[..., 0, 0] = 1
    assert anomaly_aware_loss(e, p, m) == pytest.approx(0.25)  # only where M_t^p > 0, mean over all
    assert anomaly_aware_loss(e, p, 0.5 * torch.ones(1, 1, 2, 2)) == pytest.approx(0.5)


class _BranchProbe:
    """Stands in for StageModel.denoise_both and keeps what each branch was given."""

    def denoise_both(self, x_t, xp_t, index, context, mask_aware, m0):
        self.seen = dict(x_t=x_t, xp_t=xp_t, mask_aware=mask_aware, m0=m0)
        return torch.zeros_like(x_t), torch.zeros_like(xp_t)


def test_stage_loss_feeds_full_latent_to_aware_and_masked_latent_to_only(abar):
    g = torch.Generator().manual_seed(0)
    x0, e1, e2 = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    m0 = _mask().repeat(2, 1, 1, 1)
    index = torch.tensor([900, 100])
    probe = _BranchProbe()
    out = stage_loss(probe, x0, m0, None, index, e1, e2, abar, T, TS)
    a = abar[index].view(-1, 1, 1, 1)
    assert torch.allclose(probe.seen["x_t"], a.sqrt() * x0 + (1 - a).sqrt() * e2)  # anomaly-aware: x0
    assert torch.allclose(probe.seen["xp_t"], a.sqrt() * m0 * x0 + (1 - a).sqrt() * e1)  # anomaly-only: M0 x0
    mask_t = ema_mask(m0, index + 1, T, TS)
    assert torch.equal(probe.seen["mask_aware"], mask_t) and torch.equal(probe.seen["m0"], m0)
    assert torch.allclose(out["loss_only"], e1.abs().mean())
    assert torch.allclose(out["loss_aware"], (mask_t * e2).abs().mean())
    assert torch.allclose(out["loss"], e1.abs().mean() + (mask_t * e2).abs().mean())  # Eq. 12: 1 : 1
    weighted = stage_loss(probe, x0, m0, None, index, e1, e2, abar, T, TS, aware_weight=4.0)  # authors' code
    assert torch.allclose(weighted["loss"], e1.abs().mean() + 4 * (mask_t * e2).abs().mean())
    assert torch.allclose(out["loss"], out["loss_only"] + out["loss_aware"])


# -- the generator on the tiny backbone -----------------------------------------------------------------
@pytest.fixture(scope="module")
def split(tmp_path_factory, make_toy_split):
    """2 categories x 2 defect types, 64 px, 2 few-shot defects each, 3 normal images."""
    return make_toy_split(tmp_path_factory.mktemp("stage-data"), 64, ("wood", "metal_plate"), n_good=3,
                              boxes=(("hole", (10, 20, 30, 44)), ("long_scratch", (40, 43, 5, 50))))


def _options(**kw):
    from generators.stage.lightning_model import StageOptions

    base = dict(backbone="tiny", train_steps=3, train_batch_size=2, sampling_steps=6, pairs_per_type=2, batch_size=2,
                adapter_channels=(8,), tokens_per_type=2, intervals=((1000, 800), (400, 300)))
    return StageOptions(**{**base, **kw})


def _trainer(**kw):
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kw)


def _generate(gen, requests, batch_size=2):
    pairs = []

    class Collect(L.Callback):
        def on_predict_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
            pairs.extend(outputs)

    _trainer(callbacks=[Collect()]).predict(gen, dataloaders=DataLoader(requests, batch_size=batch_size,
                                                                         collate_fn=collate_requests),
                                            return_predictions=False)
    return pairs


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def trained(split):
    from generators.stage.lightning_model import StageGenerator

    torch.manual_seed(0)
    gen = StageGenerator(_options(), 64)
    gen.setup_split(split)
    before = {name: _state(m) for name, m in (("unet", gen.unet), ("vae", gen.vae),
                                               ("text_encoder", gen.text_encoder),
                                               ("adapters", gen.model.adapters))}
    before["tokens"] = [v.detach().clone() for v in gen.tokens.vectors]
    _trainer(max_steps=3, max_epochs=-1).fit(gen)
    return gen, before


def test_training_moves_adapters_and_tokens_only(trained):
    gen, before = trained
    for name in ("unet", "vae", "text_encoder"):
        after = _state(getattr(gen, name))
        assert all(torch.equal(before[name][k], after[k]) for k in after), name
    after = _state(gen.model.adapters)
    assert any(not torch.equal(before["adapters"][k], after[k]) for k in after if k.endswith("weight"))
    assert all(not torch.equal(b, a) for b, a in zip(before["tokens"], gen.tokens.vectors))
    assert gen.unet.training is False and gen.text_encoder.training is False


def test_generation_is_deterministic_and_returns_the_given_mask(trained, split):
    gen, _ = trained
    requests = gen.plan(split, seed=0)
    assert len(requests) == 2 * 2 * 2
    first = _generate(gen, requests)
    again = _generate(gen, requests)
    assert [p.request.id for p in first] == [r.id for r in requests]
    for a, b in zip(first, again):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    for p in first:
        r = p.request
        assert p.mask_origin == MASK_GIVEN and p.image.shape == (64, 64, 3) and p.image.dtype == np.uint8
        assert np.array_equal(p.mask, place_mask(load_mask(list(r.mask), 64), np.random.default_rng(r.seed)))
    assert len({p.image.tobytes() for p in first}) == len(first)
    alone = _generate(gen, requests[1:2], batch_size=1)[0]  # the pair does not depend on its batch
    assert np.abs(alone.image.astype(int) - first[1].image.astype(int)).max() <= 1


def test_checkpoint_holds_tokens_and_adapters_and_reproduces_pairs(trained, split, tmp_path):
    from generators.stage.lightning_model import StageGenerator

    gen, _ = trained
    path = tmp_path / "stage.pt"
    gen.save_trained(path)
    blob = torch.load(path, weights_only=False)
    assert set(blob["state"]) == {"tokens", "adapters"}
    assert blob["state"]["tokens"]["concepts"] == ["wood/hole", "wood/long_scratch", "metal_plate/hole",
                                                   "metal_plate/long_scratch"]
    n_saved = sum(v.numel() for v in blob["state"]["adapters"].values()) + sum(
        v.numel() for v in blob["state"]["tokens"]["vectors"])
    assert n_saved == sum(v.numel() for v in gen.model.adapters.state_dict().values()) + sum(
        v.numel() for v in gen.tokens.vectors)  # adapters (with BatchNorm statistics) and tokens, nothing else
    assert n_saved < 0.1 * sum(p.numel() for p in gen.unet.parameters())
    fresh = StageGenerator(_options(), 64)
    fresh.setup_split(split)
    fresh.load_trained(path)
    requests = gen.plan(split, seed=1)[:2]
    for a, b in zip(_generate(gen, requests), _generate(fresh, requests)):
        assert np.array_equal(a.image, b.image)


def test_a_lightning_checkpoint_from_before_the_base_class_still_loads(trained, split):
    """Keys model.tokens.* and stage_concepts (STAGE before LatentDiffusionGenerator) load into a fresh generator."""
    from generators.stage.lightning_model import StageGenerator

    gen, _ = trained
    checkpoint = {"state_dict": {k: v.clone() for k, v in gen.state_dict().items()}}
    gen.on_save_checkpoint(checkpoint)
    assert checkpoint.pop("concepts") == gen.tokens.concepts
    legacy = {"stage_concepts": list(gen.tokens.concepts),
              "state_dict": {k.replace("tokens.", "model.tokens.", 1) if k.startswith("tokens.") else k: v
                             for k, v in checkpoint["state_dict"].items()}}
    assert any(k.startswith("model.tokens.") for k in legacy["state_dict"])
    fresh = StageGenerator(_options(), 64)
    fresh.on_load_checkpoint(legacy)
    fresh.load_state_dict(legacy["state_dict"], strict=False)
    assert fresh.tokens.concepts == gen.tokens.concepts
    assert all(torch.equal(a, b) for a, b in zip(fresh.tokens.vectors, gen.tokens.vectors))
    assert all(torch.equal(v, fresh.model.adapters.state_dict()[k]) for k, v in gen.model.adapters.state_dict().items())


def test_presets_and_option_checks(split):
    from generators.stage.lightning_model import StageGenerator

    paper = resolve_options(StageGenerator, "paper", {})
    assert (paper.backbone, paper.resolution, paper.train_batch_size, paper.lr, paper.train_steps,
            paper.pairs_per_type, paper.sampling_steps, paper.tokens_per_type, paper.t_s) == (
        "CompVis/ldm-text2im-large-256", 256, 4, 1e-3, 80_000, 500, 1000, 8, 200)
    assert paper.intervals == ((1000, 800), (400, 300)) and paper.adapter_channels == (64, 256, 512, 256, 64)
    smoke = resolve_options(StageGenerator, "smoke", {"intervals": [[800, 700], [400, 300]]})
    assert smoke.backbone == "tiny" and smoke.train_steps <= 300 and smoke.intervals == ((800, 700), (400, 300))
    assert (paper.follows, paper.adapter_layer_order, paper.adapter_head_kernel, paper.aware_loss_weight,
            paper.inference_mask) == ("paper", "conv-relu-bn", 3, 1.0, "m0")
    authors = resolve_options(StageGenerator, "smoke", {"follows": "authors-code"})
    assert (authors.adapter_layer_order, authors.adapter_head_kernel, authors.aware_loss_weight,
            authors.tokens_per_type, authors.intervals, authors.inference_mask) == (
        "conv-bn-relu", 1, 4.0, 4, ((800, 700), (400, 300)), "ema")
    mixed = resolve_options(StageGenerator, "paper", {"follows": "authors-code", "tokens_per_type": 8})
    assert mixed.tokens_per_type == 8 and mixed.inference_mask == "ema"  # explicit options win
    assert authors.model_dump(mode="json")["follows"] == "authors-code"  # what results.json records
    with pytest.raises(Exception):
        resolve_options(StageGenerator, "smoke", {"no_such_option": 1})
    with pytest.raises(BenchError, match="follows"):
        resolve_options(StageGenerator, "smoke", {"follows": "authors"})
    with pytest.raises(BenchError, match="multiple of 16"):
        StageGenerator(_options(), 72)
    with pytest.raises(BenchError, match="within T"):
        StageGenerator(_options(sampling_steps=2000), 64)
    gen = StageGenerator(_options(), 64)
    gen.setup_split(split)
    request = gen.plan(split, 0)[0]
    unknown = type(request)(**{**request.__dict__, "category": "tile"})
    with pytest.raises(BenchError, match="no learned tokens"):
        gen.predict_step([unknown])
