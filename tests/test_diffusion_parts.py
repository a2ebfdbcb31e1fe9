"""The shared latent-diffusion parts on small tensors, each against an independent computation:
DDPM forward noising, x0 prediction and posterior (`ddpm`), concepts and prompts (`concepts`),
few-shot data, flips, mask placement and resumable draws (`few_shot`)."""

import numpy as np
import pytest
import torch

from generators.diffusion.concepts import concept_name, prompt_text, split_concepts
from generators.diffusion.ddpm import add_noise, ddpm_step, posterior, predict_x0
from generators.diffusion.few_shot import ResumableDraws, place_mask, random_flips
from generators.diffusion.schedulers import alphas_cumprod, make_scheduler

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def abar():
    return alphas_cumprod(make_scheduler("ddpm", None)).float()


# -- ddpm: Ho et al. 2020 Eq. 4, 6-7, 15 -----------------------------------------------------------
@pytest.mark.parametrize("steps", [1000, 20])
def test_ddpm_step_matches_the_diffusers_scheduler_step(steps):
    """The posterior step (respaced when steps < T) equals diffusers' DDPM step given the same x0 and noise."""
    s = make_scheduler("ddpm", None, prediction_type="sample", timestep_spacing="trailing")
    s.set_timesteps(steps)
    ab = alphas_cumprod(s).float()
    times = [int(t) for t in s.timesteps]
    g = torch.Generator().manual_seed(0)
    x0, x_t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for i in (0, len(times) // 2, len(times) - 1):
        t = times[i]
        prev = times[i + 1] if i + 1 < len(times) else -1
        ref = s.step(x0, t, x_t, generator=torch.Generator().manual_seed(1)).prev_sample
        z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
        ours = ddpm_step(x0, x_t, ab[t], ab[prev] if prev >= 0 else torch.tensor(1.0), z)
        assert torch.allclose(ours, ref, atol=1e-5)


def test_posterior_on_one_element_by_hand():
    """Ho et al. Eq. 7 with abar_t = 0.5, abar_prev = 0.8: beta = 1 - 0.5/0.8 = 0.375,
    mean = sqrt(0.8) * 0.375 / 0.5 * x0 + sqrt(0.625) * 0.2 / 0.5 * x_t, var = 0.2 / 0.5 * 0.375 = 0.15."""
    x0, x_t = torch.tensor([2.0]), torch.tensor([-1.0])
    mean, var = posterior(x0, x_t, 0.5, 0.8)
    assert var == pytest.approx(0.15)
    assert mean.item() == pytest.approx(0.8**0.5 * 0.75 * 2.0 - 0.625**0.5 * 0.4, abs=1e-6)  # = 0.3254...
    last_mean, last_var = posterior(x0, x_t, 0.3, 1.0)  # the last step: all weight on x0, no noise
    assert last_mean.item() == pytest.approx(2.0) and last_var == 0
    assert ddpm_step(x0, x_t, 0.5, 0.8, torch.tensor([1.0])).item() == pytest.approx(mean.item() + 0.15**0.5)


def test_add_noise_and_predict_x0_by_hand_and_against_diffusers(abar):
    # abar = 0.64: x_t = 0.8 * x0 + 0.6 * eps; x0 back = (x_t - 0.6 eps) / 0.8
    x0, eps = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 1.0]])
    assert torch.allclose(add_noise(x0, eps, torch.tensor(0.64)), torch.tensor([[1.1, -1.0]]))
    assert torch.allclose(predict_x0(torch.tensor([[1.1, -1.0]]), eps, 0.64), x0, atol=1e-6)
    s = make_scheduler("ddpm", None)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    t = torch.tensor([0, 450, 999])
    ours = add_noise(x0, eps, alphas_cumprod(s)[t].float().view(-1, 1, 1, 1))
    assert torch.allclose(ours, s.add_noise(x0, eps, t), atol=1e-6)


# -- concepts ----------------------------------------------------------------------------------------
def test_prompt_is_class_and_anomaly_type():
    assert prompt_text("metal_nut", "color_stain") == "metal nut color stain"
    assert prompt_text("01", "ko", "damaged") == "damaged"  # STAGE Sec. IV-A: BTAD's prompt
    assert concept_name("wood", "hole") == "wood/hole"


def test_split_concepts_skip_types_without_few_shot_defects():
    from benchmark.data.dataset import Sample
    from benchmark.data.split import CategorySplit, FewShotSplit

    shot = Sample("x.png", "wood", "hole", ("m.png",))
    cats = {"wood": CategorySplit("wood", [], [], {"hole": [shot], "scratch": []}, {"hole": [], "scratch": []}),
            "tile": CategorySplit("tile", [], [], {"crack": [shot]}, {"crack": []})}
    assert split_concepts(FewShotSplit(1 / 3, "id", 0, cats)) == [("wood", "hole"), ("tile", "crack")]


# -- few-shot data -------------------------------------------------------------------------------------
def test_place_mask_keeps_the_mask_whole_and_inside():
    mask = np.zeros((32, 32), bool)
    mask[2:6, 20:31] = True
    outs = [place_mask(mask, np.random.default_rng(s)) for s in range(20)]
    assert all(o.sum() == mask.sum() and o.shape == mask.shape for o in outs)
    assert len({o.tobytes() for o in outs}) > 10
    assert np.array_equal(place_mask(mask, np.random.default_rng(3)), outs[3])


def test_random_flips_move_image_and_mask_together():
    img = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    mask = img[:, :1].clone()
    fi, fm = random_flips(img, mask, torch.Generator().manual_seed(0))
    assert torch.equal(fi[:, :1], fm)
    flips = (torch.rand(2, 2, generator=torch.Generator().manual_seed(0)) < 0.5).tolist()  # the same draws
    for i, (lr, ud) in enumerate(flips):
        expected = img[i].flip([-1]) if lr else img[i]
        expected = expected.flip([-2]) if ud else expected
        assert torch.equal(fi[i], expected)


def test_resumable_draws_are_random_samplers_draws_and_resume_mid_way():
    from torch.utils.data import RandomSampler

    reference = list(RandomSampler(range(7), replacement=True, num_samples=90,
                                   generator=torch.Generator().manual_seed(5)))
    draws = ResumableDraws(7, 90, seed=5)
    assert list(draws) == reference and len(draws) == 90
    draws.start = 36
    assert list(draws) == reference[36:]
    assert list(draws) == reference  # the start applies to one pass only
