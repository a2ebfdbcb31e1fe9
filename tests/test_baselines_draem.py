"""DRAEM-style synthesis against the numbers of DRAEM's code (VitjanZ/DRAEM, data_loader.py):
the augmentation set and its ranges, the Perlin lattice and threshold, beta, and the blend."""

import colorsys
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.config import resolve_options
from benchmark.data.demo import demo_dataset_path
from benchmark.data.layouts import read_dataset
from benchmark.data.split import few_shot_split
from benchmark.registry import GENERATORS
from generators.base import GenerationRequest
from generators.baselines import draem
from generators.baselines.draem import (
    DraemOptions,
    apply_source_augmentations,
    blend_anomaly,
    brightness_multiply_add,
    draw_beta,
    draw_perlin_lattice,
    draw_source_augmentations,
    gamma_contrast,
    hue_saturation_add,
    perlin_mask,
    rotated_perlin_noise,
)
from generators.baselines.options import DRAEM_AUGMENTATION_COUNT

# DRAEM's list, in its order: GammaContrast, MultiplyAndAddToBrightness, EnhanceSharpness,
# AddToHueAndSaturation, Solarize, Posterize, Invert, Autocontrast, Equalize, Affine(rotate)
DRAEM_TEN = {"gamma_contrast", "brightness_multiply_add", "sharpness", "hue_saturation_add", "solarize",
             "posterize", "invert", "autocontrast", "equalize", "rotate"}
DRAWS = 4000


@pytest.fixture(scope="module")
def draws():
    rng = np.random.default_rng(0)
    return [draw_source_augmentations(rng, 3) for _ in range(DRAWS)]


def test_three_different_augmentations_of_draems_ten_in_random_order(draws):
    assert all(len(d) == 3 and len({name for name, _ in d}) == 3 for d in draws)  # no replacement
    counts = Counter(name for d in draws for name, _ in d)
    assert set(counts) == DRAEM_TEN
    expected = DRAWS * 3 / 10
    assert all(abs(c - expected) < 0.1 * expected for c in counts.values()), counts
    firsts = Counter(d[0][0] for d in draws)
    assert set(firsts) == DRAEM_TEN and max(firsts.values()) < 1.25 * DRAWS / 10  # order is random too


def _params(draws, name):
    return [p for d in draws for n, p in d if n == name]


def _spans(values, lo, hi, slack):
    values = np.asarray(values, dtype=float)
    return values.min() >= lo and values.max() <= hi and values.min() < lo + slack and values.max() > hi - slack


def test_augmentation_parameters_have_draems_ranges(draws):
    assert _spans([g for p in _params(draws, "gamma_contrast") for g in p["gammas"]], 0.5, 2.0, 0.02)
    assert all(len(p["gammas"]) == 3 for p in _params(draws, "gamma_contrast"))  # per_channel=True
    bright = _params(draws, "brightness_multiply_add")
    assert _spans([p["mul"] for p in bright], 0.8, 1.2, 0.01)
    assert _spans([p["add"] for p in bright], -30, 30, 0.5)
    assert 0.4 < np.mean([p["add_first"] for p in bright]) < 0.6  # imgaug's random_order=True
    assert _spans([p["sharpness_factor"] for p in _params(draws, "sharpness")], 0.0, 2.0, 0.02)
    hs = _params(draws, "hue_saturation_add")
    assert {p["hue"] for p in hs} == set(range(-50, 51)) == {p["saturation"] for p in hs}
    assert np.mean([p["hue"] == p["saturation"] for p in hs]) < 0.05  # per_channel: drawn apart
    sol = _params(draws, "solarize")
    assert 0.45 < np.mean([p["applied"] for p in sol]) < 0.55  # Solarize(p=0.5, ...)
    assert _spans([p["threshold"] for p in sol], 32, 128, 1.0)
    assert {p["bits"] for p in _params(draws, "posterize")} == set(range(1, 9))  # Posterize() default
    assert {p["cutoff"] for p in _params(draws, "autocontrast")} == set(range(0, 21))  # Autocontrast()
    assert _spans([p["angle"] for p in _params(draws, "rotate")], -45, 45, 0.5)
    assert _params(draws, "invert") and all(p == {} for p in _params(draws, "invert"))  # always inverts


