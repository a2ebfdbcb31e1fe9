"""DefectDiffu: the cost of double-free guidance and the smoke fit's peak memory (CPU).

    python tools/perf/defectdiffu_bench.py [--batch 4] [--repeats 7] [--fit-steps 20] [--threads 1]

1. Guidance cost: one sampling step's denoiser work under Eq. 4 (`double_free_eps`: the three
   conditions (c_g, null), (c_g, c_p), (c_d, null) as one batched call of 3B) against one
   conditional pass of B, on the smoke preset's TDIA at the smoke latent size (the pre-trained
   `tiny-demo-dit`, 16 x 16 x 32 PCA latent, 128 px; built once in $SIAS_BENCH_CACHE if missing).
   Also the three conditions as three separate calls, to show what batching saves.
   Repeats are interleaved; medians reported.
2. Peak memory of the smoke fit: the process's peak resident set (ru_maxrss) after building the
   smoke generator on the demo data, and after `--fit-steps` Lightning fit steps with the smoke
   preset (the fit's footprint does not grow with steps: same batch, same model).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--fit-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import lightning as L
    import torch

    torch.set_num_threads(args.threads)
    from benchmark.config import resolve_options
    from benchmark.data.demo import demo_dataset_path
    from benchmark.data.layouts import read_dataset
    from benchmark.data.split import few_shot_split
    from generators.defectdiffu.double_free import double_free_eps, guidance_contexts
    from generators.defectdiffu.lightning_model import DefectDiffu

    split = few_shot_split(read_dataset(demo_dataset_path(), "mvtec"))
    generator = DefectDiffu(resolve_options(DefectDiffu, "smoke", {"train_steps": args.fit_steps}), 128)
    generator.setup_split(split)
    rss_built = peak_rss_mb()

    # -- 1. guidance cost -------------------------------------------------------------------------
    b = args.batch
    den = generator.denoiser
    x = torch.randn(b, generator.latent_channels, generator.latent_size, generator.latent_size)
    contexts = guidance_contexts(generator.encode_parts, ["wood"] * b, ["scratch"] * b)
    runs = {
        "one conditional pass (B)": lambda: den(x, 500, contexts[1]),
        "Eq. 4, one batched call (3B)": lambda: double_free_eps(den, x, 500, contexts, 1.0, 1.5),
        "Eq. 4, three calls of B": lambda: [den(x, 500, c) for c in contexts],
    }
    times = {k: [] for k in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for name, fn in runs.items():
                times[name].append(timed(fn))
    base = statistics.median(times["one conditional pass (B)"])
    print(f"TDIA (smoke preset: {sum(generator.options.blocks)} blocks, width "
          f"{generator.transformer.config.num_attention_heads * generator.transformer.config.attention_head_dim}, "
          f"latent {generator.latent_channels}x{generator.latent_size}x{generator.latent_size}), batch {b}, "
          f"{args.threads} thread(s), median of {args.repeats}:")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:32s} {med * 1000:8.1f} ms  x{med / base:.2f}")

    # -- 2. smoke fit peak memory -----------------------------------------------------------------
    trainer = L.Trainer(max_steps=args.fit_steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    fit_time = timed(lambda: trainer.fit(generator))
    print(f"peak RSS: {rss_built:.0f} MB after building the smoke generator, {peak_rss_mb():.0f} MB after "
          f"{args.fit_steps} fit steps (batch {generator.options.train_batch_size}); "
          f"{fit_time / args.fit_steps:.3f} s/step")


if __name__ == "__main__":
    main()
