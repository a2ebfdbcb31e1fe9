"""BadgGenerator (the Lightning glue) on the demo data with the tiny backbone: a few fit steps train
the U-Net only, pairs are deterministic for a seed and come back the same from a checkpoint of the
trained parts, the smoke pairs pass the trust checks of benchmark/pair_checks.py, the
background option composes the latents as documented, and the refined mask of Eq. 13 is recorded
as `predicted` (inside the given mask) or, when empty, the given mask is kept."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dataclasses import replace  # noqa: E402

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from benchmark.contracts import MASK_GIVEN, MASK_PREDICTED  # noqa: E402
from benchmark.errors import BenchError  # noqa: E402
from benchmark.pair_checks import check_pair  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

SMOKE_IMAGE_SIZE = 128  # the smoke profile's image size
CATEGORIES = ("wood", "pill")  # a texture and an object, to keep the test short
TRAINER = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False)


@pytest.fixture(scope="module")
def split():
    from benchmark.data.demo import demo_dataset_path
    from benchmark.data.layouts import read_dataset
    from benchmark.data.split import few_shot_split

    full = few_shot_split(read_dataset(demo_dataset_path(), "mvtec"))
    return replace(full, categories={c: full.categories[c] for c in CATEGORIES})


def _generator(split, **options):
    from benchmark.config import resolve_options
    from generators.badg.lightning_model import BadgGenerator

    generator = BadgGenerator(resolve_options(BadgGenerator, "smoke", {"pairs_per_type": 2, **options}),
                              SMOKE_IMAGE_SIZE)
    generator.setup_split(split)
    return generator


@pytest.fixture(scope="module")
def fitted(split):
    """The smoke preset fitted for 3 steps, and the weights before the fit."""
    generator = _generator(split, train_steps=3)
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    L.seed_everything(0, verbose=False)
    L.Trainer(max_steps=3, max_epochs=-1, **TRAINER).fit(generator)
    return generator, before


def _pairs(generator, requests):
    pairs = []

    class Collect(L.Callback):
        def on_predict_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
            pairs.extend(outputs)

    from generators.base import collate_requests

    L.Trainer(callbacks=[Collect()], **TRAINER).predict(
        generator, DataLoader(requests, batch_size=generator.options.batch_size, collate_fn=collate_requests),
        return_predictions=False)
    assert [p.request.id for p in pairs] == [r.id for r in requests]
    return pairs


def test_registry_lists_badg_as_implemented():
    from benchmark.registry import GENERATORS, IMPLEMENTED
    from generators.badg.lightning_model import BadgGenerator

    assert GENERATORS.get("badg").status == IMPLEMENTED and GENERATORS.load("badg") is BadgGenerator


def test_missing_weights_answer_with_one_line_naming_the_folder(split, tmp_path):
    with pytest.raises(BenchError) as err:
        _generator(split, backbone=str(tmp_path / "sd15"))
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "sd15") in message and "backbone=<folder>" in message


def test_fit_trains_the_unet_only(fitted):
    generator, before = fitted
    after = generator.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith(("unet.", "model.unet.")) for k in changed)
    assert set(generator.trained_state()) == {"unet"}
    generator.train()
    assert generator.unet.training and not generator.vae.training and not generator.text_encoder.training
    generator.eval()


def test_pairs_are_deterministic_for_a_seed_and_pass_the_trust_checks(fitted, split):
    from benchmark.data.images import load_image

    generator, _ = fitted
    requests = generator.plan(split, seed=0)
    assert len(requests) == 2 * sum(len(split.categories[c].defect_types) for c in CATEGORIES)
    pairs = _pairs(generator, requests)
    again = _pairs(generator, requests)
    for a, b in zip(pairs, again):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.mask_origin == b.mask_origin
    other = _pairs(generator, generator.plan(split, seed=1)[:2])
    assert not np.array_equal(other[0].image, pairs[0].image)
    for pair in pairs:  # the trust checks: background kept outside the dilated mask, changes inside it
        source = load_image(pair.request.normal_image, pair.image.shape[0])
        check = check_pair(pair.image, source, pair.mask)
        assert check.background_psnr >= 30.0 and check.changed_inside >= 0.9, (pair.request.id, check)
        assert pair.mask.any() and (pair.image[pair.mask] != source[pair.mask]).any()  # a defect was drawn
        assert pair.mask_origin in (MASK_GIVEN, MASK_PREDICTED)


def test_checkpoint_of_the_trained_parts_reloads_to_the_same_pairs(fitted, split, tmp_path):
    generator, _ = fitted
    requests = generator.plan(split, seed=0)[:3]
    pairs = _pairs(generator, requests)
    generator.save_trained(tmp_path / "generator.pt")
    fresh = _generator(split, train_steps=3)
    untrained = _pairs(fresh, requests)
    assert not np.array_equal(untrained[0].image, pairs[0].image)  # the fit changed the pairs
    fresh.load_trained(tmp_path / "generator.pt")
    for a, b in zip(pairs, _pairs(fresh, requests)):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)


def test_keep_normal_background_takes_the_normal_latent_outside_the_mask(fitted, split):
    """Outside m the latent is the normal image's, inside it is z_0* of the paper's path (the
    option off): the composition, checked cell by cell."""
    generator, _ = fitted
    requests = generator.plan(split, seed=0)[:2]
    generator.options.keep_normal_background = False
    try:
        z_paper, map_paper = generator.sample_with_map(generator.encode_requests(requests))
    finally:
        generator.options.keep_normal_background = True
    encoded = generator.encode_requests(requests)  # fresh noise streams: the same draws as above
    z_kept, map_kept = generator.sample_with_map(encoded)
    inside = encoded.m0.expand_as(z_kept) > 0.5
    assert inside.any() and (~inside).any()
    assert torch.equal(z_kept[~inside], encoded.x_back[~inside])
    assert torch.equal(z_kept[inside], z_paper[inside])
    assert torch.equal(map_kept, map_paper)
    assert (z_paper[~inside] - encoded.x_back[~inside]).abs().max() > 1e-3  # the paper's path has a gap here


def test_refined_mask_is_recorded_as_predicted_inside_the_given_one(fitted, split):
    """At a threshold inside the map's range m* is a non-empty strict subset of the placed mask and
    is what the pair records; at 0.999 Eq. 13 is empty and the pair keeps the placed mask."""
    from generators.badg.torch_model import refine_mask
    from generators.diffusion.latents import masks_to_tensor

    generator, _ = fitted
    requests = generator.plan(split, seed=0)[:2]
    encoded = generator.encode_requests(requests)
    _, defect_map = generator.sample_with_map(encoded)
    given_t = masks_to_tensor(encoded.masks)
    up = torch.nn.functional.interpolate(defect_map, size=given_t.shape[-2:], mode="bilinear")
    threshold = min(float(u[g > 0].max()) for u, g in zip(up, given_t))  # every m* keeps >= 1 pixel
    expected = refine_mask(defect_map, given_t, threshold).bool().numpy()[:, 0]
    for threshold, origin in ((threshold, MASK_PREDICTED), (0.999, MASK_GIVEN)):
        generator.options.refine_threshold = threshold
        try:
            pairs = generator.predict_step(requests)
        finally:
            generator.options.refine_threshold = 0.5
        for pair, given, m_star in zip(pairs, encoded.masks, expected):
            assert pair.mask_origin == origin and pair.mask.any() and not (pair.mask & ~given).any()
            if origin == MASK_PREDICTED:
                assert np.array_equal(pair.mask, m_star) and pair.mask.sum() <= given.sum()
            else:
                assert np.array_equal(pair.mask, given)
    assert any(m.sum() < g.sum() for m, g in zip(expected, encoded.masks))  # a real refinement, not the given mask


def test_contexts_are_c1_then_c2_and_the_loss_hook_feeds_them_to_their_passes(fitted):
    """context(): C1 = [C_def, C_bg] on dim 1 index 0, C2 = [C_m, C_bg] on index 1 (C_m is one prompt
    for every concept, C_bg one per category); training_loss: z_t with C1, (1 - m) z_t with C2."""
    generator, _ = fitted
    L_ = generator.backbone.max_length
    with torch.no_grad():
        context = generator.context(["wood/hole", "pill/crack"], ["unused", "unused"])
    assert context.shape[:3] == (2, 2, 2 * L_)
    c1, c2 = context[:, 0], context[:, 1]
    assert torch.equal(c2[0, :L_], c2[1, :L_])  # C_m: the same prompt for both
    assert not torch.equal(c1[0, :L_], c1[1, :L_])  # C_def: per defect type
    assert torch.equal(c1[:, L_:], c2[:, L_:])  # C_bg: shared by C1 and C2 of a sample
    assert not torch.equal(c1[0, L_:], c1[1, L_:])  # and per category
    seen = {}

    def record(z_t, z_t_m, t, ctx1, ctx2, m):
        seen.update(z_t=z_t, z_t_m=z_t_m, c1=ctx1, c2=ctx2, m=m)
        return torch.zeros_like(z_t), torch.zeros_like(z_t)

    x0 = torch.randn(2, generator.backbone.latent_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    m0 = torch.zeros(2, 1, 16, 16)
    m0[:, :, 4:9, 3:7] = 1
    original, generator.model.denoise_pair = generator.model.denoise_pair, record
    try:
        generator.training_loss(x0, m0, context, torch.Generator().manual_seed(1))
    finally:
        generator.model.denoise_pair = original
    assert seen["c1"] is not None and torch.equal(seen["c1"], c1) and torch.equal(seen["c2"], c2)
    assert torch.equal(seen["m"], m0) and torch.allclose(seen["z_t_m"], (1 - m0) * seen["z_t"], atol=1e-6)


def test_schedulers_have_the_step_counts_and_meet_at_the_clean_end(fitted):
    generator, _ = fitted
    generator.options.inversion_steps = 7  # each count from its own option
    try:
        sampler, inverse = generator.sampling_scheduler(), generator.inverse_scheduler()
    finally:
        generator.options.inversion_steps = 10
    assert (len(sampler.timesteps), len(inverse.timesteps)) == (10, 7)
    assert float(inverse.initial_alpha_cumprod) == float(sampler.final_alpha_cumprod) == 1.0
    assert sampler.config.clip_sample is False and type(sampler).__name__ == "DDIMScheduler"