def _tensor(pixels):
    return torch.tensor(pixels, dtype=torch.uint8).permute(2, 0, 1).contiguous()


def test_pixel_operations_against_hand_values():
    img = _tensor([[[0, 100, 200], [16, 64, 255]]])  # 1 x 2 pixels
    out = gamma_contrast(img, [0.5, 1.0, 2.0])
    for c, g in enumerate([0.5, 1.0, 2.0]):
        for x, y in zip(img[c].flatten().tolist(), out[c].flatten().tolist()):
            assert abs(y - 255 * (x / 255) ** g) <= 1
    # solarize inverts >= threshold, posterize keeps the high bits (3 bits: & 0b11100000)
    assert apply_source_augmentations(_tensor([[[99, 100, 183]]]), [("solarize", {"applied": True, "threshold": 100})]
                                      ).flatten().tolist() == [99, 155, 72]
    assert apply_source_augmentations(_tensor([[[183, 31, 255]]]), [("posterize", {"bits": 3})]
                                      ).flatten().tolist() == [160, 0, 224]
    assert apply_source_augmentations(img, [("invert", {})]).flatten().tolist() == (255 - img).flatten().tolist()
    assert torch.equal(apply_source_augmentations(img, [("solarize", {"applied": False, "threshold": 40})]), img)


def test_autocontrast_without_cutoff_matches_torchvisions():
    from torchvision.transforms.v2 import functional as F

    img = torch.randint(40, 180, (3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ours = apply_source_augmentations(img, [("autocontrast", {"cutoff": 0})])
    assert (ours.int() - F.autocontrast(img).int()).abs().max() <= 1
    cut = apply_source_augmentations(img, [("autocontrast", {"cutoff": 20})])
    assert (cut == 0).float().mean() > 0.1 and (cut == 255).float().mean() > 0.1  # 20% of each end clipped


def test_brightness_moves_luma_and_keeps_chroma():
    img = _tensor([[[120, 80, 60], [60, 140, 90], [100, 100, 100]]])
    for mul, add, add_first in [(1.15, 12.0, False), (0.85, -20.0, True)]:
        out = brightness_multiply_add(img, mul, add, add_first)
        before = np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).convert("YCbCr"), dtype=float)
        after = np.asarray(Image.fromarray(out.permute(1, 2, 0).numpy()).convert("YCbCr"), dtype=float)
        want = (before[..., 0] + add) * mul if add_first else before[..., 0] * mul + add
        assert np.abs(after[..., 0] - want).max() <= 1.5
        assert np.abs(after[..., 1:] - before[..., 1:]).max() <= 1.5


def test_hue_and_saturation_add_against_colorsys():
    pixels = [[[200, 60, 60], [40, 150, 90], [90, 90, 200], [128, 128, 128]]]
    img = _tensor(pixels)
    hue, sat = 25, 40
    out = hue_saturation_add(img, hue, sat).permute(1, 2, 0).reshape(-1, 3).numpy().astype(int)
    for rgb, got in zip(pixels[0], out):
        h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))  # grey: h = 0 (red), as OpenCV
        h = (h + int(hue * 180 / 255) / 180) % 1.0
        s = min(1.0, s + sat / 255)
        want = np.array(colorsys.hsv_to_rgb(h, s, v)) * 255
        assert np.abs(got - want).max() <= 3, (rgb, got, want)


def test_perlin_lattice_is_two_to_the_0_to_5_per_axis():
    rng = np.random.default_rng(1)
    lattices = [draw_perlin_lattice(rng, DraemOptions().perlin_scale) for _ in range(3000)]
    assert {s for pair in lattices for s in pair} == {1, 2, 4, 8, 16, 32}
    assert len(set(lattices)) == 36  # the two axes are drawn independently


def test_mask_is_the_rotated_noise_above_one_half():
    opts = DraemOptions()
    assert opts.threshold == 0.5 and opts.perlin_rotation == (-90.0, 90.0)
    for seed in range(5):
        noise = rotated_perlin_noise(64, opts, np.random.default_rng(seed))
        mask = perlin_mask(64, opts, np.random.default_rng(seed))
        if (noise > 0.5).any():  # the first draw is kept unless it is empty
            assert np.array_equal(mask, noise > 0.5)
        assert mask.any()


