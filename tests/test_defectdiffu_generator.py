"""DefectDiffu (the Lightning glue) on the demo data with the tiny backbone: the presets validate,
missing DiT weights answer with one line, a short fit trains the TDIA and the mask module only, the
loss is Eq. 11's sum, sampling makes three eps evaluations per step and records `predicted` masks,
pairs depend on their request alone, the w_d sweep and zero-shot (Eq. 12) requests (the math
itself: tests/test_defectdiffu.py; the whole-image smoke criteria: tests/test_pair_checks.py)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dataclasses import replace  # noqa: E402

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from benchmark.contracts import MASK_PREDICTED  # noqa: E402
from benchmark.errors import BenchError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

SMOKE_IMAGE_SIZE = 128
CATEGORIES = ("wood", "pill")
TRAINER = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False)
FAST = {"pairs_per_type": 2, "sampling_steps": 3, "mask_steps": 2, "train_steps": 2, "train_batch_size": 2}


@pytest.fixture(scope="module", autouse=True)
def short_tiny_demo_dit():
    """The smoke preset's pre-trained TDIA, built with a 2-step pre-training on a few images (its own
    cache folder: the recipe hash differs); its pre-training is tested in test_defectdiffu_tiny_dit.py."""
    from generators.defectdiffu import tiny_dit

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiny_dit, "PRETRAIN", {**tiny_dit.PRETRAIN, "steps": 2, "normals_per_category": 2,
                                             "defects_per_type": 1})
        yield


@pytest.fixture(scope="module")
def split():
    from benchmark.data.demo import demo_dataset_path
    from benchmark.data.layouts import read_dataset
    from benchmark.data.split import few_shot_split

    full = few_shot_split(read_dataset(demo_dataset_path(), "mvtec"))
    return replace(full, categories={c: full.categories[c] for c in CATEGORIES})


def _generator(split, **options):
    from benchmark.config import resolve_options
    from generators.defectdiffu.lightning_model import DefectDiffu

    torch.manual_seed(0)
    generator = DefectDiffu(resolve_options(DefectDiffu, "smoke", {**FAST, **options}), SMOKE_IMAGE_SIZE)
    generator.setup_split(split)
    return generator


@pytest.fixture(scope="module")
def fitted(split):
    generator = _generator(split)
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    L.seed_everything(0, verbose=False)
    L.Trainer(max_steps=2, max_epochs=-1, **TRAINER).fit(generator)
    return generator.eval(), before


def test_registry_points_at_the_generator_and_the_presets_validate():
    from benchmark.config import resolve_options
    from benchmark.registry import GENERATORS
    from generators.defectdiffu.lightning_model import DefectDiffu
    from generators.defectdiffu.double_free import W_D_SWEEP

    assert GENERATORS.get("defectdiffu").load() is DefectDiffu
    paper = resolve_options(DefectDiffu, "paper", {})
    assert (paper.resolution, paper.blocks, paper.transformer, paper.mask_steps) == (512, (10, 10, 8), "dit-xl-2", 100)
    assert paper.w_d_sweep == W_D_SWEEP and paper.dit_weights and not paper.clip_sample
    smoke = resolve_options(DefectDiffu, "smoke", {})
    assert smoke.backbone == "tiny" and smoke.transformer == "tiny-demo-dit" and smoke.dit_weights is None
    assert smoke.mask_latent == "cell" and not smoke.clip_sample and paper.mask_latent == "vae"
    with pytest.raises(BenchError, match="tokens_per_type"):
        resolve_options(DefectDiffu, "smoke", {"tokens_per_type": 2})


def test_a_planned_entry_is_refused_in_one_line():
    from benchmark.registry import Entry, Registry

    registry = Registry("generator", [Entry("later", "nowhere:Nothing", "not built", status="planned")])
    with pytest.raises(BenchError, match="generator 'later' is planned but not implemented yet"):
        registry.get("later")


def test_mask_steps_beyond_sampling_steps_is_refused(split):
    with pytest.raises(BenchError, match="mask_steps 5 exceeds sampling_steps 3"):
        _generator(split, mask_steps=5)


def test_a_size_the_dit_cannot_take_is_refused_before_anything_loads():
    """8 px per cell of the tiny backbone x the TDIA's patch 2 = 16; the fix named is the flag in use."""
    from benchmark.config import resolve_options
    from generators.defectdiffu.lightning_model import DefectDiffu

    options = resolve_options(DefectDiffu, "smoke", {})
    refused = (r"100 px is not a multiple of 16 \(the VAE's 8 px per latent cell x the DiT patch 2\); "
               r"pass --image-size 96 or 112")
    with pytest.raises(BenchError, match=refused):
        DefectDiffu.preflight(options, 100)
    DefectDiffu.preflight(options, 96)
    own = resolve_options(DefectDiffu, "smoke", {"resolution": 100})
    with pytest.raises(BenchError, match=r"--set generator.options.resolution=96 \(or 112\)"):
        DefectDiffu.preflight(own, 96)


