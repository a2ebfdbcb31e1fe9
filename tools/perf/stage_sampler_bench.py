"""STAGE sampler overhead and throughput on the tiny backbone (CPU).

    python tools/perf/stage_sampler_bench.py [--steps 50] [--batch 4] [--size 128] [--threads 1]

1. Sampler overhead: `graded_diffusion` (Algorithm 1: EMA masks, AIF posterior, background and
   mask re-noising, per-sample noise) against the bare denoiser calls it makes: the same number of
   UNet + mask-guidance-adapter calls, same branches, same shapes, nothing else. Goal: <= 5%.
   Measured two ways: (a) in the same run, loop time minus the time spent inside the denoiser
   calls (exact, immune to background load); (b) loop runs against separate bare runs (min and
   median over interleaved repeats; at the 5% level this one is at the mercy of machine load).
   Also shown: the adapters' share (bare UNet calls only), which is model cost, not sampler cost.
2. Seconds per pair: `predict_step` end to end (image/mask loading, VAE encode/decode, sampling)
   with the smoke preset, at the smoke's sampling steps and at the paper's 1000.
3. Training: seconds per step of the smoke preset (both branches, batch `train_batch_size`).
Repeats are interleaved and the median is reported, so background load hits all variants alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def demo_split(size: int):
    from benchmark.data.demo import write_demo_dataset
    from benchmark.data.layouts import read_dataset
    from benchmark.data.split import few_shot_split

    root = Path(tempfile.mkdtemp(prefix="stage-bench-")) / "demo"
    write_demo_dataset(root, size=size, n_train=4, n_test_good=1, n_defect_per_type=3)
    return few_shot_split(read_dataset(root, "mvtec"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50, help="sampling steps for the overhead measurement")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from benchmark.config import resolve_options
    from generators.diffusion.noise import PerSampleNoise
    from generators.stage.lightning_model import StageGenerator
    from generators.stage.torch_model import ONLY, graded_diffusion, in_intervals

    split = demo_split(args.size)
    opts = resolve_options(StageGenerator, "smoke", {"sampling_steps": args.steps, "batch_size": args.batch})
    gen = StageGenerator(opts, args.size)
    gen.setup_split(split)
    gen.eval()
    model, cfg, B = gen.model, gen.sampling, args.batch
    latent = gen.latent_size
    g = torch.Generator().manual_seed(0)
    x_back = torch.randn(B, 4, latent, latent, generator=g)
    m0 = (torch.rand(B, 1, latent, latent, generator=g) > 0.8).float()
    concepts = gen.tokens.concepts[:1] * B
    with torch.inference_mode():
        context = gen.context(concepts, ["x"] * B)
    branches = [ONLY if cfg.graded and in_intervals(t + 1, cfg.intervals) else "aware" for t in gen.timesteps]

    inside = []

    def denoise(x, index, branch, mask):
        t = time.perf_counter()
        out = model.denoise(x, index, context, mask, branch)
        inside[-1] += time.perf_counter() - t
        return out

    def loop():
        inside.append(0.0)
        graded_diffusion(denoise, x_back, m0, gen.timesteps, gen.abar, PerSampleNoise(list(range(B))), cfg)

    def bare_denoiser():
        x = torch.randn(B, 4, latent, latent)
        for index, branch in zip(gen.timesteps, branches):
            model.denoise(x, index, context, m0, branch)

    def bare_unet():
        x = torch.randn(B, 4, latent, latent)
        for index in gen.timesteps:
            model.unet(x, index, encoder_hidden_states=context)

    runs = {"loop": [], "bare_denoiser": [], "bare_unet": []}
    with torch.inference_mode():
        loop(), bare_denoiser(), bare_unet()  # warm-up (its loop entry is inside[0])
        for _ in range(args.repeats):
            for name, fn in (("loop", loop), ("bare_denoiser", bare_denoiser), ("bare_unet", bare_unet)):
                runs[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in runs.items()}
    low = {k: min(v) for k, v in runs.items()}
    own = [total - model_time for total, model_time in zip(runs["loop"], inside[1:])]
    share = statistics.median(o / (total - o) for o, total in zip(own, runs["loop"]))
    print(f"# STAGE sampler overhead: tiny backbone, batch {B}, {args.size} px ({latent}x{latent} latents), "
          f"{args.steps} steps ({branches.count(ONLY)} anomaly-only), {args.threads} thread(s), {args.repeats} repeats")
    print(f"{'':24s}{'min':>9s}{'median':>9s}")
    for name, label in (("loop", "sampling loop"), ("bare_denoiser", "bare UNet+MGA calls"), ("bare_unet", "bare UNet calls")):
        print(f"{label:24s}{low[name]:8.3f}s{med[name]:8.3f}s")
    print(f"(a) sampler's own work: {1e3 * statistics.median(own) / args.steps:.2f} ms per step = {100 * share:+.1f} % "
          f"of the denoiser time in the same run  (goal <= 5 %)")
    print(f"(b) loop vs bare calls: {100 * (low['loop'] / low['bare_denoiser'] - 1):+.1f} % (min), "
          f"{100 * (med['loop'] / med['bare_denoiser'] - 1):+.1f} % (median)")
    print(f"adapters (model cost): {100 * (med['bare_denoiser'] / med['bare_unet'] - 1):+.1f} % over the bare UNet")

    # -- seconds per pair, end to end ------------------------------------------------------------
    requests = gen.plan(split, seed=0)[:B]
    for steps in (resolve_options(StageGenerator, "smoke", {}).sampling_steps, 1000):
        g2 = StageGenerator(resolve_options(StageGenerator, "smoke", {"sampling_steps": steps}), args.size)
        g2.setup_split(split)
        g2.eval()
        with torch.inference_mode():
            g2.predict_step(requests[:1])
            t = statistics.median(timed(lambda: g2.predict_step(requests)) for _ in range(max(1, args.repeats // 2)))
        print(f"predict_step, {steps:4d} steps: {t / len(requests):.3f} s per pair (batch {len(requests)})")

    # -- training speed ------------------------------------------------------------------------------
    g3 = StageGenerator(resolve_options(StageGenerator, "smoke", {}), args.size)
    g3.setup_split(split)
    loader = iter(g3.train_dataloader())
    g3.on_fit_start()
    g3.log_dict = lambda *a, **k: None
    opt = g3.configure_optimizers()
    g3.train()

    def step():
        loss = g3.training_step(next(loader), 0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    t = statistics.median(timed(step) for _ in range(10))
    print(f"training, smoke preset: {t:.3f} s per step (batch {g3.options.train_batch_size}, both branches); "
          f"{g3.options.train_steps} steps ~ {t * g3.options.train_steps:.0f} s")


if __name__ == "__main__":
    main()
