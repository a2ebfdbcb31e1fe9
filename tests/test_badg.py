"""BADG's math: masked cross-attention (Eq. 10/11), tokens, DDIM steps (Eq. 3, 8, 9), initialisation,
mask refinement (Eq. 13), the disentanglement loss (Eq. 5-7) and Proposition 3.3 on toy denoisers.
Expected values are worked out by hand in the comments, not by re-running the formula."""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import DDIMInverseScheduler  # noqa: E402
from diffusers.models.attention_processor import Attention  # noqa: E402

from generators.badg.loss import badg_loss, disentanglement_loss, noised_latents  # noqa: E402
from generators.badg.torch_model import (BadgTokens, MaskedCrossAttention, MaskedCrossAttnProcessor,  # noqa: E402
                                         composite_ddim_sampling,
                                         composite_noise, ddim_step, group_softmax_mix, initial_latent,
                                         inside_outside_bias, masked_ddim_sampling, rare_identifier, refine_mask,
                                         resize_mask, token_groups)
from generators.diffusion.inversion import masked_ddim_inversion, masked_inversion_step  # noqa: E402
from generators.diffusion.schedulers import make_scheduler  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
LN3, LN4 = math.log(3.0), math.log(4.0)


# -- Eq. 10 / 11: masked cross-attention ---------------------------------------------------------------
def test_group_softmax_mix_puts_each_groups_mass_where_the_paper_says():
    # tokens 0, 1 = C_def (inside group), tokens 2, 3 = C_bg; C_bg scores are planted high for the
    # inside query, C_def scores high for the outside one: the mask must override them.
    scores = torch.tensor([[[0.0, LN3, 5.0, 5.0],      # inside (m' = 1): softmax(0, ln3) = (1/4, 3/4)
                            [9.0, 9.0, 0.0, LN4],      # outside (m' = 0): softmax(0, ln4) = (1/5, 4/5)
                            [0.0, 0.0, 0.0, LN3]]])    # m' = 1/2: 1/2 (1/2, 1/2, 0, 0) + 1/2 (0, 0, 1/4, 3/4)
    m_q = torch.tensor([[[1.0], [0.0], [0.5]]])
    inside, outside = token_groups(4, 2)
    probs = group_softmax_mix(scores, m_q, inside, outside)
    expected = torch.tensor([[[0.25, 0.75, 0, 0], [0, 0, 0.2, 0.8], [0.25, 0.25, 0.125, 0.375]]])
    assert torch.allclose(probs, expected, atol=1e-6)
    # the additive-bias form (binary m') gives the same rows as one ordinary softmax
    bias = inside_outside_bias(torch.tensor([[True, False]]), inside, outside)
    assert torch.allclose((scores[:, :2] + bias).softmax(-1), expected[:, :2], atol=1e-6)


def _identity_attention():
    """A diffusers cross-attention layer (2-dim queries and keys, one head, no 1/sqrt(d)) whose
    projections are identities, so Q, K, V are the planted inputs themselves."""
    attn = Attention(query_dim=2, cross_attention_dim=2, heads=1, dim_head=2, scale_qk=False, bias=False, out_bias=False)
    with torch.no_grad():
        for lin in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]):
            lin.weight.copy_(torch.eye(2))
    return attn


