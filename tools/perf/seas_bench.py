"""SeaS sampler overhead and smoke-fit peak memory on the smoke backbone (CPU).

    python tools/perf/seas_bench.py [--batch 4] [--size 128] [--threads 1] [--repeats 5] [--fit-steps 6]

1. Sampler overhead: `SeasGenerator.denoise` (DPM-Solver++ with classifier-free guidance, the RMP
   on the last `mask_steps` steps) against the bare model calls it makes: the same U-Net calls on
   the doubled (unconditional + prompted) batch and the same RMP + VAE-feature calls, nothing else.
   Goal: <= 5%. Measured two ways, as tools/perf/stage_sampler_bench.py: (a) in the same run, the
   loop's time minus the time spent inside those model calls, over the model time (immune to
   background load); (b) loop runs against separate bare runs (min and median over interleaved
   repeats; at the 5% level at the mercy of machine load).
2. Peak memory of the smoke fit: a Lightning fit of the smoke preset (its batch sizes, resolution
   and backbone; `--fit-steps` steps, half SSF and half RMP, so both optimizers and both stages
   run; peak memory does not grow with the step count) in a fresh process; reported as the
   process's peak RSS (VmHWM) before the fit (imports, backbone, demo split) and at its end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2]))  # the repository root


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def demo_split():
    from benchmark.data.demo import demo_dataset_path
    from benchmark.data.layouts import read_dataset
    from benchmark.data.split import few_shot_split

    return few_shot_split(read_dataset(demo_dataset_path(), "mvtec"))


def sampler_overhead(args) -> None:
    import torch

    from benchmark.config import resolve_options
    from generators.seas.lightning_model import SeasGenerator

    split = demo_split()
    gen = SeasGenerator(resolve_options(SeasGenerator, "smoke", {}), args.size)
    gen.setup_split(split)
    gen.eval()
    o, B = gen.options, args.batch
    requests = gen.plan(split, seed=0)[:B]
    g = torch.Generator().manual_seed(0)
    shape = (B, gen.backbone.latent_channels, gen.latent_size, gen.latent_size)
    with torch.inference_mode():
        context = gen.encode_prompts([gen._prompt(r.category, r.defect) for r in requests])
        uncond = gen.encode_prompts([""] * B)
    x_start = torch.randn(shape, generator=g)
    steps = gen.sampling_timesteps(gen.sampling_scheduler())
    inside = []
    model_calls = {"unet": gen.unet.forward, "rmp": gen.rmp.forward, "vae": gen.vae_features}

    def timing(fn):
        def wrapped(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            inside[-1] += time.perf_counter() - t
            return out
        return wrapped

    def loop():
        inside.append(0.0)
        gen.unet.forward, gen.rmp.forward = timing(model_calls["unet"]), timing(model_calls["rmp"])
        gen.vae_features = timing(model_calls["vae"])
        try:
            gen.denoise(x_start.clone(), context, uncond)
        finally:
            del gen.unet.forward, gen.rmp.forward, gen.vae_features

    def bare():
        from generators.seas.torch_model import unet_decoder_features

        x, both = torch.cat([x_start, x_start]), torch.cat([uncond, context])
        with unet_decoder_features(gen.unet, o.rmp_features) as taps:
            for i, t in enumerate(steps):
                gen.unet(x, t, encoder_hidden_states=both)
                if i >= len(steps) - o.mask_steps:
                    gen.rmp([f[B:] for f in taps.outputs], gen.vae_features(x_start))

    runs = {"loop": [], "bare": []}
    with torch.inference_mode():
        loop(), bare()  # warm-up (its loop entry is inside[0])
        for _ in range(args.repeats):
            runs["loop"].append(timed(loop))
            runs["bare"].append(timed(bare))
    own = [total - model for total, model in zip(runs["loop"], inside[1:])]
    share = statistics.median(o_ / (total - o_) for o_, total in zip(own, runs["loop"]))
    low = {k: min(v) for k, v in runs.items()}
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"# SeaS sampler overhead: smoke preset ({o.backbone}), batch {B} (U-Net batch {2 * B} with CFG), "
          f"{args.size} px, {len(steps)} DPM-Solver steps, RMP on the last {o.mask_steps}, {args.threads} thread(s), "
          f"{args.repeats} repeats")
    print(f"{'':28s}{'min':>9s}{'median':>9s}")
    for name, label in (("loop", "sampling loop (denoise)"), ("bare", "bare U-Net + RMP calls")):
        print(f"{label:28s}{low[name]:8.3f}s{med[name]:8.3f}s")
    print(f"(a) sampler's own work: {1e3 * statistics.median(own) / len(steps):.2f} ms per step = "
          f"{100 * share:+.1f} % of the model time in the same run  (goal <= 5 %)")
    print(f"(b) loop vs bare calls: {100 * (low['loop'] / low['bare'] - 1):+.1f} % (min), "
          f"{100 * (med['loop'] / med['bare'] - 1):+.1f} % (median)")


def fit_memory(args) -> None:
    """Runs in its own process (`--fit-child`): peak RSS before and after a short smoke fit."""
    import lightning as L

    from benchmark.config import resolve_options
    from generators.seas.lightning_model import SeasGenerator

    split = demo_split()
    gen = SeasGenerator(resolve_options(SeasGenerator, "smoke", {"train_steps": args.fit_steps}), args.size)
    gen.setup_split(split)
    before = rss_mb("VmHWM")
    start = time.perf_counter()
    L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, max_steps=args.fit_steps, max_epochs=-1).fit(gen)
    seconds = time.perf_counter() - start
    o = gen.options
    print(f"# smoke fit peak memory: {o.backbone}, {args.size} px, batch {o.train_batch_size} anomaly + "
          f"{o.normal_batch_size} normal, {args.fit_steps} steps ({gen.ssf_steps} SSF, "
          f"{args.fit_steps - gen.ssf_steps} RMP), {args.threads} thread(s)")
    print(f"peak RSS before the fit (imports, backbone, split): {before:.0f} MB; after the fit: "
          f"{rss_mb('VmHWM'):.0f} MB (+{rss_mb('VmHWM') - before:.0f} MB); {seconds / args.fit_steps:.2f} s per step "
          f"here (first steps include warm-up)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fit-steps", type=int, default=6)
    ap.add_argument("--fit-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.fit_child:
        fit_memory(args)
        return
    sampler_overhead(args)
    sys.stdout.flush()
    subprocess.run([sys.executable, str(HERE), "--fit-child", "--size", str(args.size), "--threads",
                    str(args.threads), "--fit-steps", str(args.fit_steps)], check=True)


if __name__ == "__main__":
    main()
