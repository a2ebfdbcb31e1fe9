"""One smoke step of every generator and segmenter on a GPU, with a profile's trainer settings.

    python tools/gpu_check.py                      # paper profile, every method, on CUDA
    python tools/gpu_check.py --only unet,stage    # some methods
    python tools/gpu_check.py --profile smoke      # the smoke presets (tiny models)

Per method: one optimizer step (segmenters; generators that learn) and one predict batch, on the
built-in demo data, with the profile's preset options (batch sizes, resolution), its resolved
precision and determinism (benchmark/run/gpu_policy.py) on one device; prints a table with the
status, seconds and peak GPU memory of each, and exits 1 if any method failed. A method whose
weights are not in the local folders its preset names is listed as `needs` with the message
saying where to put them (docs/scale.md, "GPU-safe defaults").

Without a CUDA device it stops at once with a message (exit 2); `--accelerator cpu` runs the same
steps on the CPU, which checks this script, not a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

NO_CUDA = ("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); run this on a machine "
           "with an NVIDIA GPU and a CUDA build of torch (or pass --accelerator cpu to check the script itself)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="paper", choices=["smoke", "paper"])
    p.add_argument("--only", default=None, help="comma-separated method names (default: every implemented one)")
    p.add_argument("--accelerator", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--image-size", type=int, default=None, help="default: the profile's")
    p.add_argument("--cache-dir", default=None, help="where the demo data is written (default: the bench cache)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.accelerator == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    import lightning as L

    from benchmark.config import build_config
    from benchmark.progress import quiet_lightning
    from benchmark.registry import GENERATORS, SEGMENTERS

    quiet_lightning()
    # check_segmenter steps every segmenter from random weights (speed and memory, not accuracy), so the
    # config's own segmenter says so too instead of naming its ImageNet file (weights=none)
    overrides = [{"trainer": {"accelerator": args.accelerator, "devices": 1}, "wandb": False,
                  "segmenter": {"options": {"weights": "none"}}}]
    if args.image_size:
        overrides.append({"data": {"image_size": args.image_size}})
    cfg = build_config(args.profile, overrides)
    only = set(args.only.split(",")) if args.only else None
    split = demo_split(cfg, Path(args.cache_dir) if args.cache_dir else None)
    rows = []
    for kind, registry, check in (("generator", GENERATORS, check_generator), ("segmenter", SEGMENTERS, check_segmenter)):
        for entry in registry:
            if entry.status == "planned" or (only and entry.name not in only):
                continue
            L.seed_everything(0, verbose=False)
            rows.append((kind, entry.name, *timed(lambda: check(cfg, entry.load(), split), args.accelerator)))
    print_table(cfg, rows)
    return 1 if any(status == "FAIL" for _, _, status, *_ in rows) else 0


def demo_split(cfg, cache: Path | None):
    from benchmark.data.demo import demo_dataset_path
    from benchmark.data.layouts import read_dataset
    from benchmark.data.split import few_shot_split
    from benchmark.storage import cache_root

    root = demo_dataset_path(cache or cache_root(), seed=cfg.data.demo_seed)
    return few_shot_split(read_dataset(root, "mvtec"), cfg.split.fraction, cfg.split.order, cfg.seed)


def trainer(cfg, max_steps: int | None = None):
    """A one-device Trainer with the profile's resolved precision and determinism."""
    import lightning as L

    from benchmark.run.gpu_policy import resolved_determinism, resolved_precision

    return L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, precision=resolved_precision(cfg),
                     deterministic=resolved_determinism(cfg)["lightning"], max_steps=max_steps or -1,
                     max_epochs=-1 if max_steps else None, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)


def check_segmenter(cfg, cls, split) -> str:
    from torch.utils.data import DataLoader

    from benchmark.config import resolve_options
    from benchmark.segmentation_data import SegmentationDataset, evaluation_items, training_items

    options = resolve_options(cls, cfg.profile, {"max_steps": 1}, "segmenter.options")
    model = cls(options)
    train = SegmentationDataset(training_items(split, None), cfg.data.image_size, augment=True)
    trainer(cfg, max_steps=1).fit(model, DataLoader(train, batch_size=options.batch_size, shuffle=True, drop_last=True))
    category = sorted(split.categories)[0]
    test = SegmentationDataset(evaluation_items(split, category), cfg.data.image_size)
    out = trainer(cfg).predict(model, DataLoader(test, batch_size=options.batch_size), return_predictions=True)
    return f"1 step at batch {options.batch_size}; predicted {sum(len(o['id']) for o in out)} maps"


def check_generator(cfg, cls, split) -> str:
    from torch.utils.data import DataLoader

    from benchmark.config import resolve_options
    from benchmark.contracts import collate_requests

    fields = cls.Options.model_fields
    given = {"pairs_per_type": 1, **({"train_steps": 2} if "train_steps" in fields else {})}
    options = resolve_options(cls, cfg.profile, given, "generator.options")
    generator = cls(options, cfg.data.image_size)
    generator.setup_split(split)
    done = ""
    if cls.trainable:
        trainer(cfg, max_steps=options.train_steps).fit(generator)
        done = f"{options.train_steps} fit steps; "
    requests = generator.plan(split, cfg.seed)[: options.batch_size]
    counter = pair_counter()
    run = trainer(cfg)
    run.callbacks.append(counter)
    run.predict(generator, DataLoader(requests, batch_size=options.batch_size, collate_fn=collate_requests),
                return_predictions=False)
    return f"{done}{counter.pairs} pairs at batch {options.batch_size}"


def pair_counter():
    """A callback counting the pairs predict returns (pairs are frozen dataclasses, which
    Lightning cannot collect with return_predictions=True)."""
    import lightning as L

    class Counter(L.Callback):
        pairs = 0

        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self.pairs += len(outputs)

    return Counter()


def timed(work, accelerator: str) -> tuple[str, float, float | None, str]:
    """(status, seconds, peak GPU memory in GiB, what was done or why it failed)."""
    import torch

    from benchmark.errors import BenchError

    cuda = accelerator == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        status, note = "ok", work()
    except BenchError as e:  # weights not in the local folder the preset names, and other bad input
        status, note = "needs", str(e)
    except Exception as e:  # noqa: BLE001 - every method is tried; the failure is reported
        status, note = "FAIL", f"{type(e).__name__}: {e}".splitlines()[0]
        traceback.print_exc(file=sys.stderr)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return status, seconds, peak, note


def print_table(cfg, rows) -> None:
    from benchmark.run.gpu_policy import resolved_determinism, resolved_precision

    determinism = resolved_determinism(cfg)
    print(f"profile {cfg.profile}, {cfg.trainer.accelerator}, precision {resolved_precision(cfg)}, "
          f"determinism {determinism['mode']} ({determinism['reason']})")
    print(f"{'kind':<10} {'method':<17} {'status':<6} {'seconds':>8} {'peak GiB':>9}  note")
    for kind, name, status, seconds, peak, note in rows:
        memory = f"{peak:9.2f}" if peak is not None else f"{'-':>9}"
        print(f"{kind:<10} {name:<17} {status:<6} {seconds:8.1f} {memory}  {note}")


if __name__ == "__main__":
    sys.exit(main())