def test_missing_dit_weights_answer_with_one_line_naming_the_folder(tmp_path):
    from generators.defectdiffu.lightning_model import DefectDiffu

    with pytest.raises(BenchError) as err:
        DefectDiffu._load_dit(tmp_path / "DiT-XL-2-512")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "DiT-XL-2-512") in message
    assert "facebook/DiT-XL-2-512" in message and "dit_weights=<folder>" in message


def test_dit_weights_from_a_folder_load_into_the_tdia(tmp_path):
    from diffusers import DiTTransformer2DModel

    from generators.defectdiffu.lightning_model import DefectDiffu
    from generators.defectdiffu.torch_model import TINY, TdiaTransformer

    torch.manual_seed(0)
    config = {k: v for k, v in TINY.items() if k not in ("cross_attention_dim", "blocks")}
    DiTTransformer2DModel(**config, num_layers=sum(TINY["blocks"]), norm_type="ada_norm_zero").save_pretrained(
        tmp_path / "dit")
    dit = DefectDiffu._load_dit(tmp_path / "dit")
    tdia = TdiaTransformer(**TINY)
    new = tdia.load_dit(dit)
    assert new and all(".attn2." in k for k in new)  # only the added cross-attention is new
    assert torch.equal(tdia.pos_embed.proj.weight, dit.pos_embed.proj.weight)


def test_smoke_uses_the_pretrained_tdia_its_pca_latent_and_cell_masks(split):
    from generators.defectdiffu.tiny_dit import LinearSkipTdia, load_tiny_demo_dit
    from generators.diffusion.tiny_demo import PatchPCAAutoencoder

    generator = _generator(split)
    assert isinstance(generator.transformer, LinearSkipTdia) and isinstance(generator.vae, PatchPCAAutoencoder)
    assert generator.latent_channels == 32 and generator.mask_module.out.out_channels == 1
    _, _, mask_state = load_tiny_demo_dit()  # the mask module starts from the pre-trained one
    assert all(torch.equal(v, generator.mask_module.state_dict()[k]) for k, v in mask_state.items())
    masks = torch.zeros(1, 1, 128, 128)
    masks[..., :8, :4] = 1  # half of latent cell (0, 0): area 0.5 -> grey 0; every other cell -> -1
    target = generator.mask_latent_target(masks, (16, 16))
    assert target.shape == (1, 1, 16, 16) and target[0, 0, 0, 0] == 0 and (target.flatten()[1:] == -1).all()
    latent = torch.full((1, 1, 16, 16), -1.0)
    latent[..., 4:, :] = 1.0  # rows of cells 4..15 in the mask: pixel rows >= 36 (half a cell of blending)
    gray = generator.mask_image(latent)
    assert gray.shape == (1, 128, 128) and gray[0, :28].max() == 0 and gray[0, 36:].min() == 255
    assert generator.vae in generator.frozen_modules() and not any(p.requires_grad for p in generator.vae.parameters())
    # the random `tiny` TDIA on the backbone's own (pixel-unshuffle, 192-channel) latent still builds
    random_tiny = _generator(split, transformer="tiny", mask_latent="vae")
    assert random_tiny.latent_channels == 192 and random_tiny.mask_module.out.out_channels == 192


