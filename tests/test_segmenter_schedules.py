"""Training length and LR schedules of the segmenters: `paper` presets count epochs where their
sources do (and keep that count on a training set of another size), the mmseg presets equal the
packaged configs they cite, and the learning rate the library schedulers give at several steps
equals the cited schedule's formula written out by hand with the cited numbers."""

import importlib.util
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from benchmark.config import build_config, resolve_options
from benchmark.progress import RunProgress
from benchmark.registry import SEGMENTERS
from benchmark.run.context import RunContext
from benchmark.run.interrupt import StopRequest
from benchmark.run.stages import training_steps
from benchmark.segmentation_data import SegItem, SegmentationDataModule
from segmenters import mmseg_models
from segmenters.base import Segmenter, torch_lr_schedulers

MMSEG = ("bisenetv2", "stdc", "upernet", "segformer")


def _lrs(scheduler_configs, optimizer, steps, group=0, optimizer_steps=True):
    """lr of `group` before each of `steps` optimizer steps, stepping like Lightning does
    (`optimizer_steps=False` skips the parameter update, which changes no learning rate)."""
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[group]["lr"])
        if optimizer_steps:
            optimizer.step()
        for config in scheduler_configs:
            config["scheduler"].step()
    return out


def _optimizer(lr):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


# -- epochs where the papers count epochs --------------------------------------------------------
def test_paper_presets_count_epochs_or_iterations_as_their_sources():
    counts = {name: resolve_options(SEGMENTERS.load(name), "paper", {}) for name in
              ("unet-draem", "unet", "lfd", *MMSEG)}
    for name in ("unet-draem", "unet"):  # BADG Sec. 4.3.1 / AnomalyDiffusion: 200 epochs of 500 draws
        o = counts[name]
        assert (o.max_epochs, o.max_steps, o.epoch_samples, o.batch_size) == (200, None, 500, 8), name
    lfd = counts["lfd"]  # LFD.yaml: a 150-epoch schedule, SeaS evaluates epoch 100 on MVTec AD
    assert (lfd.max_epochs, lfd.schedule_epochs, lfd.max_steps, lfd.epoch_samples) == (100, 150, None, None)
    assert counts["lfd"].schedule == "cosine" and counts["lfd"].min_lr == 1e-5  # LFD's lr_scheduler.py
    for name in MMSEG:  # IterBasedTrainLoop configs: iterations
        assert counts[name].max_epochs is None and counts[name].max_steps in (80_000, 160_000), name


def _items(n):
    return [SegItem(f"{i}.png", (), "c", str(i), "normal") for i in range(n)]


@pytest.mark.parametrize("name, per_epoch", [("unet-draem", {37: 63, 2000: 63}), ("lfd", {37: 4, 2000: 250})])
def test_a_paper_config_keeps_its_epochs_on_training_sets_of_other_sizes(name, per_epoch):
    o = resolve_options(SEGMENTERS.load(name), "paper", {})
    for n, batches in per_epoch.items():
        data = SegmentationDataModule(_items(n), 16, o.batch_size, seed=0, epoch_samples=o.epoch_samples)
        assert data.batches_per_epoch() == batches  # 500 draws = 62 full batches + one of 4
        assert training_steps(o.max_steps, o.max_epochs, batches) == o.max_epochs * batches
    assert training_steps(100, 3, 50) == 100 and training_steps(100, 1, 50) == 50  # whichever ends first


class TinySegmenter(Segmenter):
    """A 1x1 conv with the unet-draem options, so a fit of 200 epochs takes seconds."""

    name = "tiny"
    Options = SEGMENTERS.load("unet-draem").Options

    def build_model(self):
        return nn.Conv2d(3, 2, 1)


def _image_folder(root, n):
    rng = np.random.default_rng(n)
    root.mkdir()
    items = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"{i}.png")
        items.append(SegItem(str(root / f"{i}.png"), (), "c", str(i), "normal"))
    return items


