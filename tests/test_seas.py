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