def test_processor_implements_eq10_on_planted_queries_and_keys():
    attn = _identity_attention()
    hook = MaskedCrossAttention(record=True)
    attn.set_processor(MaskedCrossAttnProcessor(hook, "toy"))
    hook._latent_size = (2, 1)  # two queries on a 2x1 grid: row 0 inside the mask, row 1 outside
    hook.set(torch.tensor([[[[1.0], [0.0]]]]), n_inside=2)
    # keys: C_def = (k0, k1), C_bg = (k2, k3); query q = (1, 0) gives scores = first key coordinate
    q = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    keys = torch.tensor([[[0.0, 0.0], [LN3, 0.0], [7.0, 0.0], [7.0, 0.0]]])  # C_bg planted far stronger
    # K = V = ctx (identity projections): first coordinate = the score against q, second = the value
    ctx = torch.stack([keys[0, :, 0], torch.tensor([10.0, 20.0, 30.0, 50.0])]).T[None]  # (1, 4, 2)
    out = attn(q, encoder_hidden_states=ctx)
    # inside: softmax over C_def (0, ln3) = (1/4, 3/4) -> value 1/4 * 10 + 3/4 * 20 = 17.5
    # outside: softmax over C_bg (7, 7) = (1/2, 1/2) -> value 1/2 * 30 + 1/2 * 50 = 40
    assert torch.allclose(out[0, :, 1], torch.tensor([17.5, 40.0]), atol=1e-5)
    probs = hook.records[0].probs[0, 0]
    assert torch.allclose(probs, torch.tensor([[0.25, 0.75, 0, 0], [0, 0, 0.5, 0.5]]), atol=1e-6)


def test_masked_attention_in_the_unet_equals_attending_one_prompt(tiny_backbone):
    """An all-inside mask makes every cross-attention layer attend C_def alone, an all-outside mask
    C_bg alone: the U-Net's output must equal the plain U-Net given only that prompt."""
    unet = tiny_backbone.unet
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, unet.config.in_channels, 8, 8, generator=g)
    c_def, c_bg = torch.randn(1, 5, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    with torch.no_grad():
        ref_def = unet(x, 500, encoder_hidden_states=c_def).sample
        ref_bg = unet(x, 500, encoder_hidden_states=c_bg).sample
        with MaskedCrossAttention(record=True).attach(unet) as hook:
            ctx = torch.cat([c_def, c_bg], 1)
            hook.set(torch.ones(1, 1, 8, 8), n_inside=5)
            assert torch.allclose(unet(x, 500, encoder_hidden_states=ctx).sample, ref_def, atol=1e-5)
            hook.set(torch.zeros(1, 1, 8, 8), n_inside=5)
            assert torch.allclose(unet(x, 500, encoder_hidden_states=ctx).sample, ref_bg, atol=1e-5)
            half = torch.zeros(1, 1, 8, 8)
            half[..., :, :4] = 1  # left half inside
            hook.set(half, n_inside=5)
            hook.clear()
            unet(x, 500, encoder_hidden_states=ctx)
    assert hook.records
    for r in hook.records:
        maps = r.maps()  # (1, 10, h, w)
        m = resize_mask(half, r.size)[:, 0]
        assert torch.allclose(maps[:, :5].sum(1), m, atol=1e-5)  # C_def's mass is m' at every query
        assert torch.allclose(maps[:, 5:].sum(1), 1 - m, atol=1e-5)  # C_bg's is 1 - m'


@pytest.fixture(scope="module")
def tiny_backbone():
    from generators.diffusion.backbone import load_backbone

    torch.manual_seed(0)
    return load_backbone("tiny")


def test_resize_mask_is_the_area_fraction():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 0, :3] = 1  # 3 pixels of the top row
    small = resize_mask(mask, (2, 2))
    # top-left cell: 2 of 4 pixels; top-right: 1 of 4; bottom cells: none
    assert torch.allclose(small, torch.tensor([[[[0.5, 0.25], [0.0, 0.0]]]]))
    assert resize_mask(mask, (4, 4)) is not None and torch.equal(resize_mask(mask, (4, 4)), mask)


