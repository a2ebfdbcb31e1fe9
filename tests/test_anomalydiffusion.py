"""AnomalyDiffusion's math: masked textual inversion (Eq. 5, 9), spatial encoder and e = {e_a, e_s}
(Sec. 3.2), joint augmentation (Supp. B), blending (Eq. 1), adaptive attention re-weighting
(Eq. 7, 8), mask guidance (Eq. 10), binarisation and the authors' border rule, blended DDIM.
Expected values are worked out by hand in the comments, not by re-running the formula."""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers.models.attention_processor import Attention  # noqa: E402

from benchmark.errors import BenchError  # noqa: E402
from generators.anomalydiffusion.augment import draw_affine, joint_augment, warp  # noqa: E402
from generators.anomalydiffusion.loss import mask_embedding_loss, masked_diffusion_loss  # noqa: E402
from generators.anomalydiffusion.options import DDIM_SETTINGS, DdimSettings  # noqa: E402
from generators.anomalydiffusion.spatial_encoder import SpatialEncoder, spatial_anomaly_context  # noqa: E402
from generators.anomalydiffusion.torch_model import (AdaptiveAttentionReweighting,  # noqa: E402
                                                     adaptive_scaling_softmax, attention_weight_map,
                                                     binarise_mask, blend_latents, blended_ddim_sampling,
                                                     guided_mask_eps, StoredSetDenoiser, to_latent_grid,
                                                     touches_border)
from generators.diffusion.attention import CrossAttentionHook, CrossAttentionProcessor  # noqa: E402
from generators.diffusion.noise import PerSampleNoise  # noqa: E402
from generators.diffusion.schedulers import make_scheduler  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
E = math.e


# -- Eq. 5 / 9: losses -----------------------------------------------------------------------------
def test_masked_loss_value_and_background_pixels_give_zero_gradient():
    # 1 channel, 2x2 latent, mask = top-left cell. eps = 1 everywhere.
    m = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    eps = torch.ones(1, 1, 2, 2)
    fg = m.clone()
    a = torch.tensor(3.0, requires_grad=True)  # drives only the background prediction
    b = torch.tensor(0.0, requires_grad=True)  # drives only the anomaly cell
    eps_pred = a * (1 - fg) + b * fg
    loss = masked_diffusion_loss(eps, eps_pred, m)
    # only the masked cell counts: (1 - 0)^2 = 1, mean over 4 elements = 1/4 (background errors of 2 ignored)
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert a.grad.item() == 0.0  # background pixels give no gradient
    # d/db [(1 - b)^2 / 4] at b = 0 = -2/4
    assert b.grad.item() == pytest.approx(-0.5)


def test_masked_loss_mask_broadcasts_over_channels():
    m = torch.tensor([[[[0.0, 1.0]]]])  # (1,1,1,2)
    eps = torch.zeros(1, 2, 1, 2)
    eps_pred = torch.tensor([[[[5.0, 1.0]], [[7.0, 2.0]]]])  # channel 0: (5,1), channel 1: (7,2)
    # kept: 1 and 2 -> (1 + 4) / 4 elements
    assert masked_diffusion_loss(eps, eps_pred, m).item() == pytest.approx(1.25)


def test_mask_embedding_loss_is_plain_mse():
    # (1 - 0)^2 and (2 - 0)^2 -> 5 / 2
    assert mask_embedding_loss(torch.tensor([1.0, 2.0]), torch.zeros(2)).item() == pytest.approx(2.5)


# -- Sec. 3.2: spatial encoder and e = {e_a, e_s} ----------------------------------------------------
def _small_encoder(**kw):
    torch.manual_seed(0)
    return SpatialEncoder(token_dim=6, n_tokens=4, arch="resnet18", fpn_channels=8, grid=2, **kw).eval()


def test_spatial_encoder_gives_n_tokens_one_head_each_and_sees_location():
    enc = _small_encoder()
    masks = torch.zeros(2, 1, 64, 64)
    masks[0, :, 4:20, 4:20] = 1  # same area, opposite corners
    masks[1, :, 44:60, 44:60] = 1
    with torch.no_grad():
        tokens = enc(masks)
        assert tokens.shape == (2, 4, 6)
        assert (tokens[0] - tokens[1]).abs().max() > 1e-3  # the location changes e_s
        # each token comes from its own head: silence head 2 and only token 2 becomes 0
        enc.heads[2].weight.zero_()
        enc.heads[2].bias.zero_()
        again = enc(masks)
    assert torch.equal(again[:, 2], torch.zeros(2, 6))
    assert torch.allclose(again[:, [0, 1, 3]], tokens[:, [0, 1, 3]])
    # a 2x2 grid of 8 FPN channels feeds the heads
    assert enc.heads[0].in_features == 8 * 2 * 2


def test_spatial_encoder_trains_end_to_end():
    enc = _small_encoder().train()
    masks = torch.zeros(2, 1, 64, 64)
    masks[:, :, 10:30, 20:40] = 1
    enc(masks).pow(2).sum().backward()
    assert enc.heads[0].weight.grad.abs().sum() > 0
    assert enc.fpn.body.conv1.weight.grad.abs().sum() > 0  # the ResNet is trained too (shared E)


