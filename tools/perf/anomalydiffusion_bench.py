"""AnomalyDiffusion: sampler overhead of AAR + blending, and the smoke fit's peak memory (CPU, tiny backbone).

    python tools/perf/anomalydiffusion_bench.py [--steps 50] [--batch 4] [--size 128] [--threads 1]
                                                [--fit-steps 20] [--repeats 5]

1. Overhead of `blended_ddim_sampling` (Eq. 1 blending after every step; with AAR, Eq. 7/8 before
   every conditional call: decode x0_hat, the weight map, the cross-attention hook) over the bare
   U-Net calls it makes (same count, same shapes, no hook, nothing else). Variants: blending only,
   blending + AAR with x0_hat from the previous step (the smoke preset; no extra call), and with
   x0_hat from the current step (the paper; one extra un-reweighted U-Net call per step, which the
   bare run makes too, so it counts as model cost, not overhead). Measured two ways: (a) in the
   same run, loop time minus the time inside the U-Net calls (the hook's re-weighting runs inside
   them, so (a) leaves it out); (b) loop runs against separate bare runs, min and median over
   interleaved repeats (includes the hook; at the mercy of machine load).
2. The smoke preset's fit (the demo split at --size px, --fit-steps Lightning steps, one thread):
   peak resident memory of a child process that does only that, and its seconds per step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the repository root


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def demo_split(size: int):
    from benchmark.data.demo import write_demo_dataset
    from benchmark.data.layouts import read_dataset
    from benchmark.data.split import few_shot_split

    root = Path(tempfile.mkdtemp(prefix="ad-bench-")) / "demo"
    write_demo_dataset(root, size=size)
    return few_shot_split(read_dataset(root, "mvtec"))


def sampler_overhead(args) -> None:
    import torch

    from benchmark.config import resolve_options
    from generators.anomalydiffusion.lightning_model import AnomalyDiffusionGenerator
    from generators.anomalydiffusion.torch_model import AdaptiveAttentionReweighting, DdimSettings, blended_ddim_sampling
    from generators.diffusion.attention import CrossAttentionHook
    from generators.diffusion.latents import decode_latents
    from generators.diffusion.noise import PerSampleNoise
    from generators.diffusion.schedulers import make_scheduler

    opts = resolve_options(AnomalyDiffusionGenerator, "smoke", {"mask_source": "given"})
    gen = AnomalyDiffusionGenerator(opts, args.size)
    gen.eval()
    B, lat, C = args.batch, gen.latent_size, gen.backbone.latent_channels
    g = torch.Generator().manual_seed(0)
    y = torch.rand(B, 3, args.size, args.size, generator=g) * 2 - 1
    m_pixels = torch.zeros(B, 1, args.size, args.size)
    m_pixels[..., args.size // 4:args.size // 2, args.size // 3:args.size // 2] = 1
    m0 = torch.nn.functional.adaptive_max_pool2d(m_pixels, lat)
    y0 = torch.randn(B, C, lat, lat, generator=g)
    context = torch.randn(B, gen.backbone.max_length + opts.spatial_tokens, gen.text_encoder.get_input_embeddings().embedding_dim,
                          generator=g)
    settings = DdimSettings(args.steps, 1.0)
    inside = []

    def denoise(x, t):
        start = time.perf_counter()
        out = gen.unet(x, t, encoder_hidden_states=context).sample
        inside[-1] += time.perf_counter() - start
        return out

    def loop(aar: str | None):
        inside.append(0.0)
        noise = PerSampleNoise(list(range(B)))
        x_T = noise.randn_like(y0)
        scheduler = make_scheduler("ddim", gen.backbone.scheduler_config)
        if aar is None:
            return blended_ddim_sampling(denoise, scheduler, x_T, y0, m0, noise, settings)
        with CrossAttentionHook(record=False).attach(gen.unet) as hook:
            return blended_ddim_sampling(denoise, scheduler, x_T, y0, m0, noise, settings,
                                         aar=AdaptiveAttentionReweighting(hook), decode=lambda z: decode_latents(gen.vae, z),
                                         y_pixels=y, m_pixels=m_pixels, x0_from=aar)

    def bare(calls: int):
        x = torch.randn(B, C, lat, lat)
        scheduler = make_scheduler("ddim", gen.backbone.scheduler_config)
        scheduler.set_timesteps(args.steps)
        for t in scheduler.timesteps:
            for _ in range(calls):
                gen.unet(x, t.expand(B), encoder_hidden_states=context)

    variants = {"blend": (lambda: loop(None), 1), "blend+AAR previous": (lambda: loop("previous"), 1),
                "blend+AAR current": (lambda: loop("current"), 2)}
    runs = {name: {"loop": [], "bare": [], "own": []} for name in variants}
    with torch.inference_mode():
        for name, (fn, calls) in variants.items():  # warm-up
            fn(), bare(calls)
        for _ in range(args.repeats):
            for name, (fn, calls) in variants.items():
                total = timed(fn)
                runs[name]["loop"].append(total)
                runs[name]["own"].append(total - inside[-1])
                runs[name]["bare"].append(timed(lambda: bare(calls)))
    print(f"# AnomalyDiffusion sampler overhead: tiny backbone, batch {B}, {args.size} px ({lat}x{lat} latents), "
          f"{args.steps} DDIM steps, {args.threads} thread(s), {args.repeats} repeats")
    print(f"{'variant':22s}{'U-Net calls':>12s}{'loop med':>10s}{'bare med':>10s}{'(a) own work':>14s}"
          f"{'(b) min':>9s}{'(b) med':>9s}")
    for name, (_, calls) in variants.items():
        r = runs[name]
        med_loop, med_bare = statistics.median(r["loop"]), statistics.median(r["bare"])
        own = statistics.median(o / (t - o) for o, t in zip(r["own"], r["loop"]))
        print(f"{name:22s}{calls * args.steps:12d}{med_loop:9.3f}s{med_bare:9.3f}s{100 * own:+13.1f}%"
              f"{100 * (min(r['loop']) / min(r['bare']) - 1):+8.1f}%{100 * (med_loop / med_bare - 1):+8.1f}%")


FIT_CHILD = """
import os, resource, sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
import lightning as L
from benchmark.config import resolve_options
from generators.anomalydiffusion.lightning_model import AnomalyDiffusionGenerator
sys.path.insert(0, {tools!r})
from anomalydiffusion_bench import demo_split
split = demo_split({size})
opts = resolve_options(AnomalyDiffusionGenerator, "smoke", {{"train_steps": {steps}}})
gen = AnomalyDiffusionGenerator(opts, {size})
gen.setup_split(split)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
trainer = L.Trainer(accelerator="cpu", devices=1, max_steps={steps}, max_epochs=-1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
start = time.perf_counter()
trainer.fit(gen)
seconds = time.perf_counter() - start
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, seconds, opts.train_steps)
"""


def fit_memory(args) -> None:
    from benchmark.config import resolve_options
    from generators.anomalydiffusion.lightning_model import AnomalyDiffusionGenerator

    code = FIT_CHILD.format(root=str(ROOT), tools=str(Path(__file__).parent), size=args.size, steps=args.fit_steps)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    before, peak, seconds, steps = out.split()[-4:]
    preset_steps = resolve_options(AnomalyDiffusionGenerator, "smoke", {}).train_steps
    per_step = float(seconds) / int(steps)
    print(f"# smoke fit: demo split at {args.size} px, {steps} steps, 1 thread (child process)")
    print(f"peak resident memory {int(peak) / 1024:.0f} MB (after building the generator: {int(before) / 1024:.0f} MB); "
          f"{per_step:.3f} s per step incl. Lightning; the preset's {preset_steps} steps ~ {per_step * preset_steps:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps for the overhead measurement")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fit-steps", type=int, default=20)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    sampler_overhead(args)
    fit_memory(args)


if __name__ == "__main__":
    main()
