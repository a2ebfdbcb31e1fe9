"""The segmenter zoo (issue 4): published parameter counts, output contract at odd sizes, one
training step lowers the loss, local weights and no network, the mmcv.ops compatibility path.

Every model is built once per module (mmseg imports take 5-10 s, UPerNet-R50 has 64M parameters),
with outbound connections disabled for the whole module.
"""

from __future__ import annotations

import copy
import logging
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from benchmark.config import resolve_options
from benchmark.errors import BenchError
from benchmark.registry import SEGMENTERS
from segmenters import mmseg_compat
from segmenters.base import Segmenter

ROOT = Path(__file__).resolve().parents[1]

from segmenters import VARIANTS as CASES  # noqa: E402  (case id -> (registry name, options))
# 2 classes, inference graph without auxiliary heads (SeaS A.4 / DEPS.md / LFD-RoadSeg abstract)
PUBLISHED = {"bisenetv2": 3.341e6, "upernet": 64.042e6, "stdc1": 8.271e6, "stdc2": 12.301e6,
             "segformer": 3.716e6, "lfd": 0.936e6}


class NetworkAccess(AssertionError):
    pass


def refuse_connection(*args, **kwargs):
    raise NetworkAccess("a segmenter tried to open a network connection")


@pytest.fixture(scope="module")
def no_network():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse_connection)
        mp.setattr(socket.socket, "connect_ex", refuse_connection)
        mp.setattr(socket, "create_connection", refuse_connection)
        yield


@pytest.fixture(scope="module")
def zoo(no_network):
    """case id -> model, built on first use and kept for the module."""
    built: dict[str, Segmenter] = {}

    def get(case: str) -> Segmenter:
        if case not in built:
            name, options = CASES[case]
            cls = SEGMENTERS.load(name)
            torch.manual_seed(0)
            built[case] = cls(cls.Options(**options)).eval()
        return built[case]

    return get