def test_runner_fit_of_a_paper_config_runs_the_papers_epochs_whatever_the_set_size(tmp_path):
    """The unet-draem `paper` schedule (200 epochs, MultiStepLR x0.2 at epochs 160 and 180) run by
    the runner's fit on sets of 5 and 40 images; epochs shortened to one batch of 4 draws."""
    o = resolve_options(SEGMENTERS.load("unet-draem"), "paper", {"epoch_samples": 4, "batch_size": 4})
    for n in (5, 40):
        torch.manual_seed(0)
        ctx = RunContext(cfg=build_config("smoke"), folder=SimpleNamespace(root=tmp_path / f"run{n}"),
                         cache=tmp_path, progress=RunProgress(quiet=True), stop=StopRequest(), generator_cls=None,
                         segmenter_cls=TinySegmenter, generator_options=None, segmenter_options=o)
        data = SegmentationDataModule(_image_folder(tmp_path / f"set{n}", n), 8, o.batch_size, seed=0,
                                      epoch_samples=o.epoch_samples)
        steps = training_steps(o.max_steps, o.max_epochs, data.batches_per_epoch())
        model = TinySegmenter(o)
        trainer = ctx.fit(model, tmp_path / f"ckpt{n}", o.max_steps, ("train", steps), max_epochs=o.max_epochs,
                          total_steps=steps, datamodule=data)
        assert (trainer.current_epoch, trainer.global_step, steps) == (200, 200, 200)
        assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-4 * 0.2 * 0.2)


# -- learning rates against the cited formulas ---------------------------------------------------
def test_multistep_by_epoch_drops_at_epochs_160_and_180():
    o = resolve_options(SEGMENTERS.load("unet-draem"), "paper", {})
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=o.lr)
    (config,) = torch_lr_schedulers(opt, o, total_steps=200 * 63)
    assert config["interval"] == "epoch"
    lrs = _lrs([config], opt, 200)  # one scheduler step per epoch
    # AnomalyDiffusion: MultiStepLR(milestones=[200*0.8, 200*0.9], gamma=0.2), stepped after each epoch
    for epoch in (0, 159, 160, 179, 180, 199):
        want = 1e-4 if epoch < 160 else (2e-5 if epoch < 180 else 4e-6)
        assert lrs[epoch] == pytest.approx(want, rel=1e-12), epoch


