"""The `paper` profile starts each segmenter as its published setup does: one that starts from
ImageNet weights refuses unset `segmenter.options.weights` at config time, naming the file;
`weights=none` trains from random weights on purpose and is recorded as such."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.config import build_config, resolve_options
from benchmark.errors import BenchError
from benchmark.registry import SEGMENTERS
from segmenters.options import MMSEG_IMAGENET, RANDOM_INIT, TORCHVISION_RESNETS

# segmenter -> the file its published setup starts from (None: trains from random weights)
PUBLISHED = {
    "unet": "resnet34-b627a593.pth",  # smp's encoder_weights="imagenet", torchvision's ResNet-34
    "unet-draem": None,  # DRAEM's discriminative U-Net: N(0, 0.02)
    "bisenetv2": None,  # BiSeNet V2 trains from scratch (mmseg config: pretrained=None)
    "stdc": "stdc1_20220308-5368626c.pth",
    "upernet": "resnet50_v1c-2cccc1ad.pth",
    "segformer": "mit_b0_20220624-7e0fe6dd.pth",
    "lfd": "resnet18-f37072fd.pth",
}


def paper(segmenter: str, **options):
    return build_config("paper", [{"segmenter": {"name": segmenter, "options": options}}])


def test_every_registered_segmenter_has_its_published_start_listed():
    assert set(PUBLISHED) == set(SEGMENTERS.names())


@pytest.mark.parametrize("name, file", sorted(PUBLISHED.items()))
def test_paper_refuses_unset_weights_where_the_published_setup_starts_from_imagenet(name, file):
    if file is None:
        assert paper(name).segmenter.name == name
        return
    with pytest.raises(BenchError) as refused:
        paper(name)
    message = str(refused.value)
    assert message.startswith("segmenter.options.weights is unset") and file in message
    assert "segmenter.options.weights=none" in message and len(message.splitlines()) == 1
    with pytest.raises(BenchError, match=file):  # an explicit null is unset too
        paper(name, weights=None)
    assert build_config("smoke", [{"segmenter": {"name": name}}]).segmenter.name == name  # smoke: random weights
    assert paper(name, weights="/models/" + file).segmenter.options["weights"] == "/models/" + file
    assert paper(name, weights="none").segmenter.name == name


def test_the_file_named_follows_the_variant_and_encoder():
    with pytest.raises(BenchError, match="mit_b2_20220624-66e8bf70.pth"):
        paper("segformer", variant="b2")
    with pytest.raises(BenchError, match="stdc2_20220308-7dbd9127.pth"):
        paper("stdc", variant="stdc2")
    with pytest.raises(BenchError, match="resnet50-0676ba61.pth"):
        paper("unet", encoder="resnet50")


def test_weights_none_is_recorded_and_means_no_file():
    unet = SEGMENTERS.load("unet")
    for spelled in ("none", "None", " NONE "):
        options = resolve_options(unet, "paper", {"weights": spelled})
        assert options.weights == RANDOM_INIT and options.weights_file is None
        assert options.model_dump()["weights"] == "none"  # what results.json's config records
    assert resolve_options(unet, "paper", {"weights": "/m/r.pth"}).weights_file == "/m/r.pth"
    assert resolve_options(unet, "smoke", {}).weights_file is None


def test_weights_none_builds_a_randomly_initialised_model():
    unet = SEGMENTERS.load("unet")
    model = unet(resolve_options(unet, "smoke", {"weights": "none"}))  # a file named "none" is never opened
    assert model.options.weights == "none"


def test_the_named_files_are_those_torchvision_and_the_mmseg_configs_load():
    import torchvision

    for encoder, file in TORCHVISION_RESNETS.items():
        weights = torchvision.models.get_model_weights(encoder).IMAGENET1K_V1
        assert weights.url.rsplit("/", 1)[-1] == file
    pytest.importorskip("mmseg")
    import mmengine
    import mmseg
    from mmengine.config import Config

    configs = Path(mmseg.__file__).parent / ".mim" / "configs"
    assert Config.fromfile(str(configs / "_base_/models/upernet_r50.py")).model.pretrained == "open-mmlab://resnet50_v1c"
    hub = json.loads((Path(mmengine.__file__).parent / "hub" / "openmmlab.json").read_text())
    assert hub["resnet50_v1c"].rsplit("/", 1)[-1] == MMSEG_IMAGENET["upernet"]
    for variant in ("stdc1", "stdc2"):
        cfg = Config.fromfile(str(configs / f"stdc/{variant}_in1k-pre_4xb12-80k_cityscapes-512x1024.py"))
        assert cfg.model.backbone.backbone_cfg.init_cfg.checkpoint.rsplit("/", 1)[-1] == MMSEG_IMAGENET[variant]
    for variant in ("b0", "b1", "b2", "b3", "b4", "b5"):
        cfg = Config.fromfile(str(configs / f"segformer/segformer_mit-{variant}_8xb2-160k_ade20k-512x512.py"))
        assert cfg.model.backbone.init_cfg.checkpoint.rsplit("/", 1)[-1] == MMSEG_IMAGENET[variant]
