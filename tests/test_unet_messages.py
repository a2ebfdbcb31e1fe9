"""The U-Net's messages name the real config key, the encoder each preset really uses, and a
weights file that fits that encoder."""

import logging

import pytest
import torch
from torchvision.models import resnet18, resnet34

from benchmark.config import resolve_options
from benchmark.errors import BenchError
from benchmark.registry import SEGMENTERS

UNET = SEGMENTERS.load("unet")


@pytest.mark.parametrize("profile, encoder, shown", [("smoke", "resnet18", "ResNet-18"), ("paper", "resnet34", "ResNet-34")])
def test_bench_list_names_the_encoder_each_preset_uses(profile, encoder, shown):
    assert resolve_options(UNET, profile, {}).encoder == encoder
    description = next(e.description for e in SEGMENTERS if e.name == "unet")
    assert f"{shown} encoder in the {profile} profile" in description or f"{shown} in {profile}" in description


def test_random_init_notice_names_the_real_key(caplog):
    with caplog.at_level(logging.INFO, logger="segmenters"):
        UNET(UNET.Options(encoder="resnet18"))
    notices = [r.getMessage() for r in caplog.records if "randomly initialised" in r.getMessage()]
    assert notices == ["unet: resnet18 encoder randomly initialised (segmenter.options.weights unset or none)"]


def test_a_missing_file_suggests_the_checkpoint_of_the_configured_encoder(tmp_path):
    with pytest.raises(BenchError) as info:
        UNET(UNET.Options(encoder="resnet18", weights=str(tmp_path / "absent.pth")))
    # torchvision's published ImageNet file names (download.pytorch.org/models/)
    assert "resnet18-f37072fd.pth" in str(info.value) and "resnet34" not in str(info.value)


def test_the_suggested_kind_of_file_fits_and_another_depth_is_refused_with_the_right_suggestion(tmp_path):
    torch.manual_seed(0)
    fitting = tmp_path / "resnet18.pth"  # what the hint names: a torchvision ResNet-18 state dict
    reference = resnet18(weights=None).state_dict()
    torch.save(reference, fitting)
    model = UNET(UNET.Options(encoder="resnet18", weights=str(fitting))).model
    assert torch.equal(model.encoder.layer4[1].conv2.weight, reference["layer4.1.conv2.weight"])
    other = tmp_path / "resnet34.pth"
    torch.save(resnet34(weights=None).state_dict(), other)
    with pytest.raises(BenchError) as info:
        UNET(UNET.Options(encoder="resnet18", weights=str(other)))
    message = str(info.value)
    assert "does not fit the resnet18 encoder" in message and "resnet18-f37072fd.pth" in message
    assert "segmenter.options.encoder=resnet18" in message
