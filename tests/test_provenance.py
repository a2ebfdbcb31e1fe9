"""What results.json records about how its numbers were made: the code's git commit, and per
category whether the metrics were exact or binned and at which map size."""

import shutil
import subprocess

import numpy as np
import pytest
import torch

from benchmark.evaluation import MetricsCollector
from benchmark.metrics.options import MetricOptions
from benchmark.run.context import source_revision


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_source_revision_names_the_commit_and_whether_tracked_files_changed(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    (repo / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "first")
    commit = (repo / ".git" / "refs" / "heads" / "main").read_text().strip()  # read by hand, not via git

    assert source_revision(repo) == {"git_commit": commit, "git_dirty": False}
    (repo / "notes.txt").write_text("untracked files do not make the checkout dirty")
    assert source_revision(repo) == {"git_commit": commit, "git_dirty": False}
    (repo / "code.py").write_text("x = 2\n")
    assert source_revision(repo) == {"git_commit": commit, "git_dirty": True}
    (repo / "pkg").mkdir()  # code installed inside someone else's repository is not that commit
    assert source_revision(repo / "pkg") == {}
    (tmp_path / "plain").mkdir()
    assert source_revision(tmp_path / "plain") == {}


def feed(collector: MetricsCollector, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    prob = torch.from_numpy(rng.random((2, *size), dtype=np.float32))
    mask = torch.zeros(2, *size, dtype=torch.long)
    mask[0, 2:5, 3:7] = 1
    collector.write_on_batch_end(None, None, {"prob": prob, "mask": mask}, None, None, 0)


@pytest.mark.parametrize("limit, mode", [(10_000, "exact"), (100, "binned")])
def test_collector_records_the_mode_auto_chose_and_the_map_size(limit, mode):
    # 2 maps of 12 x 20 = 480 pixels: exact under a 10,000-pixel limit, binned over a 100-pixel one
    collector = MetricsCollector(MetricOptions(mode="auto", exact_max_pixels=limit))
    feed(collector, (12, 20))
    collector.compute()
    assert collector.provenance() == {"mode": mode, "image_size": [[12, 20]]}


def test_collector_lists_every_map_size_it_saw():
    collector = MetricsCollector(MetricOptions(mode="exact"))
    feed(collector, (16, 16))
    feed(collector, (8, 24))
    collector.compute()
    assert collector.provenance() == {"mode": "exact", "image_size": [[8, 24], [16, 16]]}


def test_a_run_started_before_a_metric_option_was_recorded_can_be_resumed(tmp_path):
    import json

    from benchmark.config import build_config
    from benchmark.errors import BenchError
    from benchmark.run.folder import RunFolder

    resolved = build_config("smoke").model_dump(mode="json")
    resolved["data"]["name"] = "demo"
    stored = json.loads(json.dumps(resolved))
    del stored["metrics"]["bins"], stored["metrics"]["exact_max_pixels"]  # as written by older versions
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(stored))
    RunFolder(tmp_path / "run").claim(resolved, resume=True, overwrite=False)
    resolved["metrics"]["bins"] = 2000  # not the default: a real difference is still refused
    with pytest.raises(BenchError, match="metrics.bins"):
        RunFolder(tmp_path / "run").claim(resolved, resume=True, overwrite=False)
