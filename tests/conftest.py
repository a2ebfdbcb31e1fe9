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


@pytest.fixture(scope="session")
def make_toy_split():
    """The builder below, for the generator tests' module-scoped `split` fixtures."""
    return toy_few_shot_split


def toy_few_shot_split(root, size: int, categories=("wood",), n_good: int = 2,
                       boxes=(("hole", (10, 20, 30, 44)), ("scratch", (40, 43, 5, 50)))):
    """A FewShotSplit on disk for generator tests: per category `n_good` normal images, then per
    defect type 2 images with a dark box (rows r0+i:r1+i, cols c0:c1) and its mask; random grey
    texture from one seeded generator, drawn in that order."""
    import numpy as np
    from PIL import Image

    from benchmark.data.dataset import Sample
    from benchmark.data.split import CategorySplit, FewShotSplit

    def write(path, array):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)

    rng = np.random.default_rng(0)
    cats = {}
    for cat in categories:
        good = []
        for i in range(n_good):
            p = root / cat / "train" / "good" / f"{i:03d}.png"
            write(p, rng.integers(60, 200, (size, size, 3), dtype=np.uint8))
            good.append(Sample(p, cat))
        defects = {}
        for d, (r0, r1, c0, c1) in boxes:
            defects[d] = []
            for i in range(2):
                img = rng.integers(60, 200, (size, size, 3), dtype=np.uint8)
                mask = np.zeros((size, size), np.uint8)
                mask[r0 + i:r1 + i, c0:c1] = 255
                img[mask > 0] = 20
                p, mp = root / cat / "test" / d / f"{i:03d}.png", root / cat / "ground_truth" / d / f"{i:03d}_mask.png"
                write(p, img)
                write(mp, mask)
                defects[d].append(Sample(p, cat, d, (mp,)))
        cats[cat] = CategorySplit(cat, good, [], defects, {d: [] for d in defects})
    return FewShotSplit(1 / 3, "id", 0, cats)
