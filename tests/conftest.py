"""Session-wide test settings: offline, seeded, and a private cache folder."""

import os
import signal

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmark/cli.py

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Demo data, tiny models and synthetic sets go to a per-session folder, never ~/.cache."""
    path = tmp_path_factory.mktemp("sias-cache")
    old = os.environ.get("SIAS_BENCH_CACHE")
    os.environ["SIAS_BENCH_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SIAS_BENCH_CACHE", None)
    else:
        os.environ["SIAS_BENCH_CACHE"] = old


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and two OpenMP threads on a 2-core machine
    that runs other jobs slow every small op down 10-25x (measured); restore afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def signal_at_step(monkeypatch):
    """Sends `signal` to this process after training step `step` of the `fit`-th fit this test
    starts (the first by default; a two-fold run's second fit is fold 2's); records the step every
    fit starts from."""
    from benchmark.progress import ProgressCallback

    starts, armed = [], {}
    original_end, original_start = ProgressCallback.on_train_batch_end, ProgressCallback.on_train_start

    def on_train_start(self, trainer, pl_module):
        starts.append(trainer.global_step)
        original_start(self, trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        original_end(self, trainer, pl_module, outputs, batch, batch_idx)
        if armed and len(starts) >= armed["fit"] and trainer.global_step == armed["step"]:
            os.kill(os.getpid(), armed.pop("signal"))
            armed.clear()

    monkeypatch.setattr(ProgressCallback, "on_train_start", on_train_start)
    monkeypatch.setattr(ProgressCallback, "on_train_batch_end", on_train_batch_end)

    def arm(step: int, sig=signal.SIGINT, fit: int = 1):
        armed.update(step=step, signal=sig, fit=fit)
        return starts

    return arm