def toy_batch(n: int = 2, h: int = 64, w: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright square on a noisy grey background, its mask the square: learnable in one step."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, h, w, generator=g) * 0.3 + 0.35
    masks = torch.zeros(n, h, w, dtype=torch.long)
    masks[:, h // 4:h // 2, w // 4:w // 2] = 1
    images[:, :, h // 4:h // 2, w // 4:w // 2] = 0.9
    return images, masks


# -- registry and presets -----------------------------------------------------------------------
def test_every_registered_segmenter_resolves_with_smoke_and_paper_presets():
    for entry in SEGMENTERS:
        cls = entry.load()
        assert issubclass(cls, Segmenter) and cls.name == entry.name
        assert {"smoke", "paper"} <= set(cls.presets), entry.name
        for profile in ("smoke", "paper"):
            options = resolve_options(cls, profile, {})
            assert (options.max_steps or options.max_epochs) > 0 and options.batch_size > 0
        assert len(cls.mean) == 3 and len(cls.std) == 3


def test_paper_presets_record_the_stated_schedules():
    draem = resolve_options(SEGMENTERS.load("unet-draem"), "paper", {})
    assert (draem.max_epochs, draem.epoch_samples, draem.batch_size, draem.optimizer, draem.lr, draem.schedule,
            draem.base_width) == (200, 500, 8, "adam", 1e-4, "multistep", 64)  # NOTES 2.3, A.2
    lfd = resolve_options(SEGMENTERS.load("lfd"), "paper", {})
    assert (lfd.max_epochs, lfd.schedule_epochs, lfd.batch_size, lfd.optimizer, lfd.lr, lfd.schedule, lfd.min_lr,
            lfd.loss) == (100, 150, 8, "sgd", 0.01, "cosine", 1e-5, "ohem_ce")
    segformer = resolve_options(SEGMENTERS.load("segformer"), "paper", {})
    assert (segformer.optimizer, segformer.lr, segformer.warmup_steps, segformer.poly_power) == ("adamw", 6e-5, 1500, 1.0)
    assert resolve_options(SEGMENTERS.load("upernet"), "smoke", {}).max_steps < \
        resolve_options(SEGMENTERS.load("segformer"), "smoke", {}).max_steps


# -- parameter counts ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(PUBLISHED))
def test_inference_parameters_match_published_counts(zoo, case):
    measured = zoo(case).inference_parameters()
    assert abs(measured - PUBLISHED[case]) / PUBLISHED[case] < 0.005, (case, measured)


def test_auxiliary_heads_are_built_for_training_but_not_counted(zoo):
    assert len(zoo("bisenetv2").model.auxiliary_head) == 4  # one per semantic stage (SeaS A.4)
    assert not isinstance(zoo("upernet").model.auxiliary_head, torch.nn.ModuleList)  # a single FCN head
    assert len(zoo("stdc1").model.auxiliary_head) == 3  # two FCN heads + the detail (boundary) head
    model = zoo("bisenetv2")
    assert sum(p.numel() for p in model.model.parameters()) > model.inference_parameters()


# -- the output contract ------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_two_class_logits_and_probability_maps_at_odd_sizes(zoo, case):
    model = zoo(case)
    images = torch.rand(1, 3, 250, 300)
    with torch.no_grad():
        logits = model(images)
    assert logits.ndim == 4 and logits.shape[:2] == (1, 2) and torch.isfinite(logits).all()
    out = model.predict_step({"image": images, "mask": torch.zeros(1, 250, 300, dtype=torch.long),
                              "category": ["c"], "id": ["0"]})
    prob = out["prob"]
    assert prob.shape == (1, 250, 300) and prob.dtype == torch.float32
    assert 0 <= prob.min() and prob.max() <= 1


# -- training -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(zoo, case):
    model = copy.deepcopy(zoo(case)).train()
    images, masks = toy_batch(2, 64, 64)
    opt = model.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    torch.manual_seed(1)  # same dropout masks before and after the step
    before = model.training_loss(images, masks)
    before.backward()
    opt.step()
    opt.zero_grad()
    torch.manual_seed(1)
    after = model.training_loss(images, masks)
    assert torch.isfinite(before) and after.item() < before.item(), (case, before.item(), after.item())


@pytest.mark.parametrize("case", ["lfd", "segformer", "stdc1"])
def test_bf16_autocast_step_is_finite(zoo, case):
    """Mixed precision: CPU bf16 autocast here, the same code path as 16-mixed on GPU."""
    model = copy.deepcopy(zoo(case)).train()
    images, masks = toy_batch(2, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.training_loss(images, masks)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_mmseg_loss_uses_decode_and_every_auxiliary_head(zoo):
    model = copy.deepcopy(zoo("bisenetv2")).train()
    images, masks = toy_batch(2, 64, 64)
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    meta = {"img_shape": (64, 64), "pad_shape": (64, 64), "ori_shape": (64, 64)}
    samples = [SegDataSample(gt_sem_seg=PixelData(data=m[None]), metainfo=meta) for m in masks]
    torch.manual_seed(1)
    losses = model.model.loss((images - model.pixel_mean) / model.pixel_std, samples)
    assert {"decode.loss_ce", "aux_0.loss_ce", "aux_1.loss_ce", "aux_2.loss_ce", "aux_3.loss_ce"} <= set(losses)
    torch.manual_seed(1)
    total = model.training_loss(images, masks)
    assert total.item() == pytest.approx(sum(v.item() for k, v in losses.items() if "loss" in k), rel=1e-5)


class ToySet(Dataset):
    def __init__(self, n=8, size=64):
        self.images, self.masks = toy_batch(n, size, size)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": self.masks[i], "category": "c", "id": str(i)}


@pytest.mark.parametrize("case", ["lfd", "segformer"])
def test_trains_and_predicts_under_lightning_on_cpu(zoo, case, tmp_path):
    model = copy.deepcopy(zoo(case))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(ToySet(), batch_size=4))
    assert trainer.global_step == 3
    out = trainer.predict(model, DataLoader(ToySet(2, 72), batch_size=2))
    assert out[0]["prob"].shape == (2, 72, 72)


# -- SyncBN policy ------------------------------------------------------------------------------
def test_sync_bn_only_under_multi_gpu_ddp(zoo, monkeypatch):
    model = copy.deepcopy(zoo("segformer"))
    assert model.config_sync_bn  # the packaged SegFormer config uses SyncBN ...
    bn = (torch.nn.BatchNorm2d, torch.nn.SyncBatchNorm)

    def count(kind):
        return sum(type(m) is kind for m in model.modules())

    assert count(torch.nn.SyncBatchNorm) == 0 and count(torch.nn.BatchNorm2d) > 0  # ... built as BN
    model.setup("fit")  # no process group: stays BN
    assert count(torch.nn.SyncBatchNorm) == 0
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: 2)
    model._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    model.setup("fit")  # CPU DDP: SyncBatchNorm has no CPU kernel, stays BN
    assert count(torch.nn.SyncBatchNorm) == 0
    model._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    model.setup("fit")  # multi-GPU DDP: SyncBN as in the config
    assert count(torch.nn.SyncBatchNorm) > 0 and count(torch.nn.BatchNorm2d) == 0
    assert all(isinstance(m, bn) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    model._trainer = None


def test_stdc_config_keeps_plain_bn_under_ddp(zoo):
    assert not zoo("stdc1").config_sync_bn  # STDC's packaged config uses BN


# -- weights: local files only, never a download -------------------------------------------------
def test_network_is_disabled_for_this_module(no_network):
    with pytest.raises(NetworkAccess):
        socket.create_connection(("example.com", 80), timeout=1)
    with pytest.raises(NetworkAccess):
        socket.socket().connect(("127.0.0.1", 9))


def test_random_init_logs_a_one_line_notice(no_network, caplog):
    cls = SEGMENTERS.load("lfd")
    with caplog.at_level(logging.INFO, logger="segmenters"):
        cls(cls.Options())
    notices = [r.getMessage() for r in caplog.records if "randomly initialised" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0]


def test_lfd_loads_a_local_imagenet_resnet18_into_both_branches(no_network, tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(3)
    path = tmp_path / "resnet18.pth"
    reference = resnet18(weights=None).state_dict()
    torch.save(reference, path)
    cls = SEGMENTERS.load("lfd")
    model = cls(cls.Options(weights=str(path))).model
    assert torch.equal(model.detail.conv1.weight, reference["conv1.weight"])
    assert torch.equal(model.context.layer2[0].conv1.weight, reference["layer2.0.conv1.weight"])
    full = tmp_path / "lfd.pt"  # and a whole saved LFD network
    torch.save(model.state_dict(), full)
    again = cls(cls.Options(weights=str(full))).model
    assert torch.equal(again.head[1].weight, model.head[1].weight)


def test_mmseg_loads_backbone_and_full_checkpoints_from_local_files(zoo, tmp_path):
    source = zoo("segformer").model
    cls = SEGMENTERS.load("segformer")
    backbone_file = tmp_path / "mit_b0.pth"  # an ImageNet backbone file (mmseg pretrain layout)
    torch.save({"state_dict": source.backbone.state_dict()}, backbone_file)
    loaded = cls(cls.Options(weights=str(backbone_file))).model
    key = "layers.0.0.projection.weight"
    assert torch.equal(loaded.backbone.state_dict()[key], source.backbone.state_dict()[key])
    # a full mmseg checkpoint trained on 19 classes: backbone and neck load, the classifier is skipped
    state = {k: v for k, v in source.state_dict().items()}
    state["decode_head.conv_seg.weight"] = torch.zeros(19, *state["decode_head.conv_seg.weight"].shape[1:])
    state["decode_head.conv_seg.bias"] = torch.zeros(19)
    full_file = tmp_path / "segformer_cityscapes.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": state}, full_file)
    loaded = cls(cls.Options(weights=str(full_file))).model
    assert torch.equal(loaded.decode_head.fusion_conv.conv.weight, source.decode_head.fusion_conv.conv.weight)
    assert loaded.decode_head.conv_seg.weight.shape[0] == 2


def test_smp_unet_loads_a_local_encoder_checkpoint(no_network, tmp_path):
    from torchvision.models import resnet34

    reference = resnet34(weights=None).state_dict()
    path = tmp_path / "resnet34.pth"
    torch.save(reference, path)
    cls = SEGMENTERS.load("unet")
    model = cls(cls.Options(weights=str(path))).model
    assert torch.equal(model.encoder.conv1.weight, reference["conv1.weight"])


def test_draem_unet_round_trips_a_saved_state_dict(zoo, tmp_path):
    path = tmp_path / "draem_seg.pckl"
    torch.save(zoo("unet-draem").model.state_dict(), path)
    cls = SEGMENTERS.load("unet-draem")
    model = cls(cls.Options(weights=str(path))).model
    assert torch.equal(model.out.weight, zoo("unet-draem").model.out.weight)


@pytest.mark.parametrize("name", ["lfd", "unet-draem", "unet", "segformer"])
def test_missing_weights_file_is_a_clear_error(no_network, name, tmp_path):
    cls = SEGMENTERS.load(name)
    with pytest.raises(BenchError, match="not found"):
        cls(cls.Options(weights=str(tmp_path / "absent.pth")))


# -- the mmcv.ops compatibility module ----------------------------------------------------------
FULL_MMCV = mmseg_compat.compiled_mmcv_available()
needs_mmcv_lite = pytest.mark.skipif(FULL_MMCV, reason="full mmcv (compiled ops) installed: the shim is not used")


def test_mmcv_ops_shim_is_active_exactly_when_compiled_mmcv_is_absent(zoo):
    zoo("segformer")  # mmseg.models imported through segmenters.mmseg_compat
    import mmcv.ops

    if FULL_MMCV:
        assert not mmseg_compat.is_installed() and mmseg_compat.install() is False
        return
    assert mmseg_compat.is_installed() and mmseg_compat.install() is True  # idempotent
    assert getattr(mmcv.ops, mmseg_compat.SHIM_ATTR)


@needs_mmcv_lite
def test_mmcv_ops_shim_point_sample_is_mmcvs_pure_version(zoo):
    zoo("segformer")
    from mmcv.ops import point_sample

    feature = torch.rand(2, 4, 8, 8)
    points = torch.rand(2, 5, 2)
    expected = F.grid_sample(feature, 2 * points.unsqueeze(2) - 1, align_corners=False).squeeze(3)
    assert torch.allclose(point_sample(feature, points), expected)
    import mmseg.models.utils  # the module that imports it at import time

    assert mmseg.models.utils.point_sample is not None


@needs_mmcv_lite
def test_mmcv_ops_shim_compiled_ops_fail_loudly(zoo):
    zoo("segformer")
    from mmcv.ops import SyncBatchNorm, sigmoid_focal_loss

    with pytest.raises(mmseg_compat.CompiledOpUnavailable, match="sigmoid_focal_loss.*mmcv-lite"):
        sigmoid_focal_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), 2.0, 0.25)
    assert not isinstance(torch.nn.BatchNorm2d(2), SyncBatchNorm)  # isinstance checks keep working
    with pytest.raises(mmseg_compat.CompiledOpUnavailable):
        SyncBatchNorm(4)


def test_mmcv_ops_shim_does_nothing_when_compiled_mmcv_is_present():
    """A fresh interpreter where `mmcv._ext` resolves (as with full mmcv): install() is a no-op."""
    script = textwrap.dedent("""
        import importlib.abc, importlib.machinery, sys
        class CompiledMMCV(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "mmcv._ext":
                    return importlib.machinery.ModuleSpec(name, None)
        sys.meta_path.insert(0, CompiledMMCV())
        from segmenters import mmseg_compat
        assert mmseg_compat.compiled_mmcv_available()
        print(mmseg_compat.install(), "mmcv.ops" in sys.modules, mmseg_compat.is_installed())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "False"]