def test_spatial_encoder_imagenet_weights_from_a_local_file(tmp_path):
    from torchvision.models import resnet18

    missing = tmp_path / "absent.pth"
    with pytest.raises(BenchError, match="absent.pth"):
        _small_encoder(weights_path=missing)
    body = resnet18(weights=None)
    with torch.no_grad():
        body.conv1.weight.fill_(0.125)
    torch.save(body.state_dict(), tmp_path / "r18.pth")
    enc = _small_encoder(weights_path=tmp_path / "r18.pth")
    assert torch.equal(enc.fpn.body.conv1.weight, torch.full_like(enc.fpn.body.conv1.weight, 0.125))


def test_a_relative_weights_name_is_looked_up_under_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIAS_BENCH_CACHE", str(tmp_path))
    with pytest.raises(BenchError, match=str(tmp_path / "weights" / "r18.pth")):
        _small_encoder(weights_path="r18.pth")
    from torchvision.models import resnet18

    (tmp_path / "weights").mkdir()
    torch.save(resnet18(weights=None).state_dict(), tmp_path / "weights" / "r18.pth")
    _small_encoder(weights_path="r18.pth")  # found there


def test_spatial_anomaly_context_appends_e_s_after_the_prompt():
    prompt = torch.zeros(1, 3, 2)  # 3 prompt states (holding e_a), D = 2
    e_s = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], requires_grad=True)
    ctx, positions = spatial_anomaly_context(prompt, e_s)
    assert positions == [3, 4]
    assert torch.equal(ctx[0], torch.tensor([[0.0, 0], [0, 0], [0, 0], [1, 2], [3, 4]]))
    ctx.sum().backward()
    assert torch.equal(e_s.grad, torch.ones(1, 2, 2))


# -- Supp. B: joint augmentation ----------------------------------------------------------------------
def test_warp_translation_rotation_and_zoom_on_planted_pixels():
    x = torch.arange(20.0).view(1, 4, 5)
    # translate (2, 1): out[y, x] = in[y - 1, x - 2], zeros brought in
    out = warp(x, 0.0, 1.0, (2.0, 1.0), "nearest")
    expected = torch.zeros(1, 4, 5)
    expected[0, 1:, 2:] = x[0, :3, :3]
    assert torch.equal(out, expected)
    # 90 degrees about the centre of a 3x3 (x right, y down): (x, y) -> (2 - y, x), so
    # in [[0,1,2],[3,4,5],[6,7,8]] becomes [[6,3,0],[7,4,1],[8,5,2]]
    r = warp(torch.arange(9.0).view(1, 3, 3), 90.0, 1.0, (0.0, 0.0), "nearest")
    assert torch.equal(r, torch.tensor([[[6.0, 3, 0], [7, 4, 1], [8, 5, 2]]]))
    # zoom 2 about the centre (2, 2) of a 5x5: out(p') = in((p' - 2) / 2 + 2)
    z = warp(torch.arange(25.0).view(1, 5, 5), 0.0, 2.0, (0.0, 0.0), "bilinear")
    assert z[0, 2, 2].item() == pytest.approx(12.0)  # centre stays
    assert z[0, 0, 0].item() == pytest.approx(6.0)  # in[1, 1]
    assert z[0, 0, 2].item() == pytest.approx(7.0)  # in[1, 2]
    assert z[0, 4, 4].item() == pytest.approx(18.0)  # in[3, 3]
    assert z[0, 1, 1].item() == pytest.approx((6 + 7 + 11 + 12) / 4)  # in[1.5, 1.5], bilinear


def test_joint_augment_keeps_the_anomaly_inside_and_moves_it():
    size = 32
    mask = torch.zeros(1, size, size)
    mask[0, 1:7, 24:30] = 1  # a 6x6 anomaly near the top-right corner: easy to push out
    image = torch.cat([mask, 1 - mask, torch.full_like(mask, 0.5)])  # channel 0 marks the anomaly
    centres = []
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        angle, scale, t = draw_affine(mask, torch.Generator().manual_seed(seed), max_angle=45, max_zoom=1.5)
        img_aug, mask_aug = joint_augment(image, mask, g, max_angle=45, max_zoom=1.5)
        assert set(mask_aug.unique().tolist()) <= {0.0, 1.0}  # still binary
        area = mask_aug.sum().item()
        # nothing of the anomaly is cut: area grows by about scale^2 (nearest sampling wobbles a little)
        assert area >= 0.8 * 36 * scale**2, (seed, area, scale)
        # image and mask moved together: the anomaly channel is high on the new mask
        assert img_aug[0][mask_aug[0] > 0].mean() > 0.6
        ys, xs = torch.nonzero(mask_aug[0], as_tuple=True)
        centres.append((xs.float().mean().item(), ys.float().mean().item()))
    c = torch.tensor(centres)
    assert c.std(0).min() > 2.0  # the position really varies (what the augmentation is for)