def test_lfd_cosine_matches_lfds_schedule_by_hand():
    o = resolve_options(SEGMENTERS.load("lfd"), "paper", {})
    total = 150 * 40  # 150 epochs of a 40-batch set
    opt = _optimizer(o.lr)
    lrs = _lrs(torch_lr_schedulers(opt, o, total), opt, total)
    for t in (0, 1, 1234, total // 2, total - 1):
        # LFD's LR_Scheduler: final + (base - final)/2 * (1 + cos(pi * i / decay_iter)) at iteration i
        want = 1e-5 + 0.5 * (0.01 - 1e-5) * (1 + math.cos(math.pi * t / total))
        assert lrs[t] == pytest.approx(want, rel=1e-9), t


def test_lfd_paper_stops_at_epoch_100_of_its_150_epoch_cosine(tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader

    from segmenters.lfd import LFDRoadSeg

    class TinyLFD(LFDRoadSeg):
        def build_model(self):
            return nn.Conv2d(3, 2, 1)

    # the paper preset with epochs shortened 50x (2 of a 3-epoch schedule), 5 batches per epoch
    o = resolve_options(LFDRoadSeg, "paper", {"max_epochs": 2, "schedule_epochs": 3, "batch_size": 2,
                                              "loss": "ce"})
    data = [{"image": torch.rand(3, 8, 8), "mask": torch.zeros(8, 8, dtype=torch.long), "category": "c", "id": "i"}] * 10
    model = TinyLFD(o)
    trainer = L.Trainer(accelerator="cpu", max_epochs=o.max_epochs, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(data, batch_size=2))
    assert (trainer.current_epoch, trainer.global_step) == (2, 10)
    # after 10 of the 15 iterations of LFD's cosine: 1e-5 + (0.01 - 1e-5)/2 (1 + cos(pi 10/15))
    want = 1e-5 + 0.5 * (0.01 - 1e-5) * (1 + math.cos(math.pi * 10 / 15))
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(want, rel=1e-9)


def test_torch_poly_with_warmup_matches_mmsegs_chain_by_hand():
    o = resolve_options(SEGMENTERS.load("unet"), "smoke", {"warmup_steps": 10, "warmup_ratio": 0.1})
    opt = _optimizer(o.lr)
    lrs = _lrs(torch_lr_schedulers(opt, o, 400), opt, 400)
    assert lrs[0] == pytest.approx(1e-4)  # 0.1 x lr
    assert lrs[5] == pytest.approx(1e-3 * (0.1 + 0.9 * 5 / 10))
    for t in (10, 11, 200, 399):
        assert lrs[t] == pytest.approx(1e-3 * (1 - (t - 10) / 390) ** 0.9, rel=1e-9), t


def test_smoke_unet_poly_is_the_previous_schedule_in_float32():
    """The U-Net smoke profile (the CI gate's) keeps its LR sequence: 1e-3 (1 - t/400)^0.9."""
    o = resolve_options(SEGMENTERS.load("unet"), "smoke", {})
    opt = _optimizer(o.lr)
    lrs = np.float32(_lrs(torch_lr_schedulers(opt, o, o.max_steps), opt, o.max_steps))
    hand = np.float32([1e-3 * (1 - t / 400) ** 0.9 for t in range(400)])
    assert np.array_equal(lrs, hand)


# -- mmseg: presets equal the packaged configs; mmengine's schedulers and parameter groups ------
needs_mmseg = pytest.mark.skipif(importlib.util.find_spec("mmseg") is None, reason="the mmseg extra is not installed")


@needs_mmseg
@pytest.mark.parametrize("name", MMSEG)
def test_mmseg_paper_presets_equal_the_packaged_configs_they_cite(name):
    cls = SEGMENTERS.load(name)
    recipe = mmseg_models.packaged_recipe(cls.recipe)
    o = resolve_options(cls, "paper", {})
    assert o.max_steps == recipe["max_iters"] and o.batch_size == recipe["batch_size"]
    opt = recipe["optimizer"]
    assert (o.optimizer, o.lr, o.weight_decay) == (opt["type"].lower(), opt["lr"], opt["weight_decay"])
    *warmup, poly = recipe["param_scheduler"]
    assert poly["type"] == "PolyLR" and (o.poly_power, o.min_lr) == (poly["power"], poly["eta_min"])
    assert poly["end"] == o.max_steps and poly["begin"] == o.warmup_steps
    if warmup:
        assert warmup[0]["type"] == "LinearLR" and (o.warmup_steps, o.warmup_ratio) == \
            (warmup[0]["end"], warmup[0]["start_factor"])
    if recipe["paramwise_cfg"]:
        assert recipe["paramwise_cfg"]["custom_keys"]["head"]["lr_mult"] == o.head_lr_mult
    if name == "stdc":  # stdc2 (variant=stdc2) has the same recipe
        assert mmseg_models.packaged_recipe("stdc/stdc2_4xb12-80k_cityscapes-512x1024.py") == recipe


def _tiny(name, modules, profile="paper"):
    """A registered mmseg segmenter class whose network is `modules` (named like mmseg's)."""
    cls = SEGMENTERS.load(name)
    tiny = type(f"Tiny{cls.__name__}", (cls,), {"build_model": lambda self: nn.ModuleDict(modules)})
    return tiny(resolve_options(cls, profile, {}))


@needs_mmseg
def test_bisenetv2_paper_lr_is_the_configs_warmup_and_poly_by_hand():
    seg = _tiny("bisenetv2", {"backbone": nn.Linear(2, 2)})
    opt = seg.build_optimizer()
    lrs = _lrs(seg.lr_schedulers(opt), opt, 160_000, optimizer_steps=False)
    # bisenetv2_fcn_4xb4-160k: LinearLR(start_factor=0.1, begin=0, end=1000), PolyLR(eta_min=1e-4,
    # power=0.9, begin=1000, end=160000); mmengine spans [begin, end - 1] (total_iters = end - begin - 1)
    for t in (0, 1, 500, 998, 999):
        assert lrs[t] == pytest.approx(0.05 * (0.1 + 0.9 * t / 999), rel=1e-9), t
    for t in (1000, 1001, 50_000, 159_000, 159_999):
        assert lrs[t] == pytest.approx(1e-4 + (0.05 - 1e-4) * (1 - (t - 1000) / 158_999) ** 0.9, rel=1e-6), t
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["momentum"] == 0.9


@needs_mmseg
def test_segformer_parameter_groups_and_lrs_follow_the_configs_paramwise_cfg():
    seg = _tiny("segformer", {
        "backbone": nn.ModuleDict({"patch_embed": nn.Linear(2, 2), "norm1": nn.LayerNorm(2),
                                   "pos_block": nn.Linear(2, 2)}),
        "decode_head": nn.ModuleDict({"conv_seg": nn.Linear(2, 2), "norm": nn.LayerNorm(2)}),
    })
    opt = seg.build_optimizer()
    names = {id(p): n for n, p in seg.model.named_parameters()}
    got = {names[id(p)]: (round(g["lr"], 12), g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    # segformer_mit-b0_8xb2-160k: AdamW lr 6e-5 wd 0.01; pos_block / norm: decay x0; head: lr x10.
    # mmengine applies the first key that matches, longest first ('head' before 'norm' at equal length)
    want = {"backbone.patch_embed.weight": (6e-5, 0.01), "backbone.patch_embed.bias": (6e-5, 0.01),
            "backbone.norm1.weight": (6e-5, 0.0), "backbone.norm1.bias": (6e-5, 0.0),
            "backbone.pos_block.weight": (6e-5, 0.0), "backbone.pos_block.bias": (6e-5, 0.0),
            "decode_head.conv_seg.weight": (6e-4, 0.01), "decode_head.conv_seg.bias": (6e-4, 0.01),
            "decode_head.norm.weight": (6e-4, 0.01), "decode_head.norm.bias": (6e-4, 0.01)}
    assert got == want
    head = next(i for i, g in enumerate(opt.param_groups) if names[id(g["params"][0])].startswith("decode_head"))
    schedulers = seg.lr_schedulers(opt)
    steps = 3000
    lrs, head_lrs = [], []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        head_lrs.append(opt.param_groups[head]["lr"])
        opt.step()
        for c in schedulers:
            c["scheduler"].step()
    # LinearLR(start_factor=1e-6, end=1500), then PolyLR(power=1.0, eta_min=0, begin=1500, end=160000)
    for t in (0, 700, 1499, 1500, 2999):
        want = 6e-5 * (1e-6 + (1 - 1e-6) * t / 1499) if t < 1500 else 6e-5 * (1 - (t - 1500) / 158_499)
        assert lrs[t] == pytest.approx(want, rel=1e-6) and head_lrs[t] == pytest.approx(10 * want, rel=1e-6), t


# -- option checks across fields ----------------------------------------------------------------
def test_length_and_floor_are_checked_over_the_preset_not_before_it():
    from benchmark.errors import BenchError

    # the early check sees only the user's keys: lfd's preset supplies schedule=cosine for min_lr
    given = {"min_lr": 1e-4, "max_steps": None, "weights": "none"}
    cfg = build_config("paper", [{"segmenter": {"name": "lfd", "options": given}}])
    o = resolve_options(SEGMENTERS.load("lfd"), cfg.profile, cfg.segmenter.options)
    assert (o.min_lr, o.max_epochs, o.max_steps) == (1e-4, 100, None)
    with pytest.raises(BenchError, match="min_lr=0.001 with schedule=poly"):  # torch's poly has no floor
        resolve_options(SEGMENTERS.load("unet"), "smoke", {"min_lr": 1e-3})
    with pytest.raises(BenchError, match="give max_steps or max_epochs"):
        resolve_options(SEGMENTERS.load("lfd"), "smoke", {"max_steps": None})
