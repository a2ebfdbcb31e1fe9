"""CutPaste against the numbers of CutPaste (Li et al., CVPR 2021) and its public re-implementations:
scar width 2-16 px, height 10-25 px, rotation -45..45 degrees at 256 px; patches of 2-15% of the
image with aspect ratio 0.3-3.3; colour jitter 0.1."""

import colorsys
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage

from benchmark.config import resolve_options
from benchmark.data.demo import demo_dataset_path
from benchmark.data.layouts import read_dataset
from benchmark.data.split import few_shot_split
from benchmark.registry import GENERATORS
from generators.baselines.cutpaste import (
    CutPasteOptions,
    CutPasteScar,
    draw_normal_patch,
    draw_scar,
    jitter_patch,
    paste_patch,
)


def _spans(values, lo, hi, slack):
    values = np.asarray(values, dtype=float)
    return values.min() >= lo and values.max() <= hi and values.min() <= lo + slack and values.max() >= hi - slack


def test_scar_size_and_rotation_ranges_at_256_px():
    rng = np.random.default_rng(0)
    draws = [draw_scar(256, 256, CutPasteOptions(), rng) for _ in range(3000)]
    assert _spans([d.width for d in draws], 2, 16, 0)
    assert _spans([d.height for d in draws], 10, 25, 0)
    assert _spans([d.angle for d in draws], -45, 45, 0.2)
    assert abs(np.mean([d.angle for d in draws])) < 2  # uniform, centred


def test_scar_sizes_scale_with_the_image():
    rng = np.random.default_rng(1)
    draws = [draw_scar(128, 128, CutPasteOptions(), rng) for _ in range(2000)]
    # half the 256-px sizes, rounded: width 1..8, height 5..12.5
    assert _spans([d.width for d in draws], 1, 8, 0) and _spans([d.height for d in draws], 5, 13, 1)


def _principal_axis_degrees(mask):
    """Angle of the long axis from the image's vertical, counter-clockwise on screen (rows grow down)."""
    rows, cols = np.nonzero(mask)
    cov = np.cov(np.stack([rows - rows.mean(), cols - cols.mean()]))
    vals, vecs = np.linalg.eigh(cov)
    dr, dc = vecs[:, np.argmax(vals)]
    return np.degrees(np.arctan2(-dc, -dr))  # up is (-1, 0); counter-clockwise turns it to -col


def test_pasted_scar_has_the_drawn_size_and_rotation():
    rng = np.random.default_rng(2)
    image = torch.from_numpy(rng.integers(0, 256, (3, 256, 256), dtype=np.uint8))
    checked = 0
    for _ in range(300):
        draw = draw_scar(256, 256, CutPasteOptions(), rng)
        out, mask = paste_patch(image, draw, 0.1)
        mask = mask.numpy()
        area = draw.width * draw.height  # nearest-neighbour rotation keeps it up to the border pixels
        assert abs(mask.sum() - area) <= 0.15 * area + 2 * (draw.width + draw.height)
        assert torch.equal(out[:, ~torch.from_numpy(mask)], image[:, ~torch.from_numpy(mask)])
        if draw.height >= 3 * draw.width and draw.height >= 15:  # a clear long axis
            diff = (_principal_axis_degrees(mask) - draw.angle + 90) % 180 - 90
            assert abs(diff) < 6, (draw, _principal_axis_degrees(mask))
            checked += 1
    assert checked > 30


def test_normal_patch_area_and_aspect_ranges():
    rng = np.random.default_rng(3)
    draws = [draw_normal_patch(256, 256, CutPasteOptions(), rng) for _ in range(3000)]
    areas = np.array([d.width * d.height for d in draws]) / 256**2
    aspects = np.array([d.width / d.height for d in draws])
    assert _spans(areas, 0.019, 0.152, 0.004)
    assert _spans(aspects, 0.29, 1 / 0.29, 0.15)  # integer sides round the extremes
    assert abs(np.median(np.log(aspects))) < 0.05  # log-uniform: as many tall as wide
    assert all(d.angle == 0 for d in draws)


