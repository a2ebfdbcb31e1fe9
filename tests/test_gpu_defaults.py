"""GPU-safe defaults (benchmark/run/gpu_policy.py), the strategies a run accepts, and
tools/gpu_check.py where no GPU is (docs/scale.md, "GPU-safe defaults")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.config import build_config
from benchmark.errors import BenchError
from benchmark.run.gpu_policy import resolved_determinism, resolved_precision

ROOT = Path(__file__).resolve().parents[1]


def config(profile: str, **trainer):
    # weights=none: the paper profile's U-Net otherwise asks for its ImageNet file (not what these test)
    return build_config(profile, [{"trainer": trainer, "segmenter": {"options": {"weights": "none"}}}])


@pytest.mark.parametrize("profile, accelerator, expected", [
    ("smoke", "cpu", "32-true"), ("paper", "cpu", "32-true"),
    ("smoke", "cuda", "32-true"), ("paper", "cuda", "16-mixed"), ("paper", "gpu", "16-mixed"),
])
def test_precision_is_chosen_per_profile_and_device(profile, accelerator, expected):
    assert resolved_precision(config(profile, accelerator=accelerator)) == expected


def test_a_precision_in_the_configuration_wins():
    assert resolved_precision(config("paper", accelerator="cuda", precision="bf16-mixed")) == "bf16-mixed"
    assert resolved_precision(config("smoke", accelerator="cpu", precision="64-true")) == "64-true"


def test_determinism_is_strict_on_cpu_and_warn_only_on_cuda_with_the_reason():
    cpu = resolved_determinism(config("paper", accelerator="cpu"))
    assert cpu["lightning"] is True and cpu["mode"] == "strict"
    cuda = resolved_determinism(config("paper", accelerator="cuda"))
    assert cuda["lightning"] == "warn" and cuda["mode"] == "warn"
    assert "bilinear" in cuda["reason"] and "no deterministic CUDA kernel" in cuda["reason"]


@pytest.mark.parametrize("value, lightning, mode", [(True, True, "strict"), ("warn", "warn", "warn"),
                                                     (False, False, "off")])
def test_a_determinism_in_the_configuration_is_kept_and_said_so(value, lightning, mode):
    got = resolved_determinism(config("paper", accelerator="cuda", deterministic=value))
    assert (got["lightning"], got["mode"]) == (lightning, mode)
    assert "trainer.deterministic" in got["reason"]


def test_determinism_takes_warn_or_a_boolean_only():
    from benchmark.config import parse_override

    assert build_config("smoke", [parse_override("trainer.deterministic=warn")]).trainer.deterministic == "warn"
    with pytest.raises(BenchError, match="trainer.deterministic"):
        build_config("smoke", [parse_override("trainer.deterministic=sometimes")])


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork", "ddp_notebook"])
def test_strategies_that_do_not_start_the_command_per_rank_are_refused(strategy):
    from benchmark.run.ranks import launch_ranks

    cfg = config("smoke", accelerator="cpu", devices=2, strategy=strategy)
    with pytest.raises(BenchError, match="use --set trainer.strategy=ddp"):
        launch_ranks(cfg.trainer)


def test_one_device_is_one_rank_without_a_process_group():
    import torch.distributed as dist

    from benchmark.run.ranks import launch_ranks

    ranks = launch_ranks(config("smoke", accelerator="cpu", devices=1, strategy="ddp").trainer)
    assert (ranks.world_size, ranks.rank, ranks.is_zero) == (1, 0, True)
    assert ranks.broadcast("x") == "x" and ranks.gather(3) == [3] and ranks.share(7) == 7
    assert not dist.is_initialized()


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_gpu_check_without_cuda_stops_with_a_clear_message():
    done = gpu_check()
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); run this on a machine "
        "with an NVIDIA GPU and a CUDA build of torch (or pass --accelerator cpu to check the script itself)")
    assert done.stdout == ""


@pytest.mark.slow
def test_gpu_check_runs_its_steps_on_the_cpu(tmp_path):
    done = gpu_check("--accelerator", "cpu", "--profile", "smoke", "--only", "cutpaste,unet", "--image-size", "64",
                     "--cache-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("profile smoke, cpu, precision 32-true, determinism strict")
    rows = {line.split()[1]: line.split() for line in lines[2:]}
    assert rows.keys() == {"cutpaste", "unet"}
    assert rows["cutpaste"][:3] == ["generator", "cutpaste", "ok"] and "4 pairs at batch 4" in lines[2]
    assert rows["unet"][:3] == ["segmenter", "unet", "ok"] and "1 step at batch 8" in " ".join(rows["unet"])
