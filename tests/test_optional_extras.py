"""Optional dependency groups (pyproject extras): the core runs without them, and each part that
needs one says which extra to install instead of an ImportError traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from benchmark.errors import BenchError

ROOT = Path(__file__).resolve().parents[1]
EXTRA_MODULES = {"mmseg": ("mmseg", "mmcv", "mmengine"), "wandb": ("wandb",), "quality": ("lpips", "torch_fidelity"),
                 "slurm": ("submitit",)}

# makes the extras' top-level modules unimportable and their distributions unknown, as in an
# environment where `pip install sias-bench` ran without extras (torchmetrics and lightning decide
# what is installed from package metadata and importlib.util.find_spec, so both are hidden too)
BLOCKER = """
import importlib.metadata, importlib.util, sys
def _blocked(name):
    return name.split(".")[0] in _NotInstalled.blocked
class _NotInstalled:
    blocked = {names!r}
    dists = {dists!r}
    def find_spec(self, name, path=None, target=None):
        if _blocked(name):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _NotInstalled())
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if _blocked(name) else _find_spec(name, package)
def _hide(lookup):
    def hidden(name, *args, **kwargs):
        if name.lower().replace("_", "-") in _NotInstalled.dists:
            raise importlib.metadata.PackageNotFoundError(name)
        return lookup(name, *args, **kwargs)
    return hidden
for _name in ("version", "distribution", "metadata", "requires"):
    setattr(importlib.metadata, _name, _hide(getattr(importlib.metadata, _name)))
"""
EXTRA_DISTRIBUTIONS = {"torch-fidelity", "lpips", "wandb", "mmsegmentation", "mmcv", "mmcv-lite", "mmengine", "submitit"}


def block(monkeypatch, *top_level: str) -> None:
    """Make `top_level` modules (and their submodules) unimportable in this process."""
    for name in list(sys.modules):
        if name.split(".")[0] in top_level:
            monkeypatch.setitem(sys.modules, name, None)
    for name in top_level:
        monkeypatch.setitem(sys.modules, name, None)


def test_extras_hold_the_heavy_optional_packages_and_test_installs_all():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    for extra, distributions in {"mmseg": ("mmsegmentation", "mmcv-lite", "mmengine"), "wandb": ("wandb",),
                                 "quality": ("lpips", "torch-fidelity"), "slurm": ("submitit",)}.items():
        for dist in distributions:
            assert dist not in core, f"{dist} is a core dependency; it belongs to the '{extra}' extra"
            assert any(spec.startswith(dist) for spec in extras[extra]), (extra, dist)
    assert extras["all"] == ["sias-bench[mmseg,wandb,quality,slurm]"]
    assert "sias-bench[all]" in extras["test"]  # the test suite exercises every extra


def test_an_mmseg_segmenter_without_the_mmseg_extra_names_the_extra(monkeypatch):
    from benchmark.registry import SEGMENTERS

    cls = SEGMENTERS.load("segformer")
    block(monkeypatch, *EXTRA_MODULES["mmseg"])
    with pytest.raises(BenchError) as err:
        cls(cls.Options())
    assert "segmenter 'segformer' needs the 'mmseg' extra" in str(err.value)
    assert "pip install 'sias-bench[mmseg]'" in str(err.value)


def test_a_submitit_sweep_launcher_without_the_slurm_extra_names_the_extra(monkeypatch, tmp_path):
    from benchmark.sweep.grid import LauncherOptions
    from benchmark.sweep.launchers import SubmititLauncher

    block(monkeypatch, "submitit")
    with pytest.raises(BenchError, match=r"bench sweep --launcher slurm needs the 'slurm' extra .*sias-bench\[slurm\]"):
        SubmititLauncher(tmp_path, "slurm", LauncherOptions(name="slurm"))


def test_quality_networks_without_the_quality_extra_name_the_extra(monkeypatch, tmp_path):
    from benchmark.quality import networks

    block(monkeypatch, *EXTRA_MODULES["quality"])
    with pytest.raises(BenchError, match=r"LPIPS and IC-LPIPS needs the 'quality' extra .*sias-bench\[quality\]"):
        networks.packaged_lpips_heads("alex")
    with pytest.raises(BenchError, match=r"Inception features .* needs the 'quality' extra"):
        networks.load_inception(tmp_path / "weights.pth")


def test_without_wandb_a_run_logs_nothing_to_wandb_and_says_so(monkeypatch, caplog):
    from types import SimpleNamespace

    from benchmark import tracking

    block(monkeypatch, "wandb")
    logger = tracking.make_wandb_logger(SimpleNamespace(wandb_project="p"), Path("unused"), {})
    assert logger is False
    assert "pip install 'sias-bench[wandb]'" in caplog.text and "not logged to W&B" in caplog.text
    assert tracking.log_results(logger, {}, Path("unused")) is None  # no wandb import, no error


@pytest.mark.slow
def test_a_core_only_environment_runs_cutpaste_into_a_unet_with_wandb_asked_for(tmp_path):
    """The whole default pipeline (W&B on, its default) in a process where no extra is importable."""
    blocked = {m for mods in EXTRA_MODULES.values() for m in mods}
    script = BLOCKER.format(names=blocked, dists=EXTRA_DISTRIBUTIONS) + (
        "from benchmark.cli import main\n"
        f"code = main(['run', '--output', {str(tmp_path / 'run')!r}, '--image-size', '64', '--categories', 'pill',"
        " '--set', 'segmenter.options.max_steps=2', '--set', 'generator.options.pairs_per_type=2'])\n"
        "assert not {m for m in sys.modules if m.split('.')[0] in _NotInstalled.blocked}, 'an extra was imported'\n"
        "sys.exit(code)\n")
    env = {**os.environ, "WANDB_MODE": "offline", "SIAS_BENCH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    printed = " ".join((done.stdout + done.stderr).split())  # the console wraps long lines
    assert "pip install 'sias-bench[wandb]'" in printed
    assert (tmp_path / "run" / "results.json").is_file()
    assert not (tmp_path / "run" / "wandb-logs").exists() or not any((tmp_path / "run" / "wandb-logs").iterdir())


def test_a_command_whose_module_is_missing_says_what_to_install(monkeypatch, capsys):
    """A delegated command whose module cannot be imported: one line naming the missing module and
    the install fix, exit 2 (not a ModuleNotFoundError traceback)."""
    from benchmark import cli

    monkeypatch.setitem(cli.DELEGATED, "elsewhere", ("benchmark.not_installed_here", "a command of an extra"))
    assert cli.main(["elsewhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bench elsewhere needs benchmark.not_installed_here") and "pip install" in err
    assert len(err.splitlines()) == 1