# -- tokens ---------------------------------------------------------------------------------------------
def test_badg_tokens_build_c1_and_c2_sharing_the_background_prompt(tiny_backbone):
    tok, enc = tiny_backbone.tokenizer, tiny_backbone.text_encoder
    L = 40  # the tiny tokenizer is byte-level: a prompt is one token per character or so

    def encode(prompts):
        ids = tok(prompts, padding="max_length", max_length=L, truncation=True, return_tensors="pt").input_ids
        return enc(ids)[0]

    tokens = BadgTokens(tok, encode, L)
    with torch.no_grad():
        c1, c2 = tokens.contexts(["bottle", "bottle"], ["broken_large", "contamination"])
    assert c1.shape == c2.shape == (2, 2 * L, enc.config.hidden_size)
    assert torch.equal(c1[:, L:], c2[:, L:])  # C_bg is the same half of C1 and C2
    assert not torch.allclose(c1[0, :L], c1[1, :L])  # C_def differs per defect type
    assert torch.equal(c2[0, :L], c2[1, :L])  # C_m is one prompt
    p = tokens.prompts("bottle", "broken_large")
    assert p["def"].endswith("broken large defect") and p["bg"].endswith(" bottle")
    assert rare_identifier("bottle") == rare_identifier("bottle") != rare_identifier("cable")
    pos = tokens.defect_positions("bottle", "broken_large")
    n_words = len(tok(p["def"], add_special_tokens=False).input_ids)
    assert pos == list(range(1, 1 + n_words))  # after BOS, inside the C_def group
    ids = tok([p["def"]], padding="max_length", max_length=L, return_tensors="pt").input_ids[0]
    assert ids[0] == tok.bos_token_id and ids[pos[-1] + 1] == tok.eos_token_id


# -- Eq. 3, 8, 9 and the initialisation -----------------------------------------------------------------
def test_ddim_step_by_hand_and_against_diffusers():
    # z = 1, eps = 0.5, alpha_t = 0.25, alpha_prev = 0.64: x0 = (1 - sqrt(0.75) * 0.5) / 0.5
    # = 2 - sqrt(0.75) = 1.1339746; z_prev = 0.8 * 1.1339746 + 0.6 * 0.5 = 1.2071797
    out = ddim_step(torch.tensor(1.0), torch.tensor(0.5), 0.25, 0.64)
    assert abs(out.item() - 1.2071797) < 1e-6
    sched = make_scheduler("ddim")
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    z, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    t = int(sched.timesteps[3])
    a_t, a_prev = sched.alphas_cumprod[t].item(), sched.alphas_cumprod[int(sched.timesteps[4])].item()
    assert torch.allclose(ddim_step(z, eps, a_t, a_prev), sched.step(eps, t, z).prev_sample, atol=1e-5)


def test_masked_inversion_step_by_hand_and_as_the_loops_update():
    # background element: z = 1, eps = 0.5, alpha_prev = 0.64, alpha_t = 0.25:
    # 0.5 * (1 / 0.8 + (sqrt(3) - sqrt(0.5625)) * 0.5) = 0.5 * (1.25 + 0.4910254) = 0.8705127
    # defect element (m = 1): z = 0 stays 0 whatever its noise
    z = torch.tensor([1.0, 0.0])
    out = masked_inversion_step(z, torch.tensor([0.5, 0.7]), torch.tensor([0.0, 1.0]), 0.64, 0.25)
    assert torch.allclose(out, torch.tensor([0.8705127, 0.0]), atol=1e-6)
    inverse = DDIMInverseScheduler.from_config(make_scheduler("ddim").config)
    inverse.set_timesteps(10)
    g = torch.Generator().manual_seed(2)
    z, eps = torch.randn(1, 2, 4, 4, generator=g), torch.randn(1, 2, 4, 4, generator=g)
    m = (torch.rand(1, 1, 4, 4, generator=g) > 0.5).float()
    t = int(inverse.timesteps[4])
    a_prev, a_t = inverse.alphas_cumprod[t - 100].item(), inverse.alphas_cumprod[t].item()
    assert torch.allclose(masked_inversion_step(z, eps, m, a_prev, a_t), inverse.step((1 - m) * eps, t, z).prev_sample,
                          atol=1e-5)


def test_composite_noise_and_initial_latent_by_hand():
    m = torch.tensor([1.0, 0.0, 1.0])
    # Eq. 9: defect elements take the C1 noise, background elements the C2 noise
    assert torch.equal(composite_noise(m, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([7.0, 8.0, 9.0])),
                       torch.tensor([1.0, 8.0, 3.0]))
    # z_T* = z~_T^m + m * eps: background keeps the inverted latent, the defect area gets eps
    assert torch.equal(initial_latent(torch.tensor([0.0, 4.0, 0.0]), m, torch.tensor([0.5, 0.6, -0.7])),
                       torch.tensor([0.5, 4.0, -0.7]))