def test_joint_augment_without_anomaly_is_still_a_valid_transform():
    img, msk = joint_augment(torch.ones(3, 16, 16), torch.zeros(1, 16, 16), torch.Generator().manual_seed(0))
    assert img.shape == (3, 16, 16) and msk.sum() == 0


# -- Eq. 1: blending ----------------------------------------------------------------------------------
def test_blend_latents_inside_generated_outside_noised_normal():
    m = torch.tensor([[[[1.0, 0.0]]]])
    x_prev = torch.full((1, 1, 1, 2), 5.0)
    y0 = torch.full((1, 1, 1, 2), 2.0)
    noise = torch.ones(1, 1, 1, 2)
    out = blend_latents(x_prev, y0, noise, 0.64, m)
    # inside: 5; outside: sqrt(.64) * 2 + sqrt(.36) * 1 = 1.6 + 0.6
    assert torch.allclose(out, torch.tensor([[[[5.0, 2.2]]]]))
    # last step (abar = 1): the background is y0 itself
    assert torch.allclose(blend_latents(x_prev, y0, noise, 1.0, m), torch.tensor([[[[5.0, 2.0]]]]))


# -- Eq. 7 / 8: adaptive attention re-weighting --------------------------------------------------------
def _planted_pixels():
    # 2x3 image, 2 channels; mask = (0,0), (0,1), (1,0). y = 0; x0_hat differences inside:
    # (0,0): (1, 0) -> ||.||^2 = 1; (0,1): (1, 1) -> 2; (1,0): (0, 2) -> 4; outside: big differences.
    m = torch.tensor([[[[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]]])
    y = torch.zeros(1, 2, 2, 3)
    x0 = torch.full((1, 2, 2, 3), 9.0)
    x0[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    x0[0, :, 0, 1] = torch.tensor([1.0, 1.0])
    x0[0, :, 1, 0] = torch.tensor([0.0, 2.0])
    return m, y, x0


def test_adaptive_scaling_softmax_on_planted_values():
    m, y, x0 = _planted_pixels()
    w = adaptive_scaling_softmax(m, y, x0)
    # f = 1/d: 1, 1/2, 1/4; softmax over the 3 mask pixels; times ||m||_1 = 3
    z = E**1 + E**0.5 + E**0.25
    expected = torch.tensor([[[[3 * E / z, 3 * E**0.5 / z, 0.0], [3 * E**0.25 / z, 0.0, 0.0]]]])
    assert torch.allclose(w, expected, atol=1e-6)
    assert w[m > 0].mean().item() == pytest.approx(1.0)  # mean weight 1 inside the mask
    assert w[0, 0, 0, 0] > w[0, 0, 0, 1] > w[0, 0, 1, 0]  # the most normal-looking pixel gets most
    # a pixel whose prediction is exactly y gets the largest finite weight, not a dropped one
    x0[0, :, 0, 1] = 0.0
    w0 = adaptive_scaling_softmax(m, y, x0)
    assert torch.isfinite(w0).all() and w0[0, 0, 0, 1].item() == pytest.approx(3.0)


def test_attention_weight_map_is_one_outside_and_the_authors_clamp_is_an_option():
    m, y, x0 = _planted_pixels()
    w = adaptive_scaling_softmax(m, y, x0)
    z = E**1 + E**0.5 + E**0.25
    w00, w01, w10 = 3 * E / z, 3 * E**0.5 / z, 3 * E**0.25 / z  # 1.443, 0.875, 0.681
    plain = attention_weight_map(w, m)
    assert torch.allclose(plain, torch.tensor([[[[w00, w01, 1.0], [w10, 1.0, 1.0]]]]), atol=1e-6)
    clamped = attention_weight_map(w, m, clamp=(1.0, 1.5))
    assert torch.allclose(clamped, torch.tensor([[[[w00, 1.0, 1.0], [1.0, 1.0, 1.0]]]]), atol=1e-6)


def test_to_latent_grid_keeps_each_cells_mean_weight():
    # 4x4 pixel weights -> 2x2 cells, each the mean of its 2x2 block
    w = torch.tensor([[[[1.0, 3.0, 0.0, 0.0], [1.0, 3.0, 0.0, 4.0], [2.0, 2.0, 1.0, 1.0], [2.0, 2.0, 1.0, 1.0]]]])
    assert torch.equal(to_latent_grid(w, (2, 2)), torch.tensor([[[[2.0, 1.0], [2.0, 1.0]]]]))
    assert to_latent_grid(w, (4, 4)) is w


def _identity_attention():
    """diffusers cross-attention, 2-dim, one head, no 1/sqrt(d), identity projections: Q, K, V are
    the planted inputs themselves."""
    attn = Attention(query_dim=2, cross_attention_dim=2, heads=1, dim_head=2, scale_qk=False, bias=False, out_bias=False)
    with torch.no_grad():
        for lin in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]):
            lin.weight.copy_(torch.eye(2))
    return attn


