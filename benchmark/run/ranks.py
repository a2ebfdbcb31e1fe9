"""The processes of one run: how many there are, which one this is, and how they wait for each other.

A run on N devices is N processes (Lightning's `ddp`: the `bench` command is started again for
every rank; or torchrun / SLURM start them all). `launch_ranks` starts them and joins the process
group through Lightning Fabric before any file is touched, so every stage can use
`torch.distributed`'s barrier and object broadcast: run-folder and cache writes happen on global
rank zero, the others wait at a barrier and then read what it wrote (docs/scale.md).
Later Lightning Trainers find the process group already there and reuse it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from benchmark.errors import BenchError

T = TypeVar("T")

# strategies whose launcher runs a function in forked/spawned workers instead of starting the
# command again per rank: a `bench run` needs every rank to run the whole command
FUNCTION_LAUNCHED = ("spawn", "fork", "notebook")


def started_as_rank_zero(environ=None) -> bool:
    """Whether this process is global rank zero by the variables its launcher set (torchrun and
    SLURM set RANK; Lightning's ddp launcher starts the other ranks with LOCAL_RANK / NODE_RANK),
    for messages printed after the process group is gone; no variable: a single process."""
    import os

    env = os.environ if environ is None else environ
    if env.get("RANK") is not None:
        return int(env["RANK"]) == 0
    return int(env.get("LOCAL_RANK") or 0) == 0 and int(env.get("NODE_RANK") or 0) == 0


class RunRanks:
    """One process's view of the run's ranks; with `world_size == 1` every method is a no-op."""

    def __init__(self, world_size: int = 1, rank: int = 0):
        self.world_size, self.rank = world_size, rank

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def share(self, n: int) -> int:
        """How many of `n` items rank zero gets from Lightning's unrepeated predict sampler."""
        return -(-n // self.world_size)

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, value: T) -> T:
        """Rank zero's `value` on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def on_zero(self, work: Callable[[], T]) -> T | None:
        """Run `work` on rank zero while the others wait; a BenchError there (bad input) is raised
        on every rank, so no rank is left waiting at a barrier. Returns rank zero's result there,
        None elsewhere."""
        result, error = None, None
        if self.is_zero:
            try:
                result = work()
            except BenchError as e:
                error = str(e)
        error = self.broadcast(error)
        if error is not None:
            raise BenchError(error) if self.is_zero else RankStopped()
        return result

    def close(self) -> None:
        """After the last barrier: leave the process group (torch warns at exit otherwise)."""
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class RankStopped(SystemExit):
    """A rank other than zero stops (exit code 2, as for bad input) because rank zero failed on bad
    input; rank zero prints the message, once."""

    def __init__(self):
        super().__init__(2)


def launch_ranks(trainer) -> RunRanks:
    """Start the run's other processes (if the trainer settings ask for more than one) and join
    the process group; `trainer` is the run's `TrainerConfig`. In a process started for rank k,
    joins as rank k."""
    from lightning.fabric import Fabric

    strategy = str(trainer.strategy)
    if any(word in strategy for word in FUNCTION_LAUNCHED):
        raise BenchError(f"trainer.strategy={strategy}: bench run starts the command once per rank and needs a "
                         "strategy that does the same; use --set trainer.strategy=ddp")
    try:
        fabric = Fabric(accelerator=trainer.accelerator, devices=trainer.devices, num_nodes=trainer.num_nodes,
                        strategy="ddp" if strategy.startswith("ddp") else strategy)
    except (ValueError, RuntimeError, TypeError) as e:
        raise BenchError(f"trainer settings (accelerator={trainer.accelerator}, devices={trainer.devices}, "
                         f"strategy={strategy}, num_nodes={trainer.num_nodes}): {e}") from None
    if fabric.world_size == 1:
        return RunRanks()
    fabric.launch()
    return RunRanks(fabric.world_size, fabric.global_rank)