# -- Eq. 13: mask refinement -----------------------------------------------------------------------------
def test_refine_mask_thresholds_the_upsampled_map_inside_the_given_mask():
    # bilinear 2 -> 4 (half-pixel centres) weights source row 0 by (1, 3/4, 1/4, 0) along each axis,
    # so a map with 1 at the top-left cell becomes the outer product of (1, .75, .25, 0) with itself
    defect_map = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 0, :3] = 1
    mask[..., 1, 0] = 1  # given mask: (0,0), (0,1), (0,2), (1,0)
    refined = refine_mask(defect_map, mask)
    # >= 1/2: (0,0)=1, (0,1)=.75, (1,0)=.75, (1,1)=.5625; (1,1) is outside the mask, (0,2)=.25 too low
    expected = torch.zeros(1, 1, 4, 4)
    expected[..., 0, :2] = 1
    expected[..., 1, 0] = 1
    assert torch.equal(refined, expected)
    # 0.6 at the top-left cell: only (0,0) = 0.6 passes; (0,1) = (1,0) = 0.75 * 0.6 = 0.45 do not
    # (a nearest-neighbour upsampling would keep the whole 2x2 block)
    single = torch.zeros(1, 1, 4, 4)
    single[..., 0, 0] = 1
    assert torch.equal(refine_mask(torch.tensor([[[0.6, 0.0], [0.0, 0.0]]]), mask), single)
    assert torch.equal(refine_mask(torch.full((1, 1, 2, 2), 0.5), mask), mask)  # the threshold is inclusive
    assert refine_mask(torch.full((1, 1, 2, 2), 0.49), mask).sum() == 0


def test_refined_mask_is_a_subset_of_the_given_mask_from_recorded_attention(tiny_backbone):
    unet = tiny_backbone.unet
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(2, unet.config.in_channels, 8, 8, generator=g), torch.randn(2, 10, 32, generator=g)
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, 2:6, 1:5] = 1
    mask[1, :, 5:, 3:] = 1
    with torch.no_grad(), MaskedCrossAttention(record=True).attach(unet) as hook:
        hook.set(mask, n_inside=5)
        unet(x, 500, encoder_hidden_states=ctx)
        defect_map = hook.token_map([1, 2, 3], (8, 8)) * 3  # sum over three C_def words
    refined = refine_mask(defect_map, torch.nn.functional.interpolate(mask, size=(32, 32)), threshold=0.2)
    big = torch.nn.functional.interpolate(mask, size=(32, 32))
    assert refined.sum() > 0 and (refined * (1 - big)).sum() == 0


# -- Eq. 5-7: the disentanglement loss -------------------------------------------------------------------
def test_noised_latents_by_hand_share_the_noise_and_mask_it():
    # alpha = 0.25: z_t = 0.5 z0 + sqrt(0.75) eps; z_t^m = 0 where m = 1 (noise masked too)
    z0, eps, m = torch.tensor([[2.0, -4.0]]), torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 1.0]])
    z_t, z_t_m = noised_latents(z0, m, eps, torch.tensor(0.25))
    s = math.sqrt(0.75)
    assert torch.allclose(z_t, torch.tensor([[1.0 + s, -2.0 + 2 * s]]))
    assert torch.allclose(z_t_m, torch.tensor([[1.0 + s, 0.0]]))


def test_disentanglement_loss_by_hand():
    # four latent elements, m = (1, 0, 1, 0); eps = (1, 1, 1, 1)
    # C1 errors (1 - e1) = (1, 5, -1, 5): matching sees elements 0, 2 -> (1 + 1) / 4 = 0.5
    # C2 errors (1 - e2) = (9, 2, 9, -1): regulariser sees elements 1, 3 -> (4 + 1) / 4 = 1.25
    m = torch.tensor([1.0, 0.0, 1.0, 0.0])
    out = disentanglement_loss(torch.ones(4), torch.tensor([0.0, -4.0, 2.0, -4.0]), torch.tensor([-8.0, -1.0, -8.0, 2.0]), m)
    assert out["loss_matching"].item() == pytest.approx(0.5)
    assert out["loss_regulariser"].item() == pytest.approx(1.25)
    assert out["loss"].item() == pytest.approx(1.75)