@pytest.mark.parametrize("tokens", [None, [1]])
def test_aar_through_the_cross_attention_hook(tokens):
    attn = _identity_attention()
    hook = CrossAttentionHook(record=True)
    attn.set_processor(CrossAttentionProcessor(hook, "toy"))
    hook._latent_size = (1, 3)  # three queries on a 1x3 grid
    # pixel mask = first two cells; differences 1 and 2 -> weights 2 e^1 / (e^1 + e^.5), 2 e^.5 / (...)
    m = torch.tensor([[[[1.0, 1.0, 0.0]]]])
    y = torch.zeros(1, 1, 1, 3)
    x0 = torch.tensor([[[[1.0, math.sqrt(2.0), 5.0]]]])
    AdaptiveAttentionReweighting(hook, tokens=tokens).set(m, y, x0, (1, 3))
    # every query (1, 0) against keys (0, 0) and (ln 3, 0): scores 0 and ln 3 -> probs (1/4, 3/4)
    queries = torch.tensor([[[1.0, 0.0]] * 3])
    keys = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    attn(queries, encoder_hidden_states=keys)
    probs = hook.records[0].probs[0, 0]  # (3 queries, 2 tokens)
    z = E + E**0.5
    w0, w1 = 2 * E / z, 2 * E**0.5 / z
    col0 = [0.25, 0.25, 0.25] if tokens == [1] else [0.25 * w0, 0.25 * w1, 0.25]
    expected = torch.tensor([[col0[0], 0.75 * w0], [col0[1], 0.75 * w1], [0.25, 0.75]])
    assert torch.allclose(probs, expected, atol=1e-6)  # third query (outside) untouched


# -- Eq. 10 and the masks ------------------------------------------------------------------------------
def test_guided_mask_eps_uses_scale_five():
    # 1 + 5 (3 - 1) = 11
    assert guided_mask_eps(torch.tensor([1.0]), torch.tensor([3.0])).item() == pytest.approx(11.0)


def test_binarise_mask_thresholds_the_channel_mean_on_zero_one():
    # channel means 0.0, 0.2, 0.7 -> on [0, 1]: 0.5, 0.6, 0.85
    decoded = torch.tensor([[[[0.0, 0.2, 0.7]], [[0.0, 0.2, 0.7]], [[0.0, 0.2, 0.7]]]])
    decoded[0, 0, 0, 1], decoded[0, 1, 0, 1] = 0.5, -0.1  # still mean 0.2: (0.5 - 0.1 + 0.2) / 3
    assert binarise_mask(decoded).flatten().tolist() == [0.0, 1.0, 1.0]
    assert binarise_mask(decoded, threshold=0.8).flatten().tolist() == [0.0, 0.0, 1.0]


def test_touches_border_is_the_authors_one_third_rule():
    masks = torch.zeros(4, 1, 6, 6)  # limit = 6 / 3 = 2 pixels per border line
    masks[0, 0, 0, 1:3] = 1  # 2 on the top row: kept
    masks[1, 0, 0, 1:4] = 1  # 3 on the top row: rejected
    masks[2, 0, 2:5, 5] = 1  # 3 on the right column: rejected
    masks[3, 0, 1:5, 1:5] = 1  # large but inside: kept
    assert touches_border(masks).tolist() == [False, True, True, False]


def test_stored_set_denoiser_is_the_posterior_mean_over_the_stored_latents():
    # two stored 1-element latents 0 and 2, x_t = 1.2, abar = 0.64 (sqrt 0.8, 1 - abar = 0.36):
    # squared distances to sqrt(abar) x_i: 1.2^2 = 1.44 and (1.2 - 1.6)^2 = 0.16, over 2 * 0.36 = 0.72
    # -> log-weights -2 and -2/9; x0_hat = 2 * w_2
    w2 = E ** (-2 / 9) / (E ** -2 + E ** (-2 / 9))
    denoiser = StoredSetDenoiser(torch.tensor([[0.0], [2.0]]))
    x_t = torch.tensor([[1.2]])
    assert denoiser.x0(x_t, 0.64).item() == pytest.approx(2 * w2, rel=1e-6)
    assert denoiser.eps(x_t, 0.64).item() == pytest.approx((1.2 - 0.8 * 2 * w2) / 0.6, rel=1e-6)
    # a 2-element latent sums the squared distance over elements: x_t = (1, 0), stored (0, 0) and
    # (1, 1), abar = 0.5: squared distances 1 and (1 - s)^2 + s^2 with s = sqrt(0.5); 2(1 - abar) = 1
    s = math.sqrt(0.5)
    d2 = (1 - s) ** 2 + s ** 2
    w = 1 / (1 + E ** (d2 - 1))  # weight of (1, 1): e^-d2 / (e^-1 + e^-d2)
    x0 = StoredSetDenoiser(torch.tensor([[0.0, 0.0], [1.0, 1.0]])).x0(torch.tensor([[1.0, 0.0]]), 0.5)
    assert x0.tolist()[0] == pytest.approx([w, w], rel=1e-6)


