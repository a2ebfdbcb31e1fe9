"""LatentDiffusionGenerator on the tiny backbone: backbone checks, request encoding and pair
decoding, the plain-prompt path, a fit batch augmented by the `augment` hook and encoded,
trained-part checkpoints (generator.pt and Lightning's), and a fit killed mid-way that resumes
from its Lightning checkpoint to the weights of an uninterrupted fit."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from benchmark.data.images import load_mask  # noqa: E402
from benchmark.errors import BenchError  # noqa: E402
from generators.diffusion.few_shot import place_mask  # noqa: E402
from generators.diffusion.generator import LatentDiffusionGenerator, LatentDiffusionOptions  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def split(tmp_path_factory, make_toy_split):
    """1 category x 2 defect types at 32 px, 2 few-shot defects each, 2 normal images."""
    return make_toy_split(tmp_path_factory.mktemp("ldm-data"), 32,
                              boxes=(("hole", (4, 12, 6, 14)), ("scratch", (20, 22, 2, 30))))


class ToyOptions(LatentDiffusionOptions):
    shift: float = 1.0


class ToyGenerator(LatentDiffusionGenerator):
    """The smallest method: a learned per-channel offset added to the frozen U-Net's noise
    prediction (trained with the plain epsilon loss), and a "sampler" that adds `shift` to the
    background latent inside the mask, so every output is known in advance."""

    name = "toy"
    Options = ToyOptions

    def __init__(self, options, image_size):
        super().__init__(options, image_size)
        self.offset = nn.Conv2d(self.backbone.latent_channels, self.backbone.latent_channels, 1)

    def trained_parts(self):
        return {**super().trained_parts(), "offset": self.offset}

    def training_loss(self, x0, m0, context, rng):
        index = self.draw_timesteps(len(x0), rng)
        eps = self.draw_noise(x0, rng)
        a = self.abar[index].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        pred = self.offset(self.unet(x_t, index, encoder_hidden_states=context).sample)
        return {"loss": ((pred - eps) ** 2).mean()}

    def sample(self, batch):
        return batch.x_back + self.options.shift * batch.m0


def _toy(**kw):
    base = dict(backbone="tiny", train_steps=4, train_batch_size=2, sampling_steps=4, pairs_per_type=2,
                tokens_per_type=2, batch_size=2)
    return ToyGenerator(ToyOptions(**{**base, **kw}), 32)


def _trainer(**kw):
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, max_epochs=-1, **kw)


def test_backbone_checks_name_resolution_and_T():
    with pytest.raises(BenchError, match=r"not a multiple of 16 .*generator.options.resolution=32 \(or 48\)"):
        ToyGenerator(ToyOptions(backbone="tiny", resolution=40), 32)
    with pytest.raises(BenchError, match=r"pass --image-size 16, or .* generator.options.resolution=16$"):
        ToyGenerator.preflight(ToyOptions(backbone="tiny"), 8)  # no multiple below: only the one above
    with pytest.raises(BenchError, match="within T = 1000"):
        _toy(sampling_steps=1001)
    gen = _toy(resolution=64)
    assert gen.latent_size == 64 // gen.backbone.vae_scale_factor and gen.T == 1000
    assert gen.timesteps[0] == 999 and len(gen.timesteps) == 4  # trailing spacing starts at t = T
    assert all(not p.requires_grad for p in gen.unet.parameters())


def test_requests_encode_and_pairs_decode(split):
    gen = _toy()
    gen.setup_split(split)
    assert gen.tokens.concepts == ["wood/hole", "wood/scratch"]
    requests = gen.plan(split, seed=0)
    enc = gen.encode_requests(requests[:2])
    c, h = gen.backbone.latent_channels, gen.latent_size
    assert enc.x_back.shape == (2, c, h, h) and enc.m0.shape == (2, 1, h, h)
    assert enc.context.shape[:2] == (2, gen.backbone.max_length)
    for r, m in zip(requests[:2], enc.masks):
        assert np.array_equal(m, place_mask(load_mask(list(r.mask), 32), np.random.default_rng(r.seed)))
    pairs = gen.predict_step(requests[:2])
    cell = np.ones((gen.backbone.vae_scale_factor,) * 2, bool)
    for p, m, m0 in zip(pairs, enc.masks, enc.m0[:, 0].bool().numpy()):
        assert np.array_equal(p.mask, m)
        normal = np.asarray(Image.open(p.request.normal_image).convert("RGB"))
        # the tiny autoencoder is lossless: outside the latent mask's cells the normal image comes back exactly
        outside = ~np.kron(m0, cell)
        assert outside.sum() > 0 and np.array_equal(p.image[outside], normal[outside])
        assert not np.array_equal(p.image[m], normal[m])
    big = _toy(resolution=64)  # generated at 64 px, returned at the run's 32 px
    big.setup_split(split)
    assert big.predict_step(requests[:1])[0].image.shape == (32, 32, 3)
    gen_without = _toy(tokens_per_type=0)
    assert gen_without.tokens is None and gen_without.context([""], ["wood hole"]).shape == enc.context[:1].shape
    unknown = type(requests[0])(**{**requests[0].__dict__, "category": "tile"})
    with pytest.raises(BenchError, match="no learned tokens for tile/hole"):
        gen.encode_requests([unknown])
    # each concept's own learned tokens follow the text: move one concept's vectors, only its context moves
    hole, scratch = gen.context(["wood/hole"], ["wood"]), gen.context(["wood/scratch"], ["wood"])
    with torch.no_grad():
        gen.tokens.vectors[gen.tokens.concepts.index("wood/scratch")] += 1.0
    assert torch.equal(gen.context(["wood/hole"], ["wood"]), hole)
    assert not torch.allclose(gen.context(["wood/scratch"], ["wood"]), scratch)


class MirroredToy(ToyGenerator):
    """Augments by a left-right mirror, so the fit batch's latent masks are known in advance."""

    def augment(self, images, masks, rng):
        return images.flip(-1), masks.flip(-1)