def test_badg_loss_feeds_the_two_passes_and_vanishes_for_the_true_noise():
    """A denoiser that returns the true eps has zero loss (Lemma 3.1's premise), and then
    (1 - m) z0 = (1 - m) (z_t^m - sqrt(1 - alpha) eps_C2) / sqrt(alpha) (Lemma 3.1)."""
    g = torch.Generator().manual_seed(4)
    z0, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    m = (torch.rand(2, 1, 4, 4, generator=g) > 0.5).float()
    abar = make_scheduler("ddim").alphas_cumprod
    steps = torch.tensor([100, 700])
    seen = {}

    def oracle(z_t, z_t_m, t):
        seen.update(z_t=z_t, z_t_m=z_t_m, t=t)
        return eps.clone(), eps * (1 - m) + 5.0 * m  # garbage in the defect area of the C2 pass is ignored

    out = badg_loss(oracle, z0, m, eps, steps, abar)
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-12)
    a = abar[steps].view(-1, 1, 1, 1)
    assert torch.allclose(seen["z_t"], a.sqrt() * z0 + (1 - a).sqrt() * eps)
    assert torch.equal(seen["z_t_m"], (1 - m) * seen["z_t_m"]) and torch.allclose(seen["z_t_m"], (1 - m) * seen["z_t"])
    eps_c2 = eps * (1 - m) + 5.0 * m  # what the C2 pass returned
    recon = (1 - m) * (seen["z_t_m"] - (1 - a).sqrt() * eps_c2) / a.sqrt()
    assert torch.allclose(recon, (1 - m) * z0, atol=1e-5)
    assert badg_loss(lambda z, zm, t: (eps + 1.0, eps), z0, m, eps, steps, abar)["loss_matching"] > 0


# -- Sec. 3.2: masked inversion, composite sampling, Proposition 3.3 -------------------------------------
class ToyDenoiser(torch.nn.Module):
    """A nonlinear denoiser that mixes every position (3x3 conv and a global mean), so any leak of
    the defect area into the background pass would show."""

    def __init__(self, seed: int, channels: int = 2):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(channels, channels, 3, 3, generator=g) * 0.3

    def forward(self, z, t):
        mixed = torch.nn.functional.conv2d(z, self.weight, padding=1)
        return torch.tanh(mixed) * (1 + float(t) / 1000) + z.mean((-2, -1), keepdim=True)


def invert(denoise, z0, m, inverse, trajectory=None):
    """The shared masked DDIM inversion (Eq. 8) with a denoise(z, t) that ignores the context."""
    z_T, path = masked_ddim_inversion(z0, m, lambda z, t, c: denoise(z, t), inverse, inverse.num_inference_steps,
                                      return_trajectory=True)
    if trajectory is not None:
        trajectory.extend(path)
    return z_T


def _schedulers(steps=10):
    sampler = make_scheduler("ddim")
    sampler.set_timesteps(steps)
    inverse = DDIMInverseScheduler.from_config(sampler.config)
    inverse.set_timesteps(steps)
    return sampler, inverse


def _normal_and_mask():
    g = torch.Generator().manual_seed(5)
    z0 = torch.randn(1, 2, 6, 6, generator=g)
    m = torch.zeros(1, 1, 6, 6)
    m[..., 1:4, 2:5] = 1
    return z0, m, torch.randn(1, 2, 6, 6, generator=g)