def test_stored_set_denoiser_sampling_ends_on_a_stored_mask():
    # DDIM with the ideal denoiser of one stored latent lands on it whatever the start
    stored = torch.zeros(1, 3, 4, 4) - 1
    stored[..., 1:3, 1:2] = 1
    denoiser = StoredSetDenoiser(stored)
    scheduler = make_scheduler("ddim")
    scheduler.set_timesteps(10)
    z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps:
        z = scheduler.step(denoiser.eps(z, scheduler.alphas_cumprod[t]), t, z, eta=1.0).prev_sample
    assert torch.allclose(z, stored.expand(2, -1, -1, -1), atol=1e-3)


# -- blended DDIM --------------------------------------------------------------------------------------
def test_blended_ddim_keeps_the_noised_source_outside_at_every_step():
    scheduler = make_scheduler("ddim")
    settings = DdimSettings(steps=4, eta=1.0)
    m = torch.zeros(1, 1, 4, 4)
    m[..., 1:3, 1:3] = 1
    y0 = torch.linspace(-1, 1, 64).view(1, 4, 4, 4)
    x_T = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    seen = []

    def denoise(x, t):
        seen.append((int(t[0]), x.clone()))
        return 0.1 * x

    out = blended_ddim_sampling(denoise, scheduler, x_T, y0, m, PerSampleNoise([7]), settings)
    # replay the draws of the per-sample stream: each step draws DDIM's variance noise, then the blend noise
    g = torch.Generator().manual_seed(7)
    draws = [(torch.randn(4, 4, 4, generator=g), torch.randn(4, 4, 4, generator=g)) for _ in range(4)]
    acp = scheduler.alphas_cumprod
    # 4 of 1000 steps, "leading" spacing: t = 750, 500, 250, 0; the input of step k+1 was blended at t_k - 250
    assert [t for t, _ in seen] == [750, 500, 250, 0]
    outside = m[0] == 0
    for k in range(3):
        a = acp[seen[k][0] - 250]
        expected = a.sqrt() * y0[0] + (1 - a).sqrt() * draws[k][1]
        assert torch.allclose(seen[k + 1][1][0][outside.expand(4, -1, -1)], expected[outside.expand(4, -1, -1)], atol=1e-5)
    # after the last step (abar = 1) the background is the normal latent itself; the inside was generated
    assert torch.allclose(out[0][outside.expand(4, -1, -1)], y0[0][outside.expand(4, -1, -1)], atol=1e-6)
    assert not torch.allclose(out[0][~outside.expand(4, -1, -1)], y0[0][~outside.expand(4, -1, -1)], atol=1e-2)


class _RecordingAAR:
    def __init__(self):
        self.events = []

    def clear(self):
        self.events.append("clear")

    def set(self, m, y, x0_hat, size):
        self.events.append(("set", x0_hat.clone()))


@pytest.mark.parametrize("x0_from", ["current", "previous"])
def test_blended_ddim_reweights_before_each_conditional_call(x0_from):
    scheduler = make_scheduler("ddim")
    m = torch.ones(1, 1, 2, 2)
    calls = []

    def denoise(x, t):
        calls.append(x.clone())
        return torch.zeros_like(x)  # eps = 0: x0_hat = x_t / sqrt(abar_t)

    aar = _RecordingAAR()
    blended_ddim_sampling(denoise, scheduler, torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), m, PerSampleNoise([0]),
                          DdimSettings(3, 0.0), aar=aar, decode=lambda z: z, y_pixels=torch.zeros(1, 4, 2, 2),
                          m_pixels=m, x0_from=x0_from)
    sets = [e for e in aar.events if e != "clear"]
    if x0_from == "current":
        assert len(calls) == 6 and len(sets) == 3  # a plain call for x0_hat, then the re-weighted one
        # first step t = 666: x0_hat = 1 / sqrt(abar_666)
        assert torch.allclose(sets[0][1], torch.ones(1, 4, 2, 2) / scheduler.alphas_cumprod[666].sqrt())
    else:
        assert len(calls) == 3 and len(sets) == 2  # the first step has no earlier prediction
    assert aar.events[-1] == "clear"  # the hook is left without weights


def test_ddim_settings_name_the_authors_values():
    assert DDIM_SETTINGS["authors"] == DdimSettings(200, 1.0)
    assert DDIM_SETTINGS["authors_masks"] == DdimSettings(100, 1.0)


# -- the generator on the tiny backbone -----------------------------------------------------------------
@pytest.fixture(scope="module")
def split(tmp_path_factory, make_toy_split):
    """1 category x 2 defect types, 64 px, 2 few-shot defects each, 2 normal images."""
    return make_toy_split(tmp_path_factory.mktemp("ad-data"), 64)


def _trainer(**kw):
    import lightning as L

    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kw)


