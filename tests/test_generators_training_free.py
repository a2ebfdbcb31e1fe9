"""The training-free generators and the synthetic set they write (format, atomicity, resume)."""

import json

import lightning as L
import numpy as np
import pytest
from torch.utils.data import DataLoader

from benchmark.config import resolve_options
from benchmark.data.demo import demo_dataset_path
from benchmark.data.images import load_image, load_mask
from benchmark.data.layouts import read_dataset
from benchmark.data.split import few_shot_split
from benchmark.registry import GENERATORS
from benchmark.synthetic import SyntheticSet, SyntheticSetWriter
from generators.base import MASK_SYNTHESIZED, collate_requests
from generators.baselines.draem import perlin_noise

SIZE = 64


@pytest.fixture(scope="module")
def split(private_cache):
    cats = read_dataset(demo_dataset_path(private_cache), "mvtec")
    return few_shot_split(cats)


def make(name, split, **options):
    cls = GENERATORS.load(name)
    gen = cls(resolve_options(cls, "smoke", {"pairs_per_type": 3, **options}), SIZE)
    gen.setup_split(split)
    return gen


def generate(gen, split, root, callbacks=()):
    syn = SyntheticSet(root)
    requests = gen.plan(split, seed=0)
    pending = syn.pending(requests)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[SyntheticSetWriter(syn, gen.name), *callbacks])
    trainer.predict(gen, DataLoader(pending, batch_size=2, collate_fn=collate_requests), return_predictions=False)
    syn.merge_manifests()
    return syn, requests


@pytest.mark.parametrize("name", ["cutpaste", "draem"])
def test_pairs_are_defects_on_normal_images(name, split):
    gen = make(name, split)
    requests = gen.plan(split, seed=0)
    n_types = sum(len(c.defect_types) for c in split.categories.values())
    assert len(requests) == 3 * n_types and len({r.id for r in requests}) == len(requests)
    pairs = gen.predict_step(requests[:4])
    for req, pair in zip(requests[:4], pairs):
        normal = load_image(req.normal_image, SIZE)
        assert pair.image.shape == (SIZE, SIZE, 3) and pair.image.dtype == np.uint8
        assert pair.mask.shape == (SIZE, SIZE) and pair.mask.dtype == bool
        assert 0 < pair.mask.mean() < 0.9
        assert pair.mask_origin == MASK_SYNTHESIZED
        changed = np.abs(pair.image.astype(int) - normal).sum(-1) > 0
        assert not changed[~pair.mask].any(), "pixels outside the mask must stay untouched"
        assert changed[pair.mask].mean() > 0.3, "most mask pixels must change"


@pytest.mark.parametrize("name", ["cutpaste", "draem"])
def test_same_seed_same_pairs(name, split):
    a = make(name, split).predict_step(make(name, split).plan(split, 0)[:3])
    b = make(name, split).predict_step(make(name, split).plan(split, 0)[:3])
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)
    c = make(name, split).plan(split, 1)[:3]
    assert [r.seed for r in c] != [r.seed for r in make(name, split).plan(split, 0)[:3]]


def test_real_only_plans_nothing(split):
    assert make("real-only", split).plan(split, 0) == []


def test_draem_reads_a_source_folder_and_rejects_an_empty_one(split, tmp_path):
    from benchmark.errors import BenchError

    with pytest.raises(BenchError, match="no images"):
        make("draem", split, source_dir=str(tmp_path))
    some = next(iter(split.categories.values())).train_good[0].image
    (tmp_path / "tex.png").write_bytes(some.read_bytes())
    gen = make("draem", split, source_dir=str(tmp_path))
    assert gen.source_files == [str(tmp_path / "tex.png")]
    assert gen.predict_step(gen.plan(split, 0)[:1])[0].mask.any()


def test_perlin_noise_is_smooth_and_zero_on_the_lattice():
    noise = perlin_noise((64, 64), (4, 4), np.random.default_rng(0))
    assert noise.shape == (64, 64)
    assert np.allclose(noise[::16, ::16], 0, atol=1e-9)  # gradient noise vanishes at lattice points
    assert np.abs(np.diff(noise, axis=0)).max() < 0.2


def test_synthetic_set_layout_and_manifest(split, tmp_path):
    gen = make("cutpaste", split)
    syn, requests = generate(gen, split, tmp_path / "set")
    records = syn.records()
    assert [r["id"] for r in records] == sorted(r.id for r in requests)
    assert list(tmp_path.joinpath("set").glob("manifest*.jsonl")) == [tmp_path / "set" / "manifest.jsonl"]
    for r in records:
        cat, defect, stem = r["id"].split("/")
        assert r["image"] == f"images/{cat}/{defect}/{stem}.png" and r["mask"] == f"masks/{cat}/{defect}/{stem}.png"
        mask = np.asarray(__import__("PIL.Image").Image.open(syn.root / r["mask"]))
        assert set(np.unique(mask)) <= {0, 255}
        assert {"source_image", "mask_origin", "seed", "generator", "category", "defect"} <= set(r)
    assert not list(syn.root.rglob("*.tmp"))


class Crash(L.Callback):
    def __init__(self, after):
        self.after, self.seen = after, 0

    def on_predict_batch_end(self, *args, **kwargs):
        self.seen += 1
        if self.seen == self.after:
            raise RuntimeError("simulated kill")


def test_killed_generation_resumes_to_the_same_set(split, tmp_path):
    full, _ = generate(make("draem", split), split, tmp_path / "full")
    with pytest.raises(RuntimeError, match="simulated kill"):
        generate(make("draem", split), split, tmp_path / "resumed", callbacks=[Crash(after=2)])
    partial = SyntheticSet(tmp_path / "resumed")
    assert 0 < len(partial) < len(full)
    # a torn manifest line (killed mid-write) must not break the resume
    shard = next((tmp_path / "resumed").glob("manifest*.jsonl"))
    shard.write_text(shard.read_text() + '{"id": "half')
    resumed, _ = generate(make("draem", split), split, tmp_path / "resumed")
    a, b = full.records(), resumed.records()
    assert [r["id"] for r in a] == [r["id"] for r in b]
    lines = (tmp_path / "resumed" / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == len({json.loads(line)["id"] for line in lines}) == len(a)
    for r in a:
        assert (full.root / r["image"]).read_bytes() == (resumed.root / r["image"]).read_bytes()
        assert np.array_equal(load_mask((full.root / r["mask"],)), load_mask((resumed.root / r["mask"],)))
