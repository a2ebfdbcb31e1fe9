"""DefectDiffu's math (generators/defectdiffu/): every expected number below is worked out by hand
in the comment next to it, on tensors small enough to check on paper."""

from __future__ import annotations

import pytest
import torch

from generators.defectdiffu.double_free import (
    P1, P2, W_D_SWEEP, double_free_dropout, double_free_eps, double_free_guidance, guidance_contexts,
    w_d_for_requests, zero_shot_transfer_eps,
)
from generators.defectdiffu.loss import (
    adaptive_attention_loss, attention_ratio, clipped_ratio, defect_region_loss, defect_token_positions,
    mask_prediction_loss, mean_attention_map, resize_mask, total_loss,
)
from generators.defectdiffu.torch_model import (
    BLOCKS_PAPER, DIT_XL_2_512, TINY, MaskGenerationModule, TdiaTransformer, average_last_steps,
    binarize_masks, cell_mask_target, defect_block_maps, isodata_threshold, mask_gray, upsample_cell_mask,
)
from generators.defectdiffu.vocabulary import (
    GOOD, UNIFIED_DEFECTS, PartPrompts, guidance_prompts, part_prompts, unified_defect,
)
from generators.diffusion.attention import AttentionRecord, CrossAttentionHook
from generators.diffusion.denoiser import TransformerDenoiser, as_denoiser


# -- vocabulary (supplement Table 2, Sec. 3.2 templates) ---------------------------------------------
def test_unified_vocabulary_renames_as_table_2():
    assert unified_defect("screw", "scratch_neck") == unified_defect("screw", "scratch_head") == "scratch"
    assert unified_defect("screw", "thread_top") == "thread"
    assert {unified_defect("leather", "glue"), unified_defect("grid", "glue"),
            unified_defect("tile", "oil")} == {"liquid"}
    assert {unified_defect("capsule", "poke"), unified_defect("leather", "poke"),
            unified_defect("cable", "poke_insulation")} == {"hole"}
    assert unified_defect("bottle", "broken_small") == unified_defect("zipper", "broken_teeth") == "broken"
    assert unified_defect("zipper", "fabric_border") == unified_defect("cable", "cut_inner_insulation") == "cut"
    assert unified_defect("transistor", "cut_lead") == "cut"
    assert unified_defect("tile", "gray_stroke") == "color"
    assert unified_defect("cable", "missing_wire") == "missing"
    assert unified_defect("carpet", "metal_contamination") == "metal_contamination"  # unchanged name
    assert unified_defect("bottle", GOOD) == GOOD
    assert unified_defect("demo_tiles", "blob") == "blob"  # outside MVTec AD: own names
    with pytest.raises(KeyError, match="bottle/bogus"):
        unified_defect("bottle", "bogus")
    # MVTec AD: 15 products, 73 defect types (bottle 3, cable 8, capsule 5, carpet 5, grid 5, hazelnut 4,
    # leather 5, metal_nut 4, pill 7, screw 5, tile 5, toothbrush 1, transistor 4, wood 5, zipper 7)
    assert len(UNIFIED_DEFECTS) == 15
    assert sum(len(v) for v in UNIFIED_DEFECTS.values()) == 73


def test_part_prompts_follow_the_templates_with_good_and_null():
    assert part_prompts("metal_nut", "metal_contamination") == PartPrompts(
        "A photo of metal nut", "A photo of metal contamination", "A photo of metal contamination metal nut")
    assert part_prompts(None, GOOD) == PartPrompts("", "A photo of good", "A photo of good")
    g_null, g_p, d_null = guidance_prompts("bottle", "broken")
    assert g_null == PartPrompts("", "A photo of good", "A photo of good")
    assert g_p == PartPrompts("A photo of bottle", "A photo of good", "A photo of good bottle")
    assert d_null == PartPrompts("", "A photo of broken", "A photo of broken")