def _generate(gen, requests):
    import lightning as L
    from torch.utils.data import DataLoader

    from generators.base import collate_requests

    pairs = []

    class Collect(L.Callback):
        def on_predict_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
            pairs.extend(outputs)

    _trainer(callbacks=[Collect()]).predict(gen, dataloaders=DataLoader(requests, batch_size=2, collate_fn=collate_requests),
                                            return_predictions=False)
    return pairs


@pytest.fixture(scope="module")
def trained(split):
    from generators.anomalydiffusion import AnomalyDiffusion

    torch.manual_seed(0)
    options = AnomalyDiffusion.Options(backbone="tiny", train_steps=3, train_batch_size=2, ddim_steps=4,
                                       pairs_per_type=2, batch_size=2, tokens_per_type=2, spatial_arch="resnet18",
                                       spatial_fpn_channels=8, spatial_grid=2, mask_source="given")
    gen = AnomalyDiffusion(options, 64)
    gen.setup_split(split)
    before = {name: {k: v.detach().clone() for k, v in m.state_dict().items()}
              for name, m in (("unet", gen.unet), ("spatial_encoder", gen.spatial_encoder))}
    before["tokens"] = [v.detach().clone() for v in gen.tokens.vectors]
    _trainer(max_steps=3, max_epochs=-1).fit(gen)
    return gen, before


def test_training_moves_the_anomaly_embedding_and_spatial_encoder_only(trained):
    gen, before = trained
    assert all(torch.equal(v, gen.unet.state_dict()[k]) for k, v in before["unet"].items())  # the LDM stays frozen
    after = gen.spatial_encoder.state_dict()
    assert any(not torch.equal(before["spatial_encoder"][k], after[k]) for k in after if k.endswith("weight"))
    assert all(not torch.equal(b, a) for b, a in zip(before["tokens"], gen.tokens.vectors))
    assert set(gen.trained_parts()) == {"tokens", "spatial_encoder"}


def test_generation_keeps_the_background_and_is_deterministic(trained, split):
    import numpy as np

    from benchmark.data.images import load_image
    from generators.base import MASK_GIVEN

    gen, _ = trained
    requests = gen.plan(split, seed=0)
    first, again = _generate(gen, requests), _generate(gen, requests)
    assert len(first) == 4
    for a, b in zip(first, again):
        assert np.array_equal(a.image, b.image)
    for p in first:
        assert p.mask_origin == MASK_GIVEN
        normal = load_image(p.request.normal_image, 64).astype(int)
        # the tiny backbone's autoencoder is lossless: outside the mask (away from the latent cells
        # it touches) the pair is the normal image, inside it changed
        cells = torch.nn.functional.max_pool2d(torch.tensor(p.mask, dtype=torch.float32)[None, None], 8)
        near = torch.nn.functional.interpolate(cells, scale_factor=8)[0, 0].numpy() > 0
        assert np.abs(p.image.astype(int) - normal)[~near].max() <= 1
        assert np.abs(p.image.astype(int) - normal)[p.mask > 0].mean() > 1


def test_aar_changes_the_anomaly_and_a_checkpoint_reproduces_the_pairs(trained, split):
    import numpy as np

    from generators.anomalydiffusion import AnomalyDiffusion

    gen, _ = trained
    requests = gen.plan(split, seed=0)[:2]
    with_aar = _generate(gen, requests)
    gen.options = gen.options.model_copy(update={"aar": False})
    try:
        without = _generate(gen, requests)
    finally:
        gen.options = gen.options.model_copy(update={"aar": True})
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(with_aar, without))
    # the trained parts (e_a tokens by concept name, E's weights) are all a fresh generator needs
    fresh = AnomalyDiffusion(gen.options, 64)
    fresh.setup_split(split)
    fresh.load_trained_state(gen.trained_state())
    for a, b in zip(with_aar, _generate(fresh, requests)):
        assert np.array_equal(a.image, b.image)


def test_training_loss_noises_x0_and_counts_the_mask_only(trained):
    gen, _ = trained
    ctx = torch.zeros(1, gen.backbone.max_length + 4, gen.text_encoder.get_input_embeddings().embedding_dim)
    x0 = torch.zeros(1, gen.backbone.latent_channels, 8, 8)
    seen = []
    handle = gen.unet.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(args[0].clone()), with_kwargs=True)
    try:
        rng = torch.Generator().manual_seed(3)
        replay = torch.Generator().manual_seed(3)
        loss = gen.training_loss(x0, torch.zeros(1, 1, 8, 8), ctx, rng)["loss"]
    finally:
        handle.remove()
    assert loss.item() == 0.0  # an empty mask: nothing counts (Eq. 5)
    t = torch.randint(0, gen.T, (1,), generator=replay)
    eps = torch.randn(x0.shape, generator=replay)
    # x0 = 0: z_t = sqrt(1 - abar_t) eps (Ho et al. Eq. 4)
    assert torch.allclose(seen[0], (1 - gen.abar[t]).sqrt() * eps, atol=1e-6)