def test_tiny_demo_dit_with_another_text_encoder_is_refused_in_one_line(split):
    with pytest.raises(BenchError) as err:
        _generator(split, blocks=(1, 2, 1))
    assert "\n" not in str(err.value) and "backbone=tiny" in str(err.value)


def test_tiny_demo_dit_with_another_mask_module_is_refused_in_one_line(split):
    with pytest.raises(BenchError) as err:
        _generator(split, mask_hidden=16)
    assert "\n" not in str(err.value) and "mask_hidden=32 mask_latent=cell" in str(err.value)


def test_fit_trains_the_tdia_and_the_mask_module_only(fitted):
    generator, before = fitted
    after = generator.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"transformer", "mask_module"}
    # the defect blocks' cross-attention moved (AAL and the mask loss reach it)
    layer = generator.defect_layers[0].replace(".attn2", "")
    key = f"transformer.{layer}.attn2.to_k.weight"
    assert not torch.equal(before[key], after[key])
    assert set(generator.trained_state()) == {"transformer", "mask_module"}


def test_training_step_applies_algorithm_1_dropout(fitted, monkeypatch):
    """The prompts reaching the loss went through Algorithm 1: over 40 defect samples some lose their
    product and some defects become "good" (seeded; with no dropout at all the chance of that would
    be 0.64^40 and 0.8^40), and the fit's RNG drives the draws (same RNG state, same prompts)."""
    generator, _ = fitted
    seen = []
    monkeypatch.setattr(generator, "defectdiffu_loss",
                        lambda x0, masks, target, products, defects, rng: seen.append((products, defects))
                        or {"loss": torch.zeros(())})
    monkeypatch.setattr(generator, "log_dict", lambda *a, **k: None)
    images, masks = torch.rand(2, 3, 128, 128) * 2 - 1, torch.zeros(2, 1, 128, 128)
    ids = torch.tensor([0, 1])
    generator._train_rng = torch.Generator().manual_seed(3)
    for _ in range(20):
        generator.training_step((images, masks, ids), 0)
    products = [p for ps, _ in seen for p in ps]
    defects = [d for _, ds in seen for d in ds]
    known = {c.split("/", 1)[1] for c in generator.train_set.concepts}
    assert None in products and "good" in defects and set(defects) - {"good"} <= known
    first = seen[:]
    seen.clear()
    generator._train_rng = torch.Generator().manual_seed(3)
    for _ in range(20):
        generator.training_step((images, masks, ids), 0)
    assert seen == first


def test_loss_is_eq_11_sum_of_its_terms(fitted, split):
    """Same draws, lambda 0.2 vs 0: the totals differ by 0.2 x loss_m, and the terms are finite."""
    generator, _ = fitted
    from generators.diffusion.latents import encode_images

    images = torch.rand(2, 3, 128, 128) * 2 - 1
    masks = torch.zeros(2, 1, 128, 128)
    masks[:, :, 40:72, 50:90] = 1
    x0 = encode_images(generator.vae, images)
    target = generator.mask_latent_target(masks, x0.shape[-2:])
    args = (x0, masks, target, ["wood", None], ["hole", "good"])
    with torch.no_grad():
        with_mask = generator.defectdiffu_loss(*args, torch.Generator().manual_seed(1))
        generator.options = generator.options.model_copy(update={"lambda_mask": 0.0})
        without = generator.defectdiffu_loss(*args, torch.Generator().manual_seed(1))
        generator.options = generator.options.model_copy(update={"lambda_mask": 0.2})
    assert torch.allclose(with_mask["loss"] - without["loss"], 0.2 * with_mask["loss_m"], atol=1e-6)
    assert 2.0 <= with_mask["r"] <= 8.0 and all(torch.isfinite(v) for v in with_mask.values())