def test_jitter_has_torchvisions_strength_point_one():
    """On a uniform grey patch only brightness acts (contrast, saturation, hue keep grey), so the
    value stays in 100 * [0.9, 1.1]; on a uniform colour only brightness and hue change the hue,
    which moves by at most 0.1 of the circle."""
    grey = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    strength = CutPasteOptions().jitter  # the generator's default, checked against 0.1 below
    values = [int(jitter_patch(grey, strength, seed)[0, 0, 0]) for seed in range(400)]
    assert _spans(values, 90, 110, 1)
    red = torch.tensor([200, 60, 60], dtype=torch.uint8)[:, None, None].expand(3, 4, 4).contiguous()
    shifts = []
    for seed in range(400):
        rgb = jitter_patch(red, strength, seed)[:, 0, 0].float() / 255
        h = colorsys.rgb_to_hsv(*rgb.tolist())[0]
        shifts.append((h + 0.5) % 1.0 - 0.5)
    assert _spans(shifts, -0.1 - 0.01, 0.1 + 0.01, 0.02)


@pytest.fixture(scope="module")
def split(private_cache):
    return few_shot_split(read_dataset(demo_dataset_path(private_cache), "mvtec"))


def _generator(split, name="cutpaste", **options):
    cls = GENERATORS.load(name)
    gen = cls(resolve_options(cls, "smoke", {"pairs_per_type": 2, **options}), 64)
    gen.setup_split(split)
    return gen


@pytest.mark.parametrize("variant", ["scar", "normal", "union"])
def test_one_patch_per_image_by_default(split, variant):
    gen = _generator(split, variant=variant)
    for pair in gen.predict_step(gen.plan(split, 0)[:4]):
        assert pair.mask.any()
        # one patch: 8-connected, so a rotated nearest-neighbour scar stays one region
        assert ndimage.label(pair.mask, structure=np.ones((3, 3)))[1] == 1


def test_pairs_do_not_depend_on_global_random_state(split):
    gen = _generator(split)
    requests = gen.plan(split, 0)[:3]
    torch.manual_seed(1)
    a = gen.predict_step(requests)
    state = torch.get_rng_state()
    torch.manual_seed(2)
    b = gen.predict_step(requests)
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)
    torch.manual_seed(1)
    gen.predict_step(requests)
    assert torch.equal(torch.get_rng_state(), state)  # the jitter's forked generator leaves it alone


FINGERPRINT = """
import hashlib, json, sys
import torch
torch.set_num_threads(int(sys.argv[1]))
from benchmark.config import resolve_options
from benchmark.data.demo import demo_dataset_path
from benchmark.data.layouts import read_dataset
from benchmark.data.split import few_shot_split
from benchmark.registry import GENERATORS
split = few_shot_split(read_dataset(demo_dataset_path(sys.argv[2]), "mvtec"))
out = {}
for name in ("cutpaste", "draem"):
    cls = GENERATORS.load(name)
    gen = cls(resolve_options(cls, "smoke", {"pairs_per_type": 2}), 64)
    gen.setup_split(split)
    pairs = gen.predict_step(gen.plan(split, 7)[:4])
    out[name] = [hashlib.sha256(p.image.tobytes() + p.mask.tobytes()).hexdigest() for p in pairs]
print(json.dumps(out))
"""


def test_same_seed_same_pairs_in_another_process(split, private_cache):
    """A fresh interpreter (other thread count, no shared state) makes byte-identical pairs."""
    here = {}
    for name in ("cutpaste", "draem"):
        gen = _generator(split, name)
        here[name] = [hashlib.sha256(p.image.tobytes() + p.mask.tobytes()).hexdigest()
                      for p in gen.predict_step(gen.plan(split, 7)[:4])]
    proc = subprocess.run([sys.executable, "-c", FINGERPRINT, "2", str(private_cache)],
                          capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == here


def test_code_version_is_bumped():
    assert CutPasteScar.code_version == 2  # enters the synthetic-set cache key