def test_aar_is_given_the_requests_normal_image(trained, split, monkeypatch):
    from benchmark.data.images import load_image
    from generators.anomalydiffusion import torch_model

    gen, _ = trained
    got = []
    original = torch_model.AdaptiveAttentionReweighting.set
    monkeypatch.setattr(torch_model.AdaptiveAttentionReweighting, "set",
                        lambda self, m, y, x0, size: (got.append((m.clone(), y.clone())), original(self, m, y, x0, size)))
    request = gen.plan(split, seed=0)[:1]
    pair = _generate(gen, request)[0]
    m, y = got[0]
    expected = torch.tensor(load_image(request[0].normal_image, 64)).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(y[0], expected, atol=1e-6)
    assert torch.equal(m[0, 0] > 0.5, torch.tensor(pair.mask > 0))



def test_generated_masks_are_sampled_from_the_mask_embedding_and_recorded(split, monkeypatch):
    import numpy as np

    from generators.anomalydiffusion import AnomalyDiffusion
    from generators.anomalydiffusion import lightning_model
    from generators.base import MASK_GIVEN, MASK_SYNTHESIZED

    torch.manual_seed(0)
    options = AnomalyDiffusion.Options(backbone="tiny", train_steps=2, train_batch_size=2, ddim_steps=2, mask_ddim_steps=2,
                                       pairs_per_type=1, batch_size=2, tokens_per_type=3, mask_tokens=2,
                                       spatial_arch="resnet18", spatial_fpn_channels=8, spatial_grid=2, aar=False)
    with pytest.raises(ValueError, match="mask_tokens"):
        AnomalyDiffusion.Options(tokens_per_type=2, mask_tokens=4)
    with pytest.raises(BenchError, match="mask_ddim_steps 1001"):
        AnomalyDiffusion(options.model_copy(update={"mask_ddim_steps": 1001}), 64)
    gen = AnomalyDiffusion(options, 64)
    gen.setup_split(split)
    assert "mask/wood/hole" in gen.tokens.concepts  # one e_m per type beside its e_a
    before = [v.detach().clone() for v in gen.tokens.vectors]
    _trainer(max_steps=2, max_epochs=-1).fit(gen)
    moved = [not torch.equal(b, a) for b, a in zip(before, gen.tokens.vectors)]
    assert all(moved)  # e_a (Eq. 5) and e_m (Eq. 9) both train
    # guidance sees e_m's first k' tokens against the empty prompt (Eq. 10); planted binarised draws:
    # the first draw is rejected by the border rule, the second is kept and recorded as synthesized
    bad = torch.zeros(1, 3, 64, 64) - 1
    bad[..., 0, :40] = 1  # 40 > 64/3 pixels on the top row
    good = torch.zeros(1, 3, 64, 64) - 1
    good[..., 20:30, 20:30] = 1
    draws = iter([bad.repeat(2, 1, 1, 1), good.repeat(2, 1, 1, 1)])
    monkeypatch.setattr(lightning_model, "decode_latents", lambda vae, z: next(draws))
    request = gen.plan(split, seed=0)
    contexts, outputs, guided = [], [], []
    handle = gen.unet.register_forward_pre_hook(
        lambda mod, args, kwargs: contexts.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    out_handle = gen.unet.register_forward_hook(lambda mod, args, out: outputs.append(out.sample.clone()))
    spy = lightning_model.guided_mask_eps
    monkeypatch.setattr(lightning_model, "guided_mask_eps", lambda u, c, s: (guided.append((u, c, s)), spy(u, c, s))[1])
    try:
        pairs = _generate(gen, request)
    finally:
        handle.remove()
        out_handle.remove()
    assert [p.mask_origin for p in pairs] == [MASK_SYNTHESIZED] * 2
    # Eq. 10 gets the unconditional prediction first, the e_m one second, and s = 5
    assert torch.equal(guided[0][0], outputs[1]) and torch.equal(guided[0][1], outputs[0]) and guided[0][2] == 5.0
    # 2 tries x 2 steps x (conditional, unconditional), then the image's 2 steps
    assert len(contexts) == 2 * 2 * 2 + 2
    concepts = [f"wood/{r.defect}" for r in request]
    with torch.no_grad():
        cond = gen.tokens.encode([" ".join(gen.tokens.placeholders("mask/" + c)[:2]) for c in concepts], gen.backbone.max_length)
        uncond = gen.tokens.encode(["", ""], gen.backbone.max_length)
    assert torch.allclose(contexts[0], cond) and torch.allclose(contexts[1], uncond)
    expected = np.zeros((64, 64), bool)
    expected[20:30, 20:30] = True
    assert all(np.array_equal(p.mask, expected) for p in pairs)
    # a request's pair does not depend on how many draws its batch-mate needed: the second request
    # alone, accepted at the first draw, gives the same image as in the batch above
    draws = iter([good[:1]])
    alone = _generate(gen, request[1:])[0]
    assert np.abs(alone.image.astype(int) - pairs[1].image.astype(int)).max() <= 1
    # nothing acceptable within mask_tries: the given mask, recorded so
    gen.options = gen.options.model_copy(update={"mask_tries": 2})
    draws = iter([bad.repeat(2, 1, 1, 1), torch.full((2, 3, 64, 64), -1.0)])  # border rule, then empty
    assert [p.mask_origin for p in _generate(gen, request)] == [MASK_GIVEN] * 2


def test_mask_embedding_loss_trains_on_the_mask_images_and_adds_to_the_total(split, monkeypatch):
    from generators.anomalydiffusion import AnomalyDiffusion
    from generators.diffusion.few_shot import FewShotDefects
    from generators.diffusion.latents import decode_latents

    torch.manual_seed(0)
    gen = AnomalyDiffusion(AnomalyDiffusion.Options(backbone="tiny", tokens_per_type=2, mask_tokens=2, augment=False,
                                                    spatial_arch="resnet18", spatial_fpn_channels=8, spatial_grid=2), 64)
    gen.setup_split(split)
    gen.train_set = FewShotDefects(split, 64)
    gen._train_rng = torch.Generator().manual_seed(5)
    logged = {}
    monkeypatch.setattr(gen, "log_dict", lambda d, **kw: logged.update(d))
    images, masks, ids = (torch.stack([gen.train_set[i][0] for i in (0, 2)]), torch.stack([gen.train_set[i][1] for i in (0, 2)]),
                          torch.tensor([gen.train_set[i][2] for i in (0, 2)]))
    seen = []
    handle = gen.unet.register_forward_pre_hook(lambda mod, args, kwargs: seen.append((args[0].clone(), args[1].clone())),
                                                with_kwargs=True)
    try:
        total = gen.training_step((images, masks, ids), 0)
    finally:
        handle.remove()
    assert total.item() == pytest.approx(logged["train/loss_diff"].item() + logged["train/loss_mask"].item())
    # the second U-Net call is Eq. 9's: undo the noising with the replayed draws and decode -> the
    # mask images as grey images (0 -> -1, 1 -> +1); the tiny autoencoder is lossless
    replay = torch.Generator().manual_seed(5)
    torch.randint(0, gen.T, (2,), generator=replay), torch.randn(seen[0][0].shape, generator=replay)  # Eq. 5's draws
    t = torch.randint(0, gen.T, (2,), generator=replay)
    eps = torch.randn(seen[1][0].shape, generator=replay)
    assert torch.equal(seen[1][1], t)
    abar = gen.abar[t].view(-1, 1, 1, 1)
    z0 = (seen[1][0] - (1 - abar).sqrt() * eps) / abar.sqrt()
    assert torch.allclose(decode_latents(gen.vae, z0).mean(1, keepdim=True), masks * 2 - 1, atol=1e-3)
    # e_m of the batch's types gets gradient from the total
    total.backward()
    slots = [gen.tokens.concepts.index("mask/" + gen.train_set.concepts[k]) for k in ids.tolist()]
    assert all(gen.tokens.vectors[s].grad.abs().sum() > 0 for s in slots)


def test_stored_masks_smoke_denoiser_generates_the_types_augmented_masks(split, caplog):
    import logging

    import numpy as np

    from generators.anomalydiffusion import AnomalyDiffusion
    from generators.base import MASK_SYNTHESIZED

    torch.manual_seed(0)
    options = AnomalyDiffusion.Options(backbone="tiny", train_steps=4, train_batch_size=2, ddim_steps=2, mask_ddim_steps=4,
                                       pairs_per_type=2, batch_size=2, tokens_per_type=2, spatial_arch="resnet18",
                                       spatial_fpn_channels=8, spatial_grid=2, aar=False, mask_denoiser="stored_masks",
                                       stored_masks_per_type=3)
    gen = AnomalyDiffusion(options, 64)
    gen.setup_split(split)
    assert not any(c.startswith("mask/") for c in gen.tokens.concepts)  # no e_m is learned
    _trainer(max_steps=4, max_epochs=-1).fit(gen)
    bank = gen.stored_masks
    assert len(bank.masks) == len(bank.owner) >= 2 and bank.masks.shape[1:] == (64, 64)
    assert all(int((bank.owner == k).sum()) <= 3 for k in (0, 1))
    requests = gen.plan(split, seed=0)
    with caplog.at_level(logging.INFO, logger="generators.anomalydiffusion.lightning_model"):
        pairs = _generate(gen, requests)
    assert "4 of 4 masks generated" in caplog.text and "0 fell back" in caplog.text
    assert [p.mask_origin for p in pairs] == [MASK_SYNTHESIZED] * 4
    for p in pairs:  # each generated mask is one of its own type's stored (jointly augmented) masks
        k = gen.split_concept_names.index(f"wood/{p.request.defect}")
        own = bank.masks[bank.owner == k].numpy() > 0
        assert any(np.array_equal(p.mask, m) for m in own)
    # the stored masks travel in the trained state: a fresh generator makes the same pairs
    fresh = AnomalyDiffusion(options, 64)
    fresh.setup_split(split)
    fresh.load_trained_state(gen.trained_state())
    for a, b in zip(pairs, _generate(fresh, requests)):
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.image, b.image)