def test_masked_inversion_keeps_the_defect_area_zero_and_inverts_a_constant_denoiser():
    sampler, inverse = _schedulers()
    z0, m, _ = _normal_and_mask()
    path = []
    z_T = invert(ToyDenoiser(0), z0, m, inverse, trajectory=path)
    assert len(path) == 11 and all((z * m).abs().max() == 0 for z in path)
    assert (z_T * (1 - m)).abs().max() > 0
    # a z-independent, t-independent noise makes the DDIM ODE step exact both ways
    pattern = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(6))
    const = lambda z, t: pattern  # noqa: E731
    z_T = invert(const, z0, m, inverse)
    assert torch.allclose(masked_ddim_sampling(const, z_T, m, sampler), (1 - m) * z0, atol=1e-4)


def test_proposition_3_3_background_path_is_independent_of_the_defect():
    """Prop. 3.3: from z_T* = z~_T^m + m eps, the background of every z_t* equals the masked-only
    sampling path z_t^m from z~_T^m (Eq. 26-30), for any C1 denoiser; exactly, up to rounding."""
    sampler, inverse = _schedulers()
    z0, m, eps = _normal_and_mask()
    c1, c2 = ToyDenoiser(1), ToyDenoiser(2)
    z_inv = invert(c2, z0, m, inverse)
    z_T = initial_latent(z_inv, m, eps)
    path = []
    z_star = composite_ddim_sampling(lambda z, zm, t: (c1(z, t), c2(zm, t)), z_T, m, sampler, trajectory=path)
    reference, z = [z_inv], z_inv  # z_t^m: DDIM steps of z~_T^m with the C2 noise masked by (1 - m)
    for t in sampler.timesteps:
        z = sampler.step((1 - m) * c2(z, t), t, z).prev_sample
        reference.append(z)
    for z_t_star, z_t_m in zip(path, reference):
        assert torch.allclose((1 - m) * z_t_star, z_t_m, atol=1e-5)
    assert (m * (z_star - z0)).abs().max() > 0.1  # the defect area is generated, not copied
    # Eq. 9 as printed (the C2 pass sees the defect area) lets the defect leak into the background
    full = composite_ddim_sampling(lambda z, zm, t: (c1(z, t), c2(zm, t)), z_T, m, sampler, c2_input="full")
    assert ((1 - m) * (full - reference[-1])).abs().max() > 1e-2


def test_background_of_the_normal_image_is_reconstructed_when_inversion_is_exact():
    """With a C2 noise for which DDIM inversion is exact, z_0* keeps the normal latent outside m
    whatever the C1 pass does inside (Sec. 3.2's claim)."""
    sampler, inverse = _schedulers()
    z0, m, eps = _normal_and_mask()
    pattern = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(7))
    c1 = ToyDenoiser(3)
    z_T = initial_latent(invert(lambda z, t: pattern, z0, m, inverse), m, eps)
    z_star = composite_ddim_sampling(lambda z, zm, t: (c1(z, t), pattern), z_T, m, sampler)
    assert torch.allclose((1 - m) * z_star, (1 - m) * z0, atol=1e-4)
    assert (m * (z_star - z0)).abs().max() > 0.1


def test_inversion_evaluates_the_noise_at_the_level_of_the_latent_it_is_given():
    # 10 of 1000 steps: the inversion steps to levels 0, 100, ..., 900. Eq. 8 evaluates the noise at
    # the level of the latent it is given: the clean latent (U-Net timestep 0), then 0, 100, ..., 800
    _, inverse = _schedulers()
    z0, m, _ = _normal_and_mask()
    seen = []
    invert(lambda z, t: seen.append(int(t)) or torch.zeros_like(z), z0, m, inverse)
    assert seen == [0, 0, 100, 200, 300, 400, 500, 600, 700, 800]


# -- the model on the tiny backbone ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def badg_model():
    from generators.badg.torch_model import BadgModel
    from generators.diffusion.backbone import load_backbone

    torch.manual_seed(0)
    return BadgModel(load_backbone("tiny"))