def test_the_option_bounds_are_the_generators_own():
    """augmentations_per_source <= the augmentations there are; threshold < 1 because the noise
    (sqrt(2) x 2-D Perlin, whose extremes are +-sqrt(1/2)) never leaves [-1, 1]."""
    assert len(draem.DRAEM_AUGMENTATIONS) == DRAEM_AUGMENTATION_COUNT
    rng = np.random.default_rng(3)
    extremes = [np.abs(draem.perlin_noise((64, 64), (2**k, 2**k), rng)).max() for k in range(6) for _ in range(40)]
    assert 0.8 < max(extremes) <= 1.0


def test_beta_is_uniform_on_zero_to_point_eight():
    rng = np.random.default_rng(2)
    betas = np.array([draw_beta(rng, DraemOptions().beta) for _ in range(20000)])
    assert betas.min() >= 0 and betas.max() < 0.8 and betas.min() < 1e-3 and betas.max() > 0.799
    assert abs(betas.mean() - 0.4) < 0.01 and abs((betas < 0.2).mean() - 0.25) < 0.015


def test_blend_on_planted_images():
    image = np.full((6, 6, 3), 200, np.uint8)
    source = np.full((6, 6, 3), 40, np.uint8)
    mask = np.zeros((6, 6), bool)
    mask[1:4, 2:5] = True
    out = blend_anomaly(image, source, mask, beta=0.25)
    assert (out[mask] == 80).all()  # 0.25 * 200 + 0.75 * 40
    assert (out[~mask] == 200).all()
    rng = np.random.default_rng(3)
    image, source = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    mask = rng.random((8, 8)) > 0.5
    for beta in (0.0, 0.37, 0.79):
        lerp = torch.lerp(torch.from_numpy(source).double(), torch.from_numpy(image).double(), beta)
        want = np.where(mask[..., None], lerp.round().numpy(), image)
        assert np.abs(blend_anomaly(image, source, mask, beta).astype(int) - want).max() <= 1


@pytest.fixture(scope="module")
def split(private_cache):
    return few_shot_split(read_dataset(demo_dataset_path(private_cache), "mvtec"))


def _generator(split, **options):
    cls = GENERATORS.load("draem")
    gen = cls(resolve_options(cls, "smoke", {"pairs_per_type": 2, **options}), 32)
    gen.setup_split(split)
    return gen


def test_generator_draws_beta_as_draem_on_a_planted_source(split, tmp_path):
    """With no augmentation and a constant source, every mask pixel is 200 beta + 40 (1 - beta)."""
    Image.fromarray(np.full((32, 32, 3), 40, np.uint8)).save(tmp_path / "tex.png")
    gen = _generator(split, source_dir=str(tmp_path), augmentations_per_source=0)
    normal = np.full((32, 32, 3), 200, np.uint8)
    request = GenerationRequest("x/y/00000", next(iter(split.categories)), "y", "n.png", None, 0)
    betas = []
    for seed in range(150):
        out, mask = gen.synthesize(normal, np.random.default_rng(seed), request)
        inside = np.unique(out[mask])
        assert mask.any() and len(inside) == 1 and (out[~mask] == 200).all()
        betas.append((int(inside[0]) - 40) / 160)
    assert min(betas) >= 0 and max(betas) <= 0.8 + 1 / 160 and min(betas) < 0.05 and max(betas) > 0.7


def test_default_source_is_another_categorys_normal_image(split):
    gen = _generator(split)
    assert len(split.categories) > 1
    for name, cat in split.categories.items():
        own = {str(s.image) for s in cat.train_good}
        candidates = set(gen.source_candidates(name))
        assert candidates and not candidates & own


def test_pairs_do_not_depend_on_global_random_state(split):
    gen = _generator(split)
    requests = gen.plan(split, 0)[:2]
    torch.manual_seed(1)
    np.random.seed(1)
    a = gen.predict_step(requests)
    state = torch.get_rng_state()
    torch.manual_seed(99)
    np.random.seed(99)
    b = gen.predict_step(requests)
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)
    torch.manual_seed(1)
    gen.predict_step(requests)
    assert torch.equal(torch.get_rng_state(), state)  # generation leaves torch's global state alone


def test_code_version_is_bumped():
    assert draem.DraemPerlin.code_version == 2  # enters the synthetic-set cache key