# -- Algorithm 1: double-free condition dropout -------------------------------------------------------
def test_double_free_dropout_planted_draws():
    products = ["bottle"] * 6
    defects = [GOOD, GOOD, "broken", "broken", "broken", "broken"]
    draws = torch.tensor([
        [0.1, 0.0, 0.0],  # good, line 1 fires: product dropped; lines 3-4 skip good samples
        [0.5, 0.0, 0.0],  # good, nothing fires (draws 1, 2 unused)
        [0.5, 0.1, 0.5],  # defect -> good (line 3)
        [0.5, 0.5, 0.1],  # line 4 drops the product
        [0.5, 0.5, 0.5],  # unchanged
        [0.2, 0.2, 0.2],  # u == p is not < p: unchanged
    ], dtype=torch.float64)  # float64 holds 0.2 exactly as the float p1 (float32 0.2 is slightly larger)
    p, d = double_free_dropout(products, defects, draws)
    assert p == [None, "bottle", "bottle", None, "bottle", "bottle"]
    assert d == [GOOD, GOOD, GOOD, "broken", "broken", "broken"]
    with pytest.raises(ValueError):
        double_free_dropout(products, defects, draws[:2])


def test_double_free_dropout_rates():
    # product dropped: good samples p1 = 0.2; defect samples 1 - 0.8^2 = 0.36; defect -> good: p2 = 0.2
    n = 20000
    gen = torch.Generator().manual_seed(0)
    draws = torch.rand(n, 3, generator=gen)
    p, d = double_free_dropout(["x"] * n, ["cut"] * n, draws)
    assert abs(sum(v is None for v in p) / n - 0.36) < 0.015
    assert abs(sum(v == GOOD for v in d) / n - 0.2) < 0.015
    p, _ = double_free_dropout(["x"] * n, [GOOD] * n, draws)
    assert abs(sum(v is None for v in p) / n - 0.2) < 0.015
    assert (P1, P2) == (0.2, 0.2)


# -- Eq. 4 / Eq. 12: double-free guidance -------------------------------------------------------------
def test_double_free_guidance_planted_epsilons():
    e_gn, e_gp, e_dn = torch.tensor([1.0, -1.0]), torch.tensor([3.0, 0.0]), torch.tensor([-2.0, 5.0])
    # 1 + 2 (3 - 1) + 0.5 (-2 - 1) = 3.5 ; -1 + 2 (0 + 1) + 0.5 (5 + 1) = 4
    out = double_free_guidance(e_gn, e_gp, e_dn, w_p=2.0, w_d=0.5)
    assert torch.allclose(out, torch.tensor([3.5, 4.0]))
    assert torch.equal(double_free_guidance(e_gn, e_gp, e_dn, 1.0, 0.0), e_gp)  # background only
    assert torch.equal(double_free_guidance(e_gn, e_gp, e_dn, 0.0, 1.0), e_dn)  # defect only
    assert torch.equal(double_free_guidance(e_gn, e_gp, e_dn, 0.0, 0.0), e_gn)


PROMPT_IDS = {"": 0, "A photo of bottle": 1, "A photo of good": 2, "A photo of good bottle": 3,
              "A photo of broken": 4, "A photo of broken bottle": 5, "A photo of wood": 6,
              "A photo of good wood": 7, "A photo of crack": 8}


def encode_ids(prompts: list[PartPrompts]) -> torch.Tensor:
    """(B, 3, 1, 1): each part's prompt id, a stand-in for the text encoder."""
    return torch.tensor([[PROMPT_IDS[s] for s in p.as_tuple()] for p in prompts], dtype=torch.float32)[..., None, None]


