"""Segmenter training under DDP: 2 CPU processes on the gloo backend, LFD at 64 px, a few steps.

The test runs this file as a script, the way a user runs a training script: Lightning's `ddp`
strategy re-launches it for rank 1. Each rank writes what it saw; the test checks that both ranks
trained in one process group, on disjoint data, and ended with identical weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

STEPS = 4


def train(out: Path) -> None:
    import lightning as L
    import torch
    from lightning.pytorch.strategies import DDPStrategy
    from torch.utils.data import DataLoader, Dataset

    from segmenters.lfd import LFDRoadSeg

    class Squares(Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            image = torch.rand(3, 64, 64, generator=g) * 0.3 + 0.35
            mask = torch.zeros(64, 64, dtype=torch.long)
            r, c = (torch.randint(0, 32, (2,), generator=g)).tolist()
            mask[r:r + 24, c:c + 24] = 1
            image[:, r:r + 24, c:c + 24] = 0.9
            return {"image": image, "mask": mask, "category": "c", "id": str(i)}

    class Recorder(L.Callback):
        def __init__(self):
            self.ids, self.losses = [], []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.ids += list(batch["id"])
            self.losses.append(float(outputs["loss"]))

    torch.set_num_threads(1)
    L.seed_everything(0, workers=True)
    model = LFDRoadSeg(LFDRoadSeg.Options(max_steps=STEPS, batch_size=2, ohem_min_kept=1000))
    recorder = Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"),
                        max_steps=STEPS, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[recorder], default_root_dir=str(out))
    trainer.fit(model, DataLoader(Squares(), batch_size=2, shuffle=True))
    import torch.distributed as dist

    checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
    report = {"rank": trainer.global_rank, "world_size": trainer.world_size, "backend": dist.get_backend(),
              "global_step": trainer.global_step, "ids": recorder.ids, "losses": recorder.losses,
              "checksum": checksum, "strategy": type(trainer.strategy).__name__}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


def test_lfd_trains_with_ddp_on_two_cpu_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    for var in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    run = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, report in enumerate(reports):
        assert report["rank"] == rank and report["world_size"] == 2 and report["backend"] == "gloo"
        assert report["strategy"] == "DDPStrategy" and report["global_step"] == STEPS
        assert len(report["losses"]) == STEPS and all(loss == loss for loss in report["losses"])
    assert not set(reports[0]["ids"]) & set(reports[1]["ids"])  # DistributedSampler split the data
    assert reports[0]["checksum"] == reports[1]["checksum"]  # gradients were all-reduced


if __name__ == "__main__":
    train(Path(sys.argv[1]))