def _model_inputs(model, seed=8):
    g = torch.Generator().manual_seed(seed)
    c = model.unet.config.in_channels
    z0, eps = torch.randn(2, c, 8, 8, generator=g), torch.randn(2, c, 8, 8, generator=g)
    m = torch.zeros(2, 1, 8, 8)
    m[0, :, 2:6, 1:5] = 1
    m[1, :, 4:, 3:7] = 1
    with torch.no_grad():
        c1, c2 = model.contexts(["bottle", "cable"], ["broken_large", "bent_wire"])
    return z0, eps, m, c1, c2


def test_model_runs_both_passes_in_one_call_and_trains_the_unet_only(badg_model):
    model = badg_model
    z0, eps, m, c1, c2 = _model_inputs(model)
    assert c1.shape[1] == 2 * model.backbone.max_length
    with torch.no_grad():
        eps1, eps2 = model.denoise_pair(z0, (1 - m) * z0, 300, c1, c2, m)
        assert torch.allclose(eps1, model.denoise(z0, 300, c1, m), atol=1e-5)
        assert torch.allclose(eps2, model.denoise((1 - m) * z0, 300, c2, m), atol=1e-5)
    model.train()
    out = badg_loss(lambda zt, ztm, t: model.denoise_pair(zt, ztm, t, c1, c2, m), z0, m, eps, torch.tensor([10, 900]),
                    make_scheduler("ddim").alphas_cumprod)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.unet.parameters() if p.requires_grad)
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert not model.text_encoder.training
    model.unet.zero_grad(set_to_none=True)
    model.eval()


def test_model_generation_keeps_the_background_path_and_returns_a_map_for_eq13(badg_model):
    """Proposition 3.3 through the real (tiny) U-Net with the masked attention, and Eq. 13's map."""
    model = badg_model
    z0, eps, m, c1, c2 = _model_inputs(model, seed=9)
    sampler, inverse = _schedulers(steps=4)
    positions = [model.tokens.defect_positions("bottle", "broken_large"), model.tokens.defect_positions("cable", "bent_wire")]
    z_star, defect_map = model.generate(z0, m, eps, c1, c2, sampler, inverse, positions)
    with torch.no_grad():
        c2_pass = lambda z, t: model.denoise(z, t, c2, m)  # noqa: E731
        z_inv = invert(c2_pass, z0, m, inverse)
        background = masked_ddim_sampling(c2_pass, z_inv, m, sampler)
    assert torch.allclose((1 - m) * z_star, background, atol=1e-4)
    assert (m * (z_star - background)).abs().max() > 0
    assert defect_map.shape == (2, 1, 8, 8) and defect_map.min() >= 0 and defect_map.max() <= 1
    assert (defect_map * (1 - resize_mask(m, (8, 8)))).abs().max() < 0.5  # the latent grid's m' is m itself
    refined = refine_mask(defect_map, m, threshold=float(defect_map[m > 0].median()))
    assert refined.sum() > 0 and (refined * (1 - m)).sum() == 0
    assert not model.attention.records and model.attention.record is False


def test_model_defect_map_is_the_c1_pass_attention_on_the_defect_words(badg_model):
    """One sampling step: the map must be the C1 pass's recorded attention at z_T*, summed over
    the C_def words and averaged over layers (recorded here through a separate call)."""
    model = badg_model
    z0, eps, m, c1, c2 = _model_inputs(model, seed=10)
    sampler, inverse = _schedulers(steps=1)
    positions = [model.tokens.defect_positions("bottle", "broken_large"), [1]]
    _, defect_map = model.generate(z0, m, eps, c1, c2, sampler, inverse, positions)
    with torch.no_grad():
        z_T = initial_latent(invert(lambda z, t: model.denoise(z, t, c2, m), z0, m, inverse), m, eps)
        model.attention.record = True
        model.denoise(z_T, sampler.timesteps[0], c1, m)
        model.attention.record = False
        maps = torch.stack([torch.nn.functional.interpolate(r.maps(), size=(8, 8), mode="bilinear") for r in model.attention.records])
        model.attention.clear()
    expected = torch.stack([maps[:, 0, positions[0]].sum(1).mean(0), maps[:, 1, 1].mean(0)])[:, None]
    assert torch.allclose(defect_map, expected, atol=1e-5)
