"""SeaS math on small tensors and the tiny backbone: UA prompt and learning-rate groups, DA / NA /
total loss (planted attention maps through the project's cross-attention hook), RMP focal loss
(Eq. 10), the RMP branch and its MRMs, the extended noise schedule and mask binarization. Every
expected value is computed by hand (numbers in comments) or by a loop, never by the same formula."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from generators.diffusion.backbone import load_backbone  # noqa: E402
from generators.diffusion.tiny import tiny_backbone_folder  # noqa: E402
from generators.diffusion.tokens import LearnedTokens  # noqa: E402
from generators.seas.prompts import TOKEN_LR, UNET_LR, UnbalancedPrompts, param_groups  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def tiny_folder():
    return tiny_backbone_folder()


@pytest.fixture
def backbone(tiny_folder):
    torch.manual_seed(0)
    return load_backbone("tiny", freeze=False)  # SeaS fine-tunes the whole U-Net


@pytest.fixture
def prompts(backbone):
    tokens = LearnedTokens(backbone.tokenizer, backbone.text_encoder, per_concept=1, init_word="defect")
    return UnbalancedPrompts(tokens, "bottle", ["broken", "contamination"])


# -- UA prompt (A.3) ---------------------------------------------------------------------------------
def test_ua_prompt_has_one_ob_and_four_df_tokens_per_type(prompts):
    # concept 0 is <ob>; <df_k> is concept k, so type n = 2 uses <df_5> .. <df_8> (4n-3 .. 4n)
    assert prompts.normal_prompt() == "a <sias-0-0>"
    assert prompts.anomaly_prompt("broken") == "a <sias-0-0> with <sias-1-0>, <sias-2-0>, <sias-3-0>, <sias-4-0>"
    assert prompts.anomaly_prompt("contamination") == "a <sias-0-0> with <sias-5-0>, <sias-6-0>, <sias-7-0>, <sias-8-0>"
    assert prompts.tokens.concepts == ["bottle/<ob>/0", "bottle/<df>/1", "bottle/<df>/2", "bottle/<df>/3",
                                       "bottle/<df>/4", "bottle/<df>/5", "bottle/<df>/6", "bottle/<df>/7",
                                       "bottle/<df>/8"]  # checkpoints keep tokens by these names


def test_ua_prompt_token_positions(prompts):
    # tiny byte-level tokenizer: [BOS, 'a', <ob>, 'w', 'i', 't', 'h', <df>, ',', <df>, ',', <df>, ',', <df>, EOS]
    prompt, ob, df = prompts.prompt_positions("broken", 77)
    assert ob == [2] and df == [7, 9, 11, 13]
    ids = prompts.tokens.input_ids([prompt], 77)[0]
    assert ids[7].item() == prompts.tokens.tokenizer.convert_tokens_to_ids("<sias-1-0>")
    assert prompts.prompt_positions(None, 77)[1:] == ([2], [])


def test_ua_prompt_unbalanced_counts_are_parameters(backbone):
    tokens = LearnedTokens(backbone.tokenizer, backbone.text_encoder, per_concept=1)
    p = UnbalancedPrompts(tokens, "wood", ["hole"], n_normal=4, n_anomaly=1)  # Table 9, N' = 4, N = 1
    assert p.normal_prompt() == "a <sias-0-0> <sias-1-0> <sias-2-0> <sias-3-0>"
    assert p.anomaly_prompt("hole").endswith("with <sias-4-0>")
    with pytest.raises(ValueError, match="per_concept=1"):
        UnbalancedPrompts(LearnedTokens(backbone.tokenizer, backbone.text_encoder, per_concept=2), "x", ["y"])


def test_anomaly_prompt_trains_its_own_df_tokens_and_ob_only(prompts):
    tokens = prompts.tokens
    tokens.encode([prompts.anomaly_prompt("contamination")], 77).square().sum().backward()
    moved = [i for i, v in enumerate(tokens.vectors) if v.grad is not None and v.grad.abs().sum() > 0]
    assert moved == [0, 5, 6, 7, 8]


def test_param_groups_whole_unet_and_tokens_at_their_rates(backbone, prompts):
    groups = param_groups(backbone.unet, prompts.tokens)
    assert [g["lr"] for g in groups] == [4e-6, 4e-5] == [UNET_LR, TOKEN_LR]
    unet_ids = {id(p) for p in groups[0]["params"]}
    token_ids = {id(p) for p in groups[1]["params"]}
    assert unet_ids == {id(p) for p in backbone.unet.parameters()} and not unet_ids & token_ids
    assert token_ids == {id(v) for v in prompts.tokens.vectors}
    # Adam's first step moves every parameter by lr * g / |g| = lr (bias-corrected moments, no decay)
    opt = torch.optim.AdamW(groups, weight_decay=0.0, eps=1e-12)
    with torch.no_grad():
        for g in groups:
            for p in g["params"]:
                p.zero_()  # from 0, float32 resolves a 4e-6 step exactly enough
                p.grad = torch.ones_like(p)
    opt.step()
    for g, lr in zip(groups, (4e-6, 4e-5)):
        for p in g["params"]:
            assert torch.allclose(-p.detach(), torch.full_like(p, lr), rtol=1e-4, atol=0)


# -- DA loss (Eq. 3, Eq. 8) on planted attention maps ------------------------------------------------
from generators.diffusion.attention import AttentionRecord, CrossAttentionHook  # noqa: E402
from generators.seas.loss import (da_loss, da_loss_from_hook, da_sizes, epsilon_loss, focal_loss,  # noqa: E402
                                  mask_at, min_max, normal_alignment_loss, rmp_loss, ssf_loss)

BOS, OB, DF1, DF2 = 0, 1, 2, 3  # planted prompt: [BOS, <ob>, <df_1>, <df_2>] (N = 2 keeps it small)


def _planted_probs(ob, df1, df2, wiggle):
    """(1, 2 heads, 4 pixels, 4 tokens): head means are ob/df1/df2; the heads differ by +-wiggle on
    <ob> (Eq. 8 averages heads, so the wiggle must cancel); BOS takes the rest of each softmax row."""
    heads = []
    for sign in (1, -1):
        o = torch.tensor(ob) + sign * torch.tensor(wiggle)
        a, b = torch.tensor(df1), torch.tensor(df2)
        heads.append(torch.stack([1 - o - a - b, o, a, b], -1))
    return torch.stack(heads)[None]


def _planted_hook():
    """2x2 grid (pixels p0 p1 / p2 p3) planted twice in the encoder; a decoder layer at the same
    size and an encoder layer at another size must be ignored. Half-scale numbers: the min-max
    rescaling makes the scale irrelevant."""
    hook = CrossAttentionHook()
    enc = _planted_probs([0.05, 0.15, 0.25, 0.10], [0.1, 0.2, 0.0, 0.3], [0.1, 0.1, 0.0, 0.1], [0.02, -0.02, 0.02, -0.02])
    # the two encoder layers at 2x2 differ (+-0.01 on df1 at p0, p1) but average to `enc`
    shift = torch.zeros_like(enc)
    shift[..., 0, DF1], shift[..., 0, BOS] = 0.01, -0.01
    hook.records.append(AttentionRecord("down_blocks.2.attentions.0.transformer_blocks.0.attn2", enc + shift, (2, 2)))
    hook.records.append(AttentionRecord("down_blocks.2.attentions.1.transformer_blocks.0.attn2", enc - shift, (2, 2)))
    noise = _planted_probs([0.5] * 4, [0.0, 0.4, 0.0, 0.0], [0.1] * 4, [0.0] * 4)
    hook.records.append(AttentionRecord("up_blocks.1.attentions.0.transformer_blocks.0.attn2", noise, (2, 2)))
    big = torch.full((1, 2, 16, 4), 0.25)
    big[..., 0, DF1], big[..., 0, BOS] = 0.5, 0.0
    hook.records.append(AttentionRecord("down_blocks.1.attentions.0.transformer_blocks.0.attn2", big, (4, 4)))
    return hook


def _planted_mask():
    m = torch.zeros(1, 1, 4, 4)  # image-level mask; at 2x2 it marks p1 (top right) and p3 (bottom right)
    m[0, 0, 0, 3] = 1  # one pixel is enough for its cell
    m[0, 0, 2:, 2:] = 1
    return m


def test_mask_at_marks_a_cell_when_any_pixel_is_anomalous():
    assert mask_at(_planted_mask(), (2, 2)).flatten().tolist() == [0, 1, 0, 1]
    assert da_sizes((64, 64)) == [(32, 32), (16, 16)] and da_sizes((8, 8), (2,)) == [(4, 4)]


def test_min_max_rescales_each_sample_on_its_own():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 4.0]], [[1.0, 1.0], [3.0, 1.0]]])
    assert min_max(maps).flatten().tolist() == [0.0, 0.25, 0.5, 1.0, 0.0, 0.0, 1.0, 0.0]


def test_da_loss_on_planted_maps_matches_hand_computation():
    hook = _planted_hook()
    ob_pos, df_pos = torch.tensor([[OB]]), torch.tensor([[DF1, DF2]])
    out = da_loss_from_hook(hook, _planted_mask(), ob_pos, df_pos, [(2, 2)])
    # Abar_df = mean(df1, df2) = [0.1, 0.15, 0, 0.2] -> min-max [0.5, 0.75, 0, 1]; M = [0, 1, 0, 1]
    # first term: (0.25 + 0.0625 + 0 + 0) / 4 = 0.078125
    # A_ob = [0.05, 0.15, 0.25, 0.10] -> min-max [0, 0.5, 1, 0.25]; inside M (p1, p3): (0.25 + 0.0625) / 2 = 0.15625
    assert out["da_2"].item() == pytest.approx(0.078125 + 0.15625, abs=1e-6)
    assert out["da"].item() == pytest.approx(0.234375, abs=1e-6)
    # without rescaling: first term ((0.1)^2 + (0.85)^2 + 0 + (0.8)^2) / 4; second ((0.15)^2 + (0.1)^2) / 2
    raw = da_loss(hook.records, _planted_mask(), ob_pos, df_pos, [(2, 2)], normalize=False)["da"]
    assert raw.item() == pytest.approx((0.01 + 0.7225 + 0.64) / 4 + (0.0225 + 0.01) / 2, abs=1e-6)


def test_da_loss_second_term_vanishes_without_mask_and_sizes_add_up():
    hook = _planted_hook()
    ob_pos, df_pos = torch.tensor([[OB]]), torch.tensor([[DF1, DF2]])
    empty = da_loss(hook.records, torch.zeros(1, 1, 4, 4), ob_pos, df_pos, [(2, 2)])
    assert empty["da"].item() == pytest.approx((0.25 + 0.5625 + 0 + 1) / 4, abs=1e-6)  # df map squared, no ST
    both = da_loss(hook.records, _planted_mask(), ob_pos, df_pos, [(2, 2), (4, 4)])
    # 4x4: Abar_df is (0.5 + 0.25) / 2 = 0.375 at p0 and 0.25 elsewhere -> min-max: 1 at p0, 0 elsewhere;
    # the mask has 5 of 16 cells, none at p0: (1 + 5) / 16; <ob> is flat 0.25 -> min-max 0: no ST
    assert both["da_4"].item() == pytest.approx(6 / 16, abs=1e-6)
    assert both["da"].item() == pytest.approx(0.234375 + 6 / 16, abs=1e-6)
    with pytest.raises(ValueError, match="no down_blocks cross-attention layer at"):
        da_loss(hook.records, _planted_mask(), ob_pos, df_pos, [(8, 8)])


def test_da_loss_reads_per_sample_token_positions():
    hook = CrossAttentionHook()
    one = _planted_hook().records[0].probs
    swapped = one[..., [BOS, DF2, DF1, OB]]  # sample 2's prompt has <ob> at position 3
    hook.records.append(AttentionRecord("down_blocks.2.attentions.0.transformer_blocks.0.attn2",
                                        torch.cat([one, swapped]), (2, 2)))
    mask = _planted_mask().repeat(2, 1, 1, 1)
    out = da_loss(hook.records, mask, torch.tensor([[OB], [3]]), torch.tensor([[DF1, DF2], [2, 1]]), [(2, 2)])
    ref = da_loss([AttentionRecord("down_blocks.2.attn2", one, (2, 2))], mask[:1],
                  torch.tensor([[OB]]), torch.tensor([[DF1, DF2]]), [(2, 2)])
    assert out["da"].item() == pytest.approx(ref["da"].item(), abs=1e-6)


def test_da_loss_through_the_hook_on_the_tiny_unet_reaches_unet_and_tokens(backbone, prompts):
    unet, tokens = backbone.unet, prompts.tokens
    prompt, ob, df = prompts.prompt_positions("broken", 77)
    ctx = tokens.encode([prompt], 77)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, backbone.latent_channels, 8, 8, generator=g)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 8:40, 16:48] = 1
    with CrossAttentionHook(detach=False).attach(unet) as hook:
        unet(x, 500, encoder_hidden_states=ctx)
        out = da_loss_from_hook(hook, mask, torch.tensor([ob]), torch.tensor([df]), da_sizes((8, 8), (2,)))
    out["da"].backward()
    assert torch.isfinite(out["da"]) and out["da"].item() > 0
    assert all(tokens.vectors[i].grad.abs().sum() > 0 for i in (0, 1, 2, 3, 4))
    assert unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k.weight.grad.abs().sum() > 0


# -- NA and total SSF loss ------------------------------------------------------------------------------
def test_na_and_ssf_total_loss_hand_values():
    eps = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    pred = torch.tensor([[0.0, -1.0], [0.5, 2.0]])
    assert epsilon_loss(eps, pred).item() == pytest.approx((1 + 0 + 0 + 4) / 4)
    eps_ob, pred_ob = torch.tensor([3.0, 0.0]), torch.tensor([1.0, 1.0])
    assert normal_alignment_loss(eps_ob, pred_ob).item() == pytest.approx((4 + 1) / 2)
    out = ssf_loss(eps, pred, eps_ob, pred_ob, torch.tensor(0.25))
    assert out["loss"].item() == pytest.approx(1.25 + 0.25 + 2.5)
    assert (out["diffusion"].item(), out["na"].item()) == (pytest.approx(1.25), pytest.approx(2.5))


# -- RMP loss (Eq. 10) ------------------------------------------------------------------------------
FL_POS = 0.0625 * math.log(4 / 3)  # logits (0, ln 3): p = 3/4 for the anomaly channel; target 1: (1/4)^2 (-ln 3/4)
FL_NEG = 0.5625 * math.log(4)  # target 0: p_t = 1/4, (3/4)^2 (-ln 1/4)


def test_focal_loss_is_the_two_class_softmax_focal_loss():
    logits = torch.zeros(1, 2, 1, 2)
    logits[:, 1] = math.log(3)
    assert focal_loss(logits, torch.tensor([[[[1.0, 0.0]]]])).item() == pytest.approx((FL_POS + FL_NEG) / 2, abs=1e-6)
    shifted = logits + 5.0  # softmax ignores a shift common to both channels
    assert focal_loss(shifted, torch.ones(1, 1, 1, 2)).item() == pytest.approx(FL_POS, abs=1e-6)
    assert focal_loss(logits, torch.ones(1, 1, 1, 2), gamma=0).item() == pytest.approx(math.log(4 / 3), abs=1e-6)


def test_rmp_loss_four_terms_with_zero_masks_for_normal_images():
    # 2 images: anomaly (mask: left column of a 2x2 image) and normal (its given mask is ignored: all zero)
    refined = torch.zeros(2, 2, 2, 2)
    refined[:, 1] = math.log(3)  # p = 3/4 everywhere
    coarse = torch.zeros(2, 2, 1, 1)
    coarse[:, 1] = math.log(3)
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    out = rmp_loss(coarse, refined, mask, torch.tensor([False, True]))
    assert out["refined_df"].item() == pytest.approx((2 * FL_POS + 2 * FL_NEG) / 4, abs=1e-6)
    assert out["refined_ob"].item() == pytest.approx(FL_NEG, abs=1e-6)
    assert out["coarse_df"].item() == pytest.approx(FL_POS, abs=1e-6)  # the 1x1 cell holds defect pixels
    assert out["coarse_ob"].item() == pytest.approx(FL_NEG, abs=1e-6)
    assert out["loss"].item() == pytest.approx((FL_POS + FL_NEG) / 2 + FL_NEG + FL_POS + FL_NEG, abs=1e-6)
    only_df = rmp_loss(coarse[:1], refined[:1], mask[:1], torch.tensor([False]))
    assert set(only_df) == {"coarse_df", "refined_df", "loss"}  # w/o NIA (Table 16): terms 2 and 4 absent


# -- extended schedule (A.3, t = 1500) ------------------------------------------------------------------
from generators.seas.torch_model import (CoarseFeatureExtraction, MaskRefinementModule,  # noqa: E402
                                         RefinedMaskPrediction, anomaly_probability, binarize_mask,
                                         extended_alphas_cumprod, extended_schedule, noise_to_extended_timestep,
                                         unet_decoder_features, vae_decoder_features)


def test_extended_schedule_hand_values_on_three_steps():
    # sqrt(beta) linear from 0.1 to 0.2 over 3 steps: betas 0.01, 0.0225, 0.04
    abar = extended_alphas_cumprod(0.01, 0.04, 3)
    assert abar.tolist() == pytest.approx([0.99, 0.99 * 0.9775, 0.99 * 0.9775 * 0.96], abs=1e-12)
    # linear in beta: 0.01, 0.025, 0.04
    assert extended_alphas_cumprod(0.01, 0.04, 3, "linear").tolist() == pytest.approx([0.99, 0.96525, 0.92664], abs=1e-12)
    with pytest.raises(ValueError, match="cannot extend"):
        extended_alphas_cumprod(0.01, 0.04, 3, "squaredcos_cap_v2")


def test_extended_schedule_of_sd_at_1500_steps():
    config = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
    abar = extended_schedule(config)
    assert len(abar) == 1500 and abar[0].item() == pytest.approx(1 - 0.00085, abs=1e-12)
    lo, hi = math.sqrt(0.00085), math.sqrt(0.012)
    prod = 1.0
    for k in range(1500):  # the product written out, beta_k = (lo + k (hi - lo) / 1499)^2
        prod *= 1 - (lo + k * (hi - lo) / 1499) ** 2
        if k == 1:
            assert abar[1].item() == pytest.approx(prod, rel=1e-12)
    assert abar[1499].item() == pytest.approx(prod, rel=1e-9)
    assert abar[1499].item() == pytest.approx(3.183e-4, rel=1e-3)  # more noise than T = 1000 gives ...
    from diffusers import DDPMScheduler

    trained = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    assert trained[999].item() == pytest.approx(4.660e-3, rel=1e-3)  # ... (abar_1000 of SD)
    assert torch.allclose(extended_schedule(config, 1000).float(), trained, rtol=1e-5)  # 1000 steps: SD itself


def test_normal_image_noised_to_the_extended_timestep():
    abar = extended_alphas_cumprod(0.01, 0.04, 3)  # abar_3 = 0.929016, abar_2 = 0.967725
    x0, eps = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert noise_to_extended_timestep(x0, eps, abar, t=3).tolist() == pytest.approx([0.963855, 0.266428], abs=1e-6)
    assert noise_to_extended_timestep(x0, eps, abar, t=2).tolist() == pytest.approx([0.983730, 0.179652], abs=1e-6)


# -- mask binarization (Table 18) ---------------------------------------------------------------------
def test_mask_is_the_mean_of_the_last_steps_above_0_2():
    logits = torch.zeros(1, 2, 1, 1)
    logits[:, 1] = math.log(3)
    assert anomaly_probability(logits).item() == pytest.approx(0.75)
    steps = [torch.tensor([0.10, 0.40, 0.25, 0.50]), torch.tensor([0.20, 0.10, 0.15, 0.0]),
             torch.tensor([0.27, 0.00, 0.26, 0.0])]  # means 0.19, 0.1667, 0.22, 0.1667
    assert binarize_mask(steps).tolist() == [0, 0, 1, 0]
    assert binarize_mask(steps, threshold=0.1).tolist() == [1, 1, 1, 1]
    assert binarize_mask(steps[:1]).tolist() == [0, 1, 1, 1]


# -- RMP branch (A.5) --------------------------------------------------------------------------------
def _set_block(block, first, middle, last, bias=0.0):
    """A 1-channel ConvBlock as three scalar weights (the 3x3 kernel only at its centre) and the
    last BN's bias; in eval mode each BN is the identity plus its bias."""
    with torch.no_grad():
        for conv_bn_relu in block:
            conv_bn_relu[0].weight.zero_()
        block[0][0].weight.fill_(first)
        block[1][0].weight[..., 1, 1] = middle
        block[2][0].weight.fill_(last)
        block[2][1].bias.fill_(bias)