class PlantedDenoiser:
    """eps = latents + 100 * background id + 10 * defect id + fusion id; counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, latents, t, context):
        self.calls += 1
        assert context.shape[0] == latents.shape[0]
        assert t.dim() == 0 or len(t) == len(latents)
        ids = 100 * context[:, 0] + 10 * context[:, 1] + context[:, 2]  # (B, 1, 1)
        return latents + ids[:, None]


def test_double_free_eps_three_evaluations_in_one_call():
    den = PlantedDenoiser()
    latents = torch.zeros(2, 1, 1, 1)
    contexts = guidance_contexts(encode_ids, ["bottle", "bottle"], ["broken", "broken"])
    # eps(c_g, null) = 0 + 20 + 2 = 22; eps(c_g, c_p) = 100 + 20 + 3 = 123; eps(c_d, null) = 0 + 40 + 4 = 44
    # Eq. 4 with w_p 1.5, w_d 2: 22 + 1.5 * 101 + 2 * 22 = 217.5
    out = double_free_eps(den, latents, torch.tensor([5, 5]), contexts, w_p=1.5, w_d=2.0)
    assert den.calls == 1
    assert torch.allclose(out, torch.full((2, 1, 1, 1), 217.5))


def test_zero_shot_transfer_uses_target_background_and_source_defect():
    den = PlantedDenoiser()
    latents = torch.zeros(1, 1, 1, 1)
    # eps(c_g, null) = 22; eps(c_g, c_T) = 600 + 20 + 7 = 627; eps(c_d^s, null) = 0 + 80 + 8 = 88
    # Eq. 12 with w_p 1, w_d 1: 22 + 605 + 66 = 693
    seen = [("bottle", "crack"), ("bottle", "broken")]
    out = zero_shot_transfer_eps(den, latents, 7, encode_ids, "wood", "crack", 1.0, 1.0, seen=seen)
    assert out.item() == pytest.approx(693.0)
    with pytest.raises(ValueError, match="not a zero-shot"):
        zero_shot_transfer_eps(den, latents, 7, encode_ids, "bottle", "crack", 1.0, 1.0, seen=seen)
    with pytest.raises(ValueError, match="not learned"):
        zero_shot_transfer_eps(den, latents, 7, encode_ids, "wood", "hole", 1.0, 1.0, seen=seen)


def test_w_d_sweep_cycles():
    assert W_D_SWEEP == (0.5, 1.0, 1.5, 2.0, 2.5)
    assert w_d_for_requests(7) == [0.5, 1.0, 1.5, 2.0, 2.5, 0.5, 1.0]
    assert w_d_for_requests(3, [3.0]) == [3.0, 3.0, 3.0]


# -- TDIA: the three-part DiT --------------------------------------------------------------------------
def tiny_model(seed: int = 0) -> TdiaTransformer:
    torch.manual_seed(seed)
    return TdiaTransformer(**TINY).eval()


def test_block_groups_of_the_paper_split():
    with torch.device("meta"):
        model = TdiaTransformer(**DIT_XL_2_512)
    assert BLOCKS_PAPER == (10, 10, 8) and len(model.transformer_blocks) == 28
    assert model.part_blocks("background") == list(range(0, 10))
    assert model.part_blocks("defect") == list(range(10, 20))
    assert model.part_blocks("fusion") == list(range(20, 28))
    assert model.attention_layers("defect")[0] == "transformer_blocks.10.attn2"


def test_each_block_group_cross_attends_its_own_prompt():
    model = tiny_model()  # blocks (2, 2, 1)
    seen = {}
    for i, block in enumerate(model.transformer_blocks):
        block.attn2.register_forward_pre_hook(
            lambda mod, args, kwargs, i=i: seen.__setitem__(i, kwargs["encoder_hidden_states"]), with_kwargs=True)
    ctx = torch.randn(2, 3, 5, 16)
    with torch.no_grad():
        model(torch.randn(2, 4, 8, 8), encoder_hidden_states=ctx, timestep=torch.tensor([1, 2]))
    parts = [0, 0, 1, 1, 2]
    for i, k in enumerate(parts):
        assert torch.equal(seen[i], ctx[:, k]), f"block {i} should read prompt {k}"


def test_plugs_into_the_denoiser_interface():
    model = tiny_model()
    den = as_denoiser(model)
    assert isinstance(den, TransformerDenoiser) and den.cross_attention
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 5, 16)
    with torch.no_grad():
        eps = den(x, 10, ctx)
        full = model(x, encoder_hidden_states=ctx, timestep=torch.tensor([10, 10])).sample
    assert eps.shape == x.shape and full.shape == (2, 8, 8, 8)
    assert torch.equal(eps, full[:, :4])  # learned-variance channels dropped
    # the defect prompt changes the output (cross-attention reaches it)
    ctx2 = ctx.clone()
    ctx2[:, 1] += 1
    with torch.no_grad():
        assert not torch.allclose(den(x, 10, ctx2), eps)


def test_dit_weights_load_and_zero_cross_attention_is_dit_with_the_null_class():
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(1)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                sample_size=8, num_layers=5).eval()
    for block in dit.transformer_blocks[1:]:  # a converted DiT checkpoint: one embedder copied per block
        block.norm1.emb.load_state_dict(dit.transformer_blocks[0].norm1.emb.state_dict())
    model = tiny_model(2)
    missing = model.load_dit(dit)
    assert missing == sorted(f"transformer_blocks.{i}.attn2.{n}.{p}" for i in range(5)
                             for n in ("to_k", "to_out.0", "to_q", "to_v") for p in ("bias", "weight"))
    for block in model.transformer_blocks:  # no text: the added branch adds nothing
        torch.nn.init.zeros_(block.attn2.to_out[0].weight)
        torch.nn.init.zeros_(block.attn2.to_out[0].bias)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 900])
    with torch.no_grad():
        ours = model(x, encoder_hidden_states=torch.randn(2, 3, 5, 16), timestep=t).sample
        ref = dit(x, timestep=t, class_labels=torch.tensor([1000, 1000])).sample
    assert torch.allclose(ours, ref, atol=1e-5)


def test_real_size_parameter_count_is_dit_xl_2_plus_cross_attention():
    """DiT-XL/2 has 675,129,632 parameters: the count of the DiT reference implementation
    (facebookresearch/DiT, `DiT_XL_2`, 256 px), repeated by SiT (Ma et al. 2024); it includes the
    fixed sinusoidal position table, 256 tokens x 1152 = 294,912, a parameter there and a buffer in
    diffusers (at 512 px the table is 1024 tokens, still a buffer). Each of the 28 blocks gains one
    cross-attention from 1152-wide image tokens to 768-wide CLIP text states, with biases:
    q 1152*1152+1152, k and v 768*1152+1152, out 1152*1152+1152; its LayerNorm has no affine."""
    with torch.device("meta"):
        model = TdiaTransformer(**DIT_XL_2_512)
    dit_xl_2 = 675_129_632 - 256 * 1152
    cross = 2 * (1152 * 1152 + 1152) + 2 * (768 * 1152 + 1152)
    assert cross == 4_428_288
    assert sum(p.numel() for p in model.parameters()) == dit_xl_2 + 28 * cross  # 798,826,784
    assert model.transformer_blocks[27].norm1.emb is model.transformer_blocks[0].norm1.emb  # one embedder


def test_save_and_load_keep_one_shared_embedder(tmp_path):
    model = tiny_model(3)
    model.save_pretrained(tmp_path)  # safetensors: the shared embedder is written once
    again = TdiaTransformer.from_pretrained(tmp_path).eval()
    assert again.transformer_blocks[4].norm1.emb is again.transformer_blocks[0].norm1.emb
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 5, 16)
    with torch.no_grad():
        assert torch.equal(model(x, ctx, timestep=3).sample, again(x, ctx, timestep=3).sample)


# -- Sec. 3.4: mask generation -------------------------------------------------------------------------
def record(layer: str, probs_per_head: list) -> AttentionRecord:
    """B = 1, query grid (1, 2), 2 tokens; probs given per head as (queries, tokens)."""
    return AttentionRecord(layer, torch.tensor(probs_per_head, dtype=torch.float32)[None], (1, 2))


A = record("transformer_blocks.2.attn2", [[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
B = record("transformer_blocks.3.attn2", [[[0.3, 0.7], [0.6, 0.4]], [[0.3, 0.7], [0.6, 0.4]]])
OTHER = record("transformer_blocks.0.attn2", [[[9.0, 9.0], [9.0, 9.0]], [[9.0, 9.0], [9.0, 9.0]]])


def test_defect_block_maps_concatenate_blocks_along_channels():
    # A: head mean [[.5, .5], [0, 1]] (query x token) -> token 0 over the grid [.5, 0], token 1 [.5, 1]
    # B: token 0 [.3, .6], token 1 [.7, .4]
    layers = ["transformer_blocks.2.attn2", "transformer_blocks.3.attn2"]
    maps = defect_block_maps([OTHER, A, B], layers)
    expected = torch.tensor([[[0.5, 0.0]], [[0.5, 1.0]], [[0.3, 0.6]], [[0.7, 0.4]]])[None]
    assert torch.allclose(maps, expected)
    assert torch.allclose(defect_block_maps([A, B], layers[::-1]), expected[:, [2, 3, 0, 1]])
    with pytest.raises(ValueError):
        defect_block_maps([A], layers)


def test_mask_module_maps_attention_to_a_mask_latent_and_learns():
    torch.manual_seed(0)
    module = MaskGenerationModule(in_channels=10, latent_channels=4, patch_size=2, hidden=16)
    maps, target = torch.rand(2, 10, 4, 4), torch.randn(2, 4, 8, 8)
    assert module(maps).shape == target.shape
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    first = mask_prediction_loss(module(maps), target).item()
    for _ in range(60):
        opt.zero_grad()
        mask_prediction_loss(module(maps), target).backward()
        opt.step()
    assert mask_prediction_loss(module(maps), target).item() < 0.5 * first


def test_cell_mask_target_and_its_upsampling_by_hand():
    """The smoke preset's one-channel mask latent (`mask_latent="cell"`): a cell's mask area as a grey
    level in [-1, 1], and the bilinear decoder back to pixels."""
    masks = torch.zeros(1, 1, 4, 4)
    masks[0, 0, 0, :2] = 1
    masks[0, 0, 1, 0] = 1  # top-left 2x2 cell: 3 of 4 pixels; top-right: none; bottom-left: 1 of 4
    masks[0, 0, 3, 1] = 1
    # area 0.75 -> 2 * 0.75 - 1 = 0.5; 0 -> -1; 0.25 -> -0.5
    assert torch.equal(cell_mask_target(masks, (2, 2)), torch.tensor([[[[0.5, -1.0], [-0.5, -1.0]]]]))
    # 2 cells -> 4 pixels, half-pixel centres: pixel i sits at input coordinate (i + 0.5) / 2 - 0.5 =
    # -0.25, 0.25, 0.75, 1.25 -> clamped to cell 0, 1/4 and 3/4 of the way, clamped to cell 1
    up = upsample_cell_mask(torch.tensor([[[[-1.0, 1.0]]]]), (1, 4))
    assert torch.allclose(up, torch.tensor([[[[-1.0, -0.5, 0.5, 1.0]]]]))
    assert torch.allclose(mask_gray(up), torch.tensor([[[0.0, 63.75, 191.25, 255.0]]]))  # (v + 1) * 127.5


def test_mask_gray_average_and_isodata():
    decoded = torch.tensor([-1.0, 1.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2).clone()
    decoded[0, :, 0, 1] = 1.0
    # pixel 0: channel mean 0 -> 127.5 ; pixel 1: mean 1 -> 255
    assert torch.allclose(mask_gray(decoded), torch.tensor([[[127.5, 255.0]]]))
    steps = [torch.full((1, 1, 1), float(v)) for v in (1, 2, 3, 4, 5)]
    assert average_last_steps(steps, last=2).item() == 4.5  # (4 + 5) / 2
    assert average_last_steps(steps, last=100).item() == 3.0  # fewer steps than 100: all
    # [0,0,0,1,9,10,10]: mean 30/7 -> below {0,0,0,1} mean .25, above {9,10,10} mean 29/3 -> t = 4.9583;
    # the split does not change: converged
    assert isodata_threshold(torch.tensor([0.0, 0, 0, 1, 9, 10, 10])) == pytest.approx((0.25 + 29 / 3) / 2, abs=1e-6)
    # [0,2,4,10]: mean 4 -> {0,2,4} 2, {10} 10 -> t = 6 -> same split: 6
    assert isodata_threshold(torch.tensor([0.0, 2, 4, 10])) == pytest.approx(6.0)
    masks = torch.stack([torch.tensor([[0.0, 2], [4, 10]]), torch.full((2, 2), 7.0)])
    out = binarize_masks(masks)
    assert torch.equal(out, torch.tensor([[[[0.0, 0], [0, 1]]], [[[0.0, 0], [0, 0]]]]))  # flat map: empty


# -- Sec. 3.5: Adaptive Attention-enhanced Loss ---------------------------------------------------------
def test_mean_attention_map_over_blocks_at_defect_tokens():
    layers = ["transformer_blocks.2.attn2", "transformer_blocks.3.attn2"]
    # token 0: ([.5, 0] + [.3, .6]) / 2 = [.4, .3]; token 1: ([.5, 1] + [.7, .4]) / 2 = [.6, .7]
    m = mean_attention_map([A, B, OTHER], layers, torch.tensor([[False, True]]))
    assert torch.allclose(m, torch.tensor([[[0.6, 0.7]]]))
    m = mean_attention_map([A, B], layers, torch.tensor([[True, True]]))
    assert torch.allclose(m, torch.tensor([[[0.5, 0.5]]]))


def test_attention_ratio_and_clipping_hand_values():
    amap = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]]).expand(3, 2, 2)
    masks = torch.tensor([[[0.0, 0], [0, 1]], [[1.0, 0], [0, 0]], [[0.0, 0], [0, 0]]])[:, None]
    rat = attention_ratio(amap, masks, alpha=1e-3)
    # 0.6 / (0.4 + .001) ; 0.9 / (0.1 + .001) ; 1.0 / .001
    assert torch.allclose(rat, torch.tensor([0.6 / 0.401, 0.9 / 0.101, 1000.0]))
    assert torch.allclose(clipped_ratio(torch.tensor([1.4963, 5.0, 8.9109, 2.0, 8.0, -1.0])),
                          torch.tensor([2.0, 5.0, 8.0, 2.0, 8.0, 2.0]))


def test_defect_region_loss_hand_values():
    pred = torch.tensor([[[[1.0, 2.0]]], [[[1.0, 1.0]]]])
    eps = torch.tensor([[[[0.0, 5.0]]], [[[3.0, 1.0]]]])  # 5 outside the mask: must not count
    mask = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]])
    # sample 0: masked diff [1 - 0, 0 - 0] -> mean sq .5, R 3 -> 1.5; sample 1: [-2, 0] -> 2, R 2 -> 4; mean 2.75
    assert defect_region_loss(pred, eps, mask, torch.tensor([3.0, 2.0])).item() == pytest.approx(2.75)


def test_resize_mask_is_the_area_fraction():
    mask = torch.tensor([[[[1.0, 1, 0, 0], [1, 0, 0, 0]]]])
    assert torch.allclose(resize_mask(mask, (1, 2)), torch.tensor([[[[0.75, 0.0]]]]))


def test_adaptive_attention_loss_end_to_end_and_r_is_a_weight():
    layers = ["transformer_blocks.2.attn2", "transformer_blocks.3.attn2"]
    a = AttentionRecord(A.layer, A.probs.clone().requires_grad_(True), A.size)
    mask = torch.tensor([[[[1.0, 1, 0, 0], [1, 0, 0, 0]]]])  # map grid (1, 2): [.75, 0]
    pred, eps = torch.ones(1, 1, 2, 4, requires_grad=True), torch.zeros(1, 1, 2, 4)
    out = adaptive_attention_loss([a, B], layers, torch.tensor([[False, True]]), pred, eps, mask)
    # Map [.6, .7]; outside .25 * .6 + 1 * .7 = .85; inside .75 * .6 = .45 -> Rat .85 / .451 -> R = 2
    assert out["rat"].item() == pytest.approx(0.85 / 0.451)
    assert out["r"].item() == 2.0
    # latent-size mask = the mask: 3 of 8 cells, diff 1 -> mean .375; loss_d = 2 * .375
    assert out["loss_d"].item() == pytest.approx(0.75)
    out["loss_d"].backward()
    assert a.probs.grad is None and pred.grad is not None
    a2 = AttentionRecord(A.layer, A.probs.clone().requires_grad_(True), A.size)
    mask_low = torch.tensor([[[[0.0, 0, 0, 0], [0, 0, 0, 1]]]])  # Rat inside (2, 8): gradient reaches the map
    out = adaptive_attention_loss([a2, B], layers, torch.tensor([[True, True]]), pred, eps, mask_low,
                                  detach_ratio=False)
    assert 2 < out["rat"].item() < 8
    out["loss_d"].backward()
    assert a2.probs.grad is not None and a2.probs.grad.abs().sum() > 0


def test_mask_and_total_loss_hand_values():
    assert mask_prediction_loss(torch.tensor([1.0, 2.0]), torch.zeros(2)).item() == pytest.approx(2.5)
    # mse([1, 3], 0) = 5; + 1 + 0.2 * 2 = 6.4
    total = total_loss(torch.tensor([1.0, 3.0]), torch.zeros(2), torch.tensor(1.0), torch.tensor(2.0))
    assert total.item() == pytest.approx(6.4)


class WordTokenizer:
    """BOS, one id per word, EOS: enough to locate the defect words."""

    def __call__(self, text):
        return type("Tok", (), {"input_ids": [0] + list(range(1, len(text.split()) + 1)) + [99]})()


def test_defect_token_positions():
    pos = defect_token_positions(WordTokenizer(), ["metal_contamination", GOOD, "hole"], length=8)
    # "A photo of" -> BOS + 3 words: the defect starts at 4; "metal contamination" 2 words -> 4, 5
    assert pos[0].nonzero().flatten().tolist() == [4, 5]
    assert not pos[1].any()
    assert pos[2].nonzero().flatten().tolist() == [4]


def test_training_step_through_the_tiny_model_reaches_every_part():
    model = tiny_model().train()
    mask_module = MaskGenerationModule(in_channels=2 * 5, latent_channels=4, patch_size=2, hidden=8)
    x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:4, 2:5] = 1
    layers = model.attention_layers("defect")
    with CrossAttentionHook(record=True, detach=False, layers=layers).attach(model) as hook:
        eps_pred = as_denoiser(model)(x, torch.tensor([5, 600]), torch.randn(2, 3, 5, 16))
        aal = adaptive_attention_loss(hook.records, layers, torch.tensor([[0, 0, 0, 0, 1]] * 2).bool(),
                                      eps_pred, eps, mask)
        loss_m = mask_prediction_loss(mask_module(defect_block_maps(hook.records, layers)), torch.randn(2, 4, 8, 8))
    loss = total_loss(eps_pred, eps, aal["loss_d"], loss_m)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.transformer_blocks[2].attn2.to_k.weight.grad.abs().sum() > 0  # defect block via the mask loss
    assert model.transformer_blocks[0].attn2.to_k.weight.grad is not None
    assert mask_module.inp.weight.grad.abs().sum() > 0


# -- Sec. 3.3-3.4: sampling ----------------------------------------------------------------------------
def test_double_free_sampling_is_the_scheduler_on_the_guided_eps_and_averages_last_masks():
    from diffusers import DDIMScheduler

    from generators.defectdiffu.sampling import double_free_sample

    def scheduler():
        s = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
        s.set_timesteps(5)
        return s

    den = PlantedDenoiser()
    x0 = torch.randn(1, 1, 1, 2, generator=torch.Generator().manual_seed(0))
    contexts = guidance_contexts(encode_ids, ["bottle"], ["broken"])
    step = iter(range(1, 6))
    # per-step "decoded masks" (1, 1, 3) [0, k, 6 - k], k = 1..5. The last 2 average to [0, 4.5, 1.5]:
    # mean 2 -> {0, 1.5} .75 and {4.5} -> t = 2.625, same split -> [0, 1, 0]. (The first 2 would give
    # [0, 0, 1]; all 5, [0, 3, 3] -> [0, 1, 1].)
    def mask_at_step():
        k = float(next(step))
        return torch.tensor([[[0.0, k, 6 - k]]])

    out, mask = double_free_sample(den, scheduler(), x0, contexts, 1.5, 2.0, mask_at_step=mask_at_step, last=2)
    assert den.calls == 5  # one batched call of the 3 evaluations per step
    assert torch.equal(mask, torch.tensor([[[[0.0, 1.0, 0.0]]]]))
    # by hand: every evaluation is x + id, so Eq. 4 gives x + 22 + 1.5 * 101 + 2 * 22 = x + 217.5
    ref, s = x0.clone(), scheduler()
    for t in s.timesteps:
        ref = s.step(ref + 217.5, t, ref).prev_sample
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-4)


def test_mask_reads_the_defect_pass_of_the_batched_call():
    from generators.defectdiffu.sampling import defect_pass_maps

    model = tiny_model()
    den = as_denoiser(model)
    layers = model.attention_layers("defect")
    x = torch.randn(2, 4, 8, 8)
    ctxs = [torch.randn(2, 3, 5, 16) for _ in range(3)]
    with torch.no_grad(), CrossAttentionHook(record=True, layers=layers).attach(model) as hook:
        double_free_eps(den, x, 10, ctxs, 1.0, 1.0)
        batched = defect_pass_maps(hook, layers, batch=2)
        assert hook.records == []
        den(x, 10, ctxs[2])  # the (c_d, null) pass alone
        alone = defect_block_maps(hook.records, layers)
    assert torch.allclose(batched, alone, atol=1e-6)