def test_sampling_three_evaluations_per_step_and_predicted_masks(fitted, split):
    generator, _ = fitted
    requests = generator.plan(split, seed=0)
    assert len(requests) == 2 * 2 * 3 and all(r.mask is None for r in requests)  # no given masks
    calls = []
    def count(module, args, kwargs):
        calls.append(len(args[0] if args else kwargs["hidden_states"]))

    handle = generator.transformer.register_forward_pre_hook(count, with_kwargs=True)
    try:
        pairs = generator.predict_step(requests[:2])
    finally:
        handle.remove()
    assert calls == [3 * 2] * 3  # sampling_steps 3, each one batched call of the three Eq. 4 conditions
    for pair in pairs:
        assert pair.mask_origin == MASK_PREDICTED
        assert pair.image.shape == (128, 128, 3) and pair.image.dtype == np.uint8
        assert pair.mask.shape == (128, 128) and pair.mask.dtype == bool


def test_a_pair_depends_on_its_request_alone(fitted, split):
    generator, _ = fitted
    requests = generator.plan(split, seed=0)
    together = generator.predict_step(requests[:3])
    alone = generator.predict_step([requests[2]])
    # the same noise and w_d; only the float rounding of a batch of 3 vs 1 differs (measured: one
    # pixel off by one grey level of 49152 values)
    diff = np.abs(together[2].image.astype(int) - alone[0].image.astype(int))
    assert diff.max() <= 1 and diff.mean() < 1e-3 and np.array_equal(together[2].mask, alone[0].mask)
    other = generator.predict_step([requests[3]])[0]  # another request: another image
    assert np.abs(other.image.astype(int) - alone[0].image.astype(int)).mean() > 10


def test_w_d_sweep_cycles_by_request_index(fitted, split):
    generator, _ = fitted
    requests = generator.plan(split, seed=0)  # ids .../00000, .../00001 per type
    w = generator.w_d_of([requests[1], requests[0], requests[3]])[:, 0, 0, 0]
    assert w.tolist() == [1.5, 1.0, 1.5]  # smoke sweep (1.0, 1.5, 2.0): index 1, 0, 1
    generator.options = generator.options.model_copy(update={"w_d_sweep": ()})
    try:
        assert generator.w_d_of(requests[:2])[:, 0, 0, 0].tolist() == [1.0, 1.0]  # the fixed w_d
    finally:
        generator.options = generator.options.model_copy(update={"w_d_sweep": (1.0, 1.5, 2.0)})


def test_zero_shot_targets_get_defects_learned_on_other_products(split):
    # wood keeps its normal images but no defects: its requests come from pill's learned defects (Eq. 12)
    wood = replace(split.categories["wood"], train_defects={})
    zero_shot = replace(split, categories={"wood": wood, "pill": split.categories["pill"]})
    generator = _generator(zero_shot, zero_shot_targets=("wood",))
    requests = generator.plan(zero_shot, seed=0)
    wood_types = sorted({r.defect for r in requests if r.category == "wood"})
    assert wood_types == sorted(split.categories["pill"].defect_types)  # crack, scratch, stain
    assert [generator.request_defect(r) for r in requests if r.category == "wood"][:1] == [wood_types[0]]
    plain = _generator(zero_shot)
    wood_request = next(r for r in requests if r.category == "wood")
    with pytest.raises(BenchError, match="zero_shot_targets"):
        plain.request_defect(wood_request)
    with pytest.raises(BenchError, match="not products of the split"):
        _generator(zero_shot, zero_shot_targets=("bottle",))