def test_mrm_chains_residual_blocks_and_gates_the_vae_feature():
    mrm = MaskRefinementModule(channels=1, vae_channels=1, blocks=2).eval()
    _set_block(mrm.blocks[0], 0.0, 0.0, 0.0, bias=1.0)  # B_1(r) = 1
    _set_block(mrm.blocks[1], 1.0, 1.0, 0.5)  # B_2(r) = 0.5 r for r > 0
    with torch.no_grad():
        mrm.project[0].weight.fill_(1.0)  # P(v) = relu(v)
    coarse = torch.full((1, 1, 1, 1), 2.0)  # upsampled to the VAE grid: x = 2 everywhere
    v = torch.tensor([[[[1.0, -1.0], [0.0, 3.0]]]])
    # r_1 = x + 1 = 3; r_2 = r_1 + 0.5 r_1 = 4.5; out = relu(v) * 4.5 + x
    with torch.no_grad():
        out = mrm(coarse, v)
    assert out.flatten().tolist() == pytest.approx([6.5, 2.0, 2.0, 15.5], rel=1e-4)  # BN divides by sqrt(1 + 1e-5)


def test_coarse_features_upsample_f2_to_f3_and_concatenate():
    cfe = CoarseFeatureExtraction(unet_channels=(2, 1), channels=(1, 1), attention_layers=0)
    with torch.no_grad():
        cfe.convs[0].weight.fill_(1.0)  # sum of F_2's two channels
        cfe.convs[1].weight.fill_(2.0)  # twice F_3
    f2 = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    f3 = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    with torch.no_grad():
        out = cfe([f2, f3])
    assert out.shape == (1, 2, 2, 2)
    assert out[0, 0].flatten().tolist() == [3.0] * 4 and out[0, 1].flatten().tolist() == [2.0, 4.0, 6.0, 8.0]