def test_a_fit_batch_is_augmented_by_the_hook_then_encoded(split):
    from generators.diffusion.latents import encode_images

    gen = MirroredToy(ToyOptions(backbone="tiny", tokens_per_type=2), 32)
    gen.setup_split(split)
    gen.train_dataloader()
    gen._train_rng = torch.Generator().manual_seed(0)
    (hole, hole_mask, k_hole), (scratch, scratch_mask, k_scratch) = gen.train_set[0], gen.train_set[2]
    # a third image past the concepts' rows (as SeaS appends normal images), with an empty mask
    images = torch.stack([hole, scratch, torch.zeros_like(hole)])
    masks = torch.stack([hole_mask, scratch_mask, torch.zeros_like(hole_mask)])
    data = gen.encode_train_batch(images, masks, torch.tensor([k_hole, k_scratch]))
    assert torch.equal(data.x0, encode_images(gen.vae, images.flip(-1))) and torch.equal(data.masks, masks.flip(-1))
    # 8 px cells: the hole (rows 4-11, columns 6-13) mirrored to columns 18-25 lies in cell rows 0-1,
    # cell columns 2-3; the scratch (rows 20-21, columns 2-29) in cell row 2, every column
    hole_cells = [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    scratch_cells = [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    assert data.m0[:, 0].tolist() == [hole_cells, scratch_cells, [[0] * 4] * 4]
    assert data.concept_ids == [0, 1] and data.concepts == ["wood/hole", "wood/scratch"]
    assert data.texts == ["wood hole", "wood scratch"]


def _state(gen):
    return {k: [t.clone() for t in v["vectors"]] if k == "tokens" else {n: t.clone() for n, t in v.items()}
            for k, v in gen.trained_state().items()}


def _equal(a, b):
    return a.keys() == b.keys() and all(
        all(torch.equal(x, y) for x, y in zip(a[k], b[k])) if k == "tokens" else
        all(torch.equal(a[k][n], b[k][n]) for n in a[k]) for k in a)


def test_checkpoints_hold_the_trained_parts_only(split, tmp_path):
    gen = _toy()
    gen.setup_split(split)
    trainer = _trainer(max_steps=2)
    trainer.fit(gen)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert {k.split(".")[0] for k in ckpt["state_dict"]} == {"tokens", "offset"}
    assert ckpt["concepts"] == ["wood/hole", "wood/scratch"]
    gen.save_trained(tmp_path / "toy.pt")
    fresh = _toy()
    fresh.load_trained(tmp_path / "toy.pt")  # registers the concepts by name, then loads
    assert fresh.tokens.concepts == gen.tokens.concepts and _equal(_state(fresh), _state(gen))


class _Killed(Exception):
    pass


class _KillAt(L.Callback):
    """Saves the Lightning checkpoint after `step` and dies, as a killed process would."""

    def __init__(self, step, path):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            raise _Killed


@pytest.mark.parametrize("kind", ["toy", "stage"])
def test_a_fit_killed_mid_way_resumes_to_the_weights_of_an_uninterrupted_fit(split, tmp_path, kind):
    def make():
        torch.manual_seed(0)
        if kind == "toy":
            gen = _toy(train_steps=6)
        else:
            from generators.stage.lightning_model import StageGenerator, StageOptions

            gen = StageGenerator(StageOptions(backbone="tiny", train_steps=6, train_batch_size=2, sampling_steps=4,
                                              adapter_channels=(8,), tokens_per_type=2), 32)
        gen.setup_split(split)
        return gen

    straight = make()
    _trainer(max_steps=6).fit(straight)
    killed = make()
    with pytest.raises(_Killed):
        _trainer(max_steps=6, callbacks=[_KillAt(3, tmp_path / "last.ckpt")]).fit(killed)
    assert not _equal(_state(killed), _state(straight))
    resumed = make()
    starts = []

    class Start(L.Callback):
        def on_train_start(self, trainer, module):
            starts.append(trainer.global_step)

    _trainer(max_steps=6, callbacks=[Start()]).fit(resumed, ckpt_path=tmp_path / "last.ckpt", weights_only=True)
    assert starts == [3]
    assert _equal(_state(resumed), _state(straight))


def test_the_example_method_of_docs_diffusion_md_fits_and_generates(split):
    """The 20-line method in docs/diffusion.md runs as printed: a 2-step fit, then pairs that keep
    the normal image outside the mask's latent cells."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "diffusion.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(compile(code, "docs/diffusion.md", "exec"), namespace)
    cls = namespace["BlendGenerator"]
    gen = cls(cls.Options(backbone="tiny", train_steps=2, train_batch_size=2, sampling_steps=3, tokens_per_type=2), 32)
    gen.setup_split(split)
    _trainer(max_steps=2).fit(gen)
    requests = gen.plan(split, seed=0)[:2]
    enc = gen.encode_requests(requests)
    pairs = gen.predict_step(requests)
    cell = np.ones((gen.backbone.vae_scale_factor,) * 2, bool)
    for p, m0 in zip(pairs, enc.m0[:, 0].bool().numpy()):
        normal = np.asarray(Image.open(p.request.normal_image).convert("RGB"))
        outside = ~np.kron(m0, cell)
        assert np.array_equal(p.image[outside], normal[outside]) and not np.array_equal(p.image, normal)
