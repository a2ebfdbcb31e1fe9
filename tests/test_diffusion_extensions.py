"""Extension points for the next diffusion methods, each on small tensors or tiny random models:
an unfrozen backbone, extra context tokens and multi-condition guidance (hand-computed), feature
taps on the tiny U-Net and a tiny VAE decoder, one denoiser interface for a U-Net, a PixArt-style
and a DiT transformer, and BADG's masked DDIM inversion (one step by hand, the mask kept at zero,
background round trip)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from generators.diffusion.conditioning import multi_condition_guidance, with_extra_tokens  # noqa: E402
from generators.diffusion.denoiser import TransformerDenoiser, UNetDenoiser, as_denoiser  # noqa: E402
from generators.diffusion.feature_taps import FeatureTaps, unet_decoder_blocks, vae_decoder_blocks  # noqa: E402
from generators.diffusion.inversion import masked_ddim_inversion  # noqa: E402
from generators.diffusion.schedulers import alphas_cumprod, make_scheduler  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def backbone():
    from generators.diffusion.backbone import load_backbone

    return load_backbone("tiny")


def _unet_inputs(backbone, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, h = backbone.latent_channels, backbone.unet.config.sample_size
    x = torch.randn(batch, c, h // 2, h // 2, generator=g)
    ctx = torch.randn(batch, 5, backbone.unet.config.cross_attention_dim, generator=g)
    return x, ctx


# -- load_backbone(freeze=False) ---------------------------------------------------------------------
def test_load_backbone_can_leave_the_denoiser_trainable():
    from generators.diffusion.backbone import load_backbone

    frozen, free = load_backbone("tiny"), load_backbone("tiny", freeze=False)
    assert not any(p.requires_grad for p in frozen.unet.parameters()) and not frozen.unet.training
    assert all(p.requires_grad for p in free.unet.parameters())
    assert all(p.requires_grad for p in free.text_encoder.parameters())


# -- conditioning --------------------------------------------------------------------------------------
def test_extra_tokens_follow_each_samples_prompt():
    context = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)  # B=2, L=3, D=2
    extra = torch.tensor([[[100.0, 101.0]], [[200.0, 201.0]]])  # one token per sample
    out = with_extra_tokens(context, extra)
    assert out.shape == (2, 4, 2)
    assert out[0].tolist() == [[0, 1], [2, 3], [4, 5], [100, 101]]
    assert out[1].tolist() == [[6, 7], [8, 9], [10, 11], [200, 201]]
    assert torch.equal(with_extra_tokens(context, extra[:, 0]), out)  # (B, D): one token each
    with pytest.raises(ValueError, match="do not fit"):
        with_extra_tokens(context, torch.zeros(3, 1, 2))


def test_multi_condition_guidance_by_hand():
    u, a, b = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([-1.0])
    # 1 + 2 * (3 - 1) + 0.5 * (-1 - 1) = 1 + 4 - 1 = 4
    assert multi_condition_guidance(u, [a, b], [2.0, 0.5]).item() == pytest.approx(4.0)
    # one condition at scale w: eps_u + w (eps_c - eps_u); w = 1 gives the conditional prediction
    assert multi_condition_guidance(u, [a], [7.5]).item() == pytest.approx(16.0)
    assert multi_condition_guidance(u, [a], [1.0]).item() == pytest.approx(3.0)
    assert multi_condition_guidance(u, [], []).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="guidance scales"):
        multi_condition_guidance(u, [a, b], [1.0])


# -- feature taps ----------------------------------------------------------------------------------------
def test_feature_taps_collect_unet_decoder_blocks_and_detach(backbone):
    unet = backbone.unet
    x, ctx = _unet_inputs(backbone)
    names = unet_decoder_blocks(unet)
    assert names == ["up_blocks.0", "up_blocks.1"]
    with FeatureTaps(unet, names) as taps:
        eps = unet(x, 10, encoder_hidden_states=ctx).sample
    # up_blocks.0 works at half the latent size with the deepest width and upsamples at its end;
    # up_blocks.1 is the last, full-resolution decoder map with the first width
    widths = unet.config.block_out_channels
    assert taps.features["up_blocks.0"].shape == (2, widths[1], *x.shape[-2:])
    assert taps.features["up_blocks.1"].shape == (2, widths[0], *x.shape[-2:])
    again = unet(x, 10, encoder_hidden_states=ctx).sample  # removed: nothing more is collected
    assert torch.equal(eps, again) and len(unet.up_blocks[0]._forward_hooks) == 0
    with pytest.raises(ValueError, match="no module named up_blocks.7"):
        FeatureTaps(unet, ["up_blocks.7"])


def test_feature_taps_on_a_vae_decoder_keep_gradients_unless_detached():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4)
    z = torch.randn(1, 4, 4, 4, requires_grad=True)
    names = vae_decoder_blocks(vae)
    with FeatureTaps(vae, names) as taps:
        vae.decode(z)
    assert [taps.features[n].shape[-1] for n in names] == [8, 8]  # the last up block does not upsample
    assert taps.features[names[0]].requires_grad
    with FeatureTaps(vae, names, detach=True) as taps:
        vae.decode(z)
    assert not taps.features[names[0]].requires_grad


# -- one denoiser interface ---------------------------------------------------------------------------
def test_unet_denoiser_is_the_unet_call(backbone):
    x, ctx = _unet_inputs(backbone)
    d = as_denoiser(backbone.unet)
    assert isinstance(d, UNetDenoiser)
    assert torch.equal(d(x, 10, ctx), backbone.unet(x, 10, encoder_hidden_states=ctx).sample)


def test_pixart_and_dit_transformers_behind_the_same_interface():
    from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel

    torch.manual_seed(0)
    common = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                  sample_size=8, patch_size=2, norm_num_groups=4)
    pixart = PixArtTransformer2DModel(**common, cross_attention_dim=16).eval()
    dit = DiTTransformer2DModel(**common, num_embeds_ada_norm=10).eval()
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 3, 16, generator=g)
    d = as_denoiser(pixart)
    assert isinstance(d, TransformerDenoiser)
    eps = d(x, 10, ctx)
    raw = pixart(x, encoder_hidden_states=ctx, timestep=torch.tensor([10, 10]),
                 added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    assert eps.shape == x.shape and torch.equal(eps, raw[:, :4])  # noise channels, not the learned variance
    assert not torch.allclose(d(x, 10, ctx + 1), eps)  # the text context reaches the prediction
    labels = torch.tensor([1, 2])
    e_dit = as_denoiser(dit)(x, torch.tensor([10, 500]), labels)
    assert e_dit.shape == x.shape
    assert not torch.allclose(as_denoiser(dit)(x, torch.tensor([10, 500]), torch.tensor([3, 2])), e_dit)
    with pytest.raises(TypeError):
        as_denoiser(torch.nn.Linear(2, 2))


# -- BADG Eq. 8: masked DDIM inversion -------------------------------------------------------------------
def _mask():
    m = torch.zeros(1, 1, 4, 4)
    m[..., 1:3, 1:3] = 1
    return m


def test_one_inversion_step_by_hand():
    """Eq. 8 for one step: from the clean latent (a = 1) to a_t with eps = 0.5 everywhere."""
    s = make_scheduler("ddim_inverse", None)
    z0, m = torch.full((1, 1, 4, 4), 2.0), _mask()
    z1 = masked_ddim_inversion(z0, m, lambda z, t, c: torch.full_like(z, 0.5), s, steps=1)
    a = alphas_cumprod(s)[0].item()  # the one step lands on abar at timestep 0
    outside = a**0.5 * (2.0 / 1.0 + (((1 / a) - 1) ** 0.5 - 0.0) * 0.5)  # sqrt(1/a_0 - 1) = 0 for the clean start
    assert torch.allclose(z1[m == 0], torch.full_like(z1[m == 0], outside))
    assert torch.equal(z1[m == 1], torch.zeros_like(z1[m == 1]))  # z0^m is 0 inside, and stays so


def _round_trip_error(denoiser, z0, m, steps):
    """max |z0 - DDIM sampling(masked inversion(z0))| over the background."""
    s_inv, s = make_scheduler("ddim_inverse", None), make_scheduler("ddim", None)
    z = masked_ddim_inversion(z0, m, denoiser, s_inv, steps)
    s.set_timesteps(steps)
    for t in s.timesteps:  # plain DDIM sampling back (BADG Eq. 3)
        z = s.step(denoiser(z, int(t), None), int(t), z).prev_sample
    return ((z - z0) * (1 - m)).abs().max().item()


def test_inversion_keeps_the_mask_at_zero_and_the_background_round_trips():
    s_inv = make_scheduler("ddim_inverse", None)
    g = torch.Generator().manual_seed(0)
    z0, m = torch.randn(1, 4, 4, 4, generator=g), _mask()
    offset = torch.randn(1, 4, 4, 4, generator=g)

    seen = []

    def denoiser(z, t, context):  # per-pixel and smooth in z, nonzero at z = 0: the mask matters
        seen.append(t)
        return 0.3 * z + 0.2 * offset

    zT, path = masked_ddim_inversion(z0, m, denoiser, s_inv, steps=50, return_trajectory=True)
    assert len(path) == 51 and torch.equal(path[0], (1 - m) * z0)
    assert seen == [0] + list(range(0, 980, 20))  # eps(z~_{t-1}, t-1): the level z is at, 0 for the clean start
    assert torch.equal(zT * m, torch.zeros_like(zT))  # inside the mask: nothing but the noise BADG adds
    unmasked = masked_ddim_inversion(z0, torch.zeros_like(m), denoiser, s_inv, steps=50)
    assert (unmasked * m).abs().max() > 0.1  # without the mask the defect area would be filled
    # a noise prediction that does not depend on z: inversion and sampling retrace the same path
    assert _round_trip_error(lambda z, t, c: 0.2 * offset, z0, m, 50) < 1e-4
    # one that does: DDIM is a first-order ODE solver, the gap shrinks with the step size
    coarse, fine = _round_trip_error(denoiser, z0, m, 100), _round_trip_error(denoiser, z0, m, 1000)
    assert fine < 0.01 and fine < coarse / 5


def test_a_dit_denoiser_backbone_needs_multiples_of_vae_times_patch(backbone):
    from dataclasses import replace

    from diffusers import PixArtTransformer2DModel

    pixart = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                      num_layers=1, sample_size=8, patch_size=2, cross_attention_dim=16,
                                      norm_num_groups=4)
    dit_backbone = replace(backbone, unet=pixart)
    assert backbone.size_multiple == 8 * 2  # tiny: 8 px per latent cell, one U-Net halving
    assert dit_backbone.size_multiple == backbone.vae_scale_factor * 2  # patch size 2
    assert dit_backbone.latent_channels == 4
