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
    assert len(prompts.tokens.concepts) == 1 + 4 * 2


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
                                  mask_at, normal_alignment_loss, rmp_loss, ssf_loss)

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