def test_rmp_paper_channels_coarse_192_and_two_channel_masks():
    torch.manual_seed(0)
    rmp = RefinedMaskPrediction()  # SD v1.4 channels, 4 attention layers; small grids keep it fast
    unet = [torch.randn(2, 1280, 2, 2), torch.randn(2, 640, 4, 4)]  # F_2, F_3 at 1/16 of their size
    vae = [torch.randn(2, 512, 8, 8), torch.randn(2, 512, 16, 16), torch.randn(2, 256, 32, 32)]
    assert rmp.coarse(unet).shape == (2, 192, 4, 4)
    coarse, refined = rmp(unet, vae)
    assert coarse.shape == (2, 2, 4, 4) and refined.shape == (2, 2, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 8:16, 8:16] = 1
    rmp_loss(coarse, refined, mask, torch.tensor([False, True]))["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rmp.parameters())


def test_rmp_learns_a_planted_mask():
    """A few Adam steps on Eq. 10 make the small branch find a square that a VAE feature shows."""
    torch.manual_seed(0)
    rmp = RefinedMaskPrediction(unet_channels=(8, 4), coarse_channels=(4, 4), vae_channels=(4,), attention_layers=1,
                                heads=2, norm_groups=4)
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, :, 4:10, 6:12] = 1
    g = torch.Generator().manual_seed(0)
    unet = [torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 4, 8, 8, generator=g)]
    vae = [torch.randn(2, 4, 16, 16, generator=g) + 3 * mask]
    opt = torch.optim.Adam(rmp.parameters(), lr=5e-3)
    for _ in range(60):
        opt.zero_grad()
        loss = rmp_loss(*rmp(unet, vae), mask, torch.tensor([False, True]))["loss"]
        loss.backward()
        opt.step()
    with torch.no_grad():
        predicted = binarize_mask([anomaly_probability(rmp.eval()(unet, vae)[1])])
    assert (predicted == mask).float().mean() > 0.95


