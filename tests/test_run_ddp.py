"""`bench run` on 2 CPU processes (Lightning's `ddp` on gloo), end to end, against 1 process; and a
rank killed mid-generation, then the run resumed.

Lightning's launcher starts the command again for rank 1, so the runs are subprocesses. The kill
test runs this file as the command (it patches the synthetic-set writer so rank 1 SIGKILLs itself
after its second pair, then calls `bench`); Lightning re-runs the file for rank 1, patch included.
Tolerances: docs/scale.md ("One run on N GPUs").
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.results import flat_metrics as metrics

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "64", "--categories", "carpet_like,pill", "--no-wandb", "--set", "trainer.accelerator=cpu",
        "--set", "segmenter.options.batch_size=4", "--set", "generator.options.pairs_per_type=2"]
TWO = ["--set", "trainer.devices=2", "--set", "trainer.strategy=ddp"]
KILL_AFTER = "SIAS_TEST_KILL_RANK1_AFTER_PAIRS"
# the table of a 2-process run against 1 process (docs/scale.md): training sees other batches
# (per-device batch, DistributedSampler order, per-rank BatchNorm statistics), like another seed
TABLE_TOLERANCE = 0.25
# the same maps scored in one process: only float summation order differs
SCORE_TOLERANCE = 1e-9

pytestmark = pytest.mark.slow


def bench_process(args: list[str], cache: Path, command: list[str] | None = None, env: dict | None = None):
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SIAS_BENCH_CACHE": str(cache),
                   **(env or {})}
    for var in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED"):
        environment.pop(var, None)
    command = command or [sys.executable, "-m", "benchmark.cli"]
    return subprocess.run([*command, "--quiet", *args], capture_output=True, text=True, env=environment,
                          timeout=600, cwd=cache.parent)


def pairs(run: Path) -> dict[str, tuple[bytes, bytes]]:
    """id -> (image PNG bytes, mask PNG bytes) of a run's synthetic set, from its manifest."""
    root = (run / "synthetic").resolve()
    records = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line]
    assert len({r["id"] for r in records}) == len(records), "a pair is listed twice"
    return {r["id"]: ((root / r["image"]).read_bytes(), (root / r["mask"]).read_bytes()) for r in records}


def close(a: float, b: float, tolerance: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tolerance


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """The same tiny run on 1 and on 2 processes, each with its own cache (so both generate)."""
    base = tmp_path_factory.mktemp("ddp")
    out = {}
    for n, extra in ((1, []), (2, TWO)):
        run = base / f"run{n}"
        done = bench_process(["run", "--output", str(run), "--format", "csv", "--set",
                              "segmenter.options.max_steps=40", "--segmenter", "lfd", *TINY, *extra],
                             base / f"cache{n}")
        assert done.returncode == 0, done.stderr[-3000:]
        out[n] = (run, done.stdout)
    return out


def test_two_processes_write_the_same_synthetic_set(one_and_two):
    (run1, _), (run2, _) = one_and_two[1], one_and_two[2]
    assert json.loads((run2 / "results.json").read_text())["run"]["world_size"] == 2
    assert pairs(run2) == pairs(run1)
    assert not list((run2 / "synthetic").resolve().glob("manifest.rank*.jsonl"))  # shards merged


def test_two_processes_give_the_table_of_one_within_the_tolerance(one_and_two):
    (run1, _), (run2, stdout) = one_and_two[1], one_and_two[2]
    assert stdout.count("category,") == 1  # rank 1 prints nothing
    one, two = (json.loads((r / "results.json").read_text()) for r in (run1, run2))
    assert one["categories"].keys() == two["categories"].keys()
    for category in one["categories"]:
        a, b = metrics(one["categories"][category]), metrics(two["categories"][category])
        assert a.keys() == b.keys()
        far = {k: (a[k], b[k]) for k in a if k != "threshold" and not close(a[k], b[k], TABLE_TOLERANCE)}
        assert not far, f"{category}: 2 processes differ from 1 by more than {TABLE_TOLERANCE}: {far}"


def test_sharded_evaluation_equals_scoring_all_maps_in_one_process(one_and_two, tmp_path):
    """Each rank scored half the images; the synced metric states give the numbers `bench score`
    computes from all the saved maps at once."""
    from benchmark.cli import main

    run2 = one_and_two[2][0]
    results = json.loads((run2 / "results.json").read_text())
    evaluated = results["evaluation"]["categories"]
    for category, entry in results["categories"].items():
        assert evaluated[category]["image_sizes"] == [[64, 64]]
        out = tmp_path / f"{category}.json"
        assert main(["--quiet", "score", "--maps", str(run2 / "predictions" / "maps" / category), "--masks",
                     str(run2 / "predictions" / "masks" / category), "--json", str(out)]) == 0
        a, b = metrics(entry), metrics(json.loads(out.read_text()))
        assert a.keys() <= b.keys()
        far = {k: (a[k], b[k]) for k in a if not close(a[k], b[k], SCORE_TOLERANCE)}
        assert not far, f"{category}: sharded evaluation differs from one-process scoring: {far}"


def test_a_rank_killed_mid_generation_resumes_to_the_full_set(tmp_path):
    # `bench generate`: the stages of `bench run` up to the synthetic set (the fit and evaluation
    # after it are the first test's)
    args = ["--set", "generator.options.pairs_per_type=3", "--set", "generator.options.batch_size=1"]
    run, cache = tmp_path / "run", tmp_path / "cache"
    this_file = [sys.executable, str(Path(__file__).resolve())]
    killed = bench_process(["generate", "--output", str(run), *TINY, *TWO, *args], cache, this_file, {KILL_AFTER: "2"})
    assert killed.returncode != 0
    state = json.loads((run / "state.json").read_text())
    assert not state.get("generate", {}).get("done", False)
    synthetic = next((cache / "synthetic").iterdir())
    shard = synthetic / "manifest.rank1.jsonl"
    assert shard.exists() and len(shard.read_text().splitlines()) == 2  # rank 1 died after its 2nd pair
    assert not (synthetic / "manifest.jsonl").exists()

    resumed = bench_process(["generate", "--output", str(run), "--resume", *TINY, *TWO, *args], cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the reference: the same set made in one process, uninterrupted
    straight = tmp_path / "straight"
    done = bench_process(["generate", "--output", str(straight), *TINY, *args], tmp_path / "cache-straight")
    assert done.returncode == 0, done.stderr[-3000:]
    expected = pairs(straight)
    assert len(expected) == 18 and pairs(run) == expected
    assert json.loads((run / "state.json").read_text())["generate"]["done"]
    assert resumed.stdout.count("synthetic set:") == 1  # rank 1 prints nothing


def kill_rank1_after(n: int) -> None:
    """Rank 1 SIGKILLs itself once it has written `n` pairs (after the manifest line)."""
    from benchmark.synthetic import SyntheticSetWriter

    original = SyntheticSetWriter.write_on_batch_end
    written = []

    def write_on_batch_end(self, trainer, *args, **kwargs):
        original(self, trainer, *args, **kwargs)
        written.append(trainer.global_rank)
        if trainer.global_rank == 1 and len(written) >= n:
            os.kill(os.getpid(), signal.SIGKILL)

    SyntheticSetWriter.write_on_batch_end = write_on_batch_end


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if os.environ.get(KILL_AFTER):
        kill_rank1_after(int(os.environ[KILL_AFTER]))
    from benchmark.cli import main

    sys.exit(main(sys.argv[1:]))
