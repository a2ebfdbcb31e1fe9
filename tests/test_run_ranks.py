"""`RunRanks` on 2 real processes (gloo): broadcast, gather, and bad input on rank zero stopping
every rank with one message (docs/scale.md, "One run on N GPUs")."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_process(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from benchmark.errors import BenchError
    from benchmark.run.ranks import RankStopped, RunRanks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ranks = RunRanks(2, rank)
    seen = {"broadcast": ranks.broadcast(f"from rank {rank}"), "gather": ranks.gather(rank * 10),
            "share": ranks.share(5), "made": ranks.on_zero(lambda: f"made on rank {rank}")}

    def bad_input():
        raise BenchError("data root does not exist")

    try:
        ranks.on_zero(bad_input)
    except RankStopped as e:
        seen["stopped"] = ["RankStopped", e.code]
    except BenchError as e:
        seen["stopped"] = ["BenchError", str(e)]
    ranks.close()
    seen["closed"] = not dist.is_initialized()
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen))


@pytest.mark.slow  # two processes that import torch: 39 s on this busy machine (13 s of CPU)
def test_two_ranks_share_rank_zeros_values_and_stop_together_on_its_bad_input(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(rank_process, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert zero["broadcast"] == one["broadcast"] == "from rank 0"
    assert zero["gather"] == one["gather"] == [0, 10]
    assert zero["share"] == one["share"] == 3  # rank zero's part of 5 items: 0, 2, 4
    assert (zero["made"], one["made"]) == ("made on rank 0", None)
    # rank zero raises the message (printed once); rank 1 exits with the same code, silently
    assert zero["stopped"] == ["BenchError", "data root does not exist"]
    assert one["stopped"] == ["RankStopped", 2]
    assert zero["closed"] and one["closed"]


@pytest.mark.parametrize("environ, zero", [
    ({}, True),  # a single process
    ({"RANK": "0", "LOCAL_RANK": "0"}, True),  # torchrun / SLURM, rank zero
    ({"RANK": "3", "LOCAL_RANK": "1"}, False),
    ({"RANK": "0", "LOCAL_RANK": "1"}, True),  # RANK is the global rank when given
    ({"LOCAL_RANK": "1"}, False),  # Lightning's ddp launcher, second device
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # first device of the second node
])
def test_only_global_rank_zero_prints_how_to_resume(environ, zero):
    from benchmark.run.ranks import started_as_rank_zero

    assert started_as_rank_zero(environ) is zero


def test_an_interrupted_rank_other_than_zero_prints_nothing(tmp_path, capsys, monkeypatch):
    from benchmark import cli
    from benchmark.run import RunInterrupted

    def interrupted(args):
        raise RunInterrupted("train step 2/3", "SIGTERM")

    monkeypatch.setattr(cli, "cmd_run", interrupted, raising=False)
    argv = ["run", "--output", str(tmp_path / "r"), "--no-wandb"]
    for rank, printed in (("1", False), ("0", True)):
        monkeypatch.setenv("LOCAL_RANK", rank)
        assert cli.main(argv) == 130
        assert ("resume with:" in capsys.readouterr().err) is printed