def test_decoder_feature_hooks_read_f_y_and_vae_levels(backbone):
    unet = backbone.unet
    x, ctx = torch.randn(1, backbone.latent_channels, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        ref = unet(x, 10, encoder_hidden_states=ctx).sample
        with unet_decoder_features(unet, (1, 2)) as f:
            out = unet(x, 10, encoder_hidden_states=ctx).sample
        assert torch.equal(out, ref)
    assert [tuple(o.shape) for o in f.outputs] == [(1, 64, 8, 8), (1, 32, 8, 8)]  # tiny: up_blocks 0, 1
    assert not unet.up_blocks[0]._forward_hooks  # removed on exit
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4)
    with torch.no_grad(), vae_decoder_features(vae, (0, 1)) as v:
        vae.decode(torch.randn(1, 4, 8, 8))
    assert [tuple(o.shape) for o in v.outputs] == [(1, 16, 16, 16), (1, 8, 16, 16)]


def test_sd_shaped_unet_gives_the_papers_da_layers_and_rmp_features():
    """A U-Net with SD v1's block layout (small channels 8/16/32/32 for 320/640/1280/1280): the DA
    grids 1/2 and 1/4 of the latent are encoder levels 2 and 3, F_2 has the 3rd-level channels at
    1/2 of the latent (SD: 1280 @ 32x32) and F_3 the 2nd-level channels at the latent grid (640 @ 64x64)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=8, attention_head_dim=4, norm_num_groups=4)
    x, ctx = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 8)
    mask = torch.zeros(1, 1, 128, 128)
    mask[..., 32:64, 32:96] = 1
    with CrossAttentionHook(detach=False).attach(unet) as hook, unet_decoder_features(unet) as f:
        unet(x, 10, encoder_hidden_states=ctx)
        sizes = da_sizes((16, 16))
        out = da_loss_from_hook(hook, mask, torch.tensor([[2]]), torch.tensor([[4, 5, 6, 7]]), sizes)
    assert sizes == [(8, 8), (4, 4)] and set(out) == {"da_8", "da_4", "da"}
    encoder = sorted({(r.layer.split(".")[1], r.size) for r in hook.records if r.layer.startswith("down_blocks")})
    assert encoder == [("0", (16, 16)), ("1", (8, 8)), ("2", (4, 4))]  # A^1, A^2, A^3
    assert [tuple(o.shape) for o in f.outputs] == [(1, 32, 8, 8), (1, 16, 16, 16)]  # F_2, F_3
