"""BADG's costs on the tiny backbone (CPU): the two passes per sampling step, the masked DDIM
inversion, and the smoke fit's peak memory (issue 14).

    python tools/perf/badg_bench.py [--batch 4] [--size 128] [--threads 1] [--repeats 5] [--fit-steps 60]

1. Per sampling step (inference mode, batch `--batch`, the smoke's latent size): Eq. 9 needs
   eps(z_t*, C1) and eps((1 - m) z_t*, C2) at every step. Timed: one pass (C1 only, the masked
   cross-attention installed), the two passes as BADG makes them (one U-Net call on the doubled
   batch, `BadgModel.denoise_pair`), the two passes as two calls, and one pass with diffusers'
   default attention processor instead of the masked one (what Eq. 10 / 11 cost).
2. Masked DDIM inversion (Eq. 8, `masked_ddim_inversion` with the C2 context) at the smoke's and
   the paper's step counts, and `BadgModel.generate` (inversion + composite sampling with Eq. 13's
   attention recording) at the smoke's steps, split into its inversion and sampling parts.
3. The smoke fit: Lightning `Trainer.fit` of the smoke preset (`--fit-steps`, default its
   `train_steps`), seconds per step and peak memory: the process's peak RSS during the fit above
   its RSS before it (VmHWM, reset through /proc/self/clear_refs; `segmenters_bench`'s helpers).
Times are CPU seconds of this process by default (`--clock wall` for elapsed time); repeats are
interleaved and the median is reported, so background load hits all variants alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other perf scripts' helpers

from segmenters_bench import peak_mb, reset_peak, rss_mb  # noqa: E402
from stage_sampler_bench import demo_split  # noqa: E402

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def interleaved_medians(variants: dict, repeats: int, clock) -> dict[str, float]:
    """Median seconds of each callable by `clock`, after one warm-up call each, repeats interleaved."""
    for fn in variants.values():
        fn()
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = clock()
            fn()
            runs[name].append(clock() - start)
    return {name: statistics.median(v) for name, v in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=128, help="image size (the smoke profile's is 128)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fit-steps", type=int, default=None, help="default: the smoke preset's train_steps")
    ap.add_argument("--clock", choices=CLOCKS, default="cpu",
                    help="cpu: the process's CPU seconds (all its threads; less moved by other jobs on a shared "
                         "machine), wall: elapsed seconds")
    args = ap.parse_args()
    clock = CLOCKS[args.clock]

    import torch

    torch.set_num_threads(args.threads)
    from diffusers.models.attention_processor import AttnProcessor

    from benchmark.config import resolve_options
    from generators.badg.lightning_model import BadgGenerator
    from generators.diffusion.inversion import masked_ddim_inversion

    split = demo_split(args.size)
    opts = resolve_options(BadgGenerator, "smoke", {"batch_size": args.batch})
    gen = BadgGenerator(opts, args.size)
    gen.setup_split(split)
    gen.eval()
    model, B, latent = gen.model, args.batch, gen.latent_size
    requests = gen.plan(split, seed=0)[:B]  # demo normals and few-shot masks, as a smoke run encodes them
    with torch.inference_mode():
        encoded = gen.encode_requests(requests)
    z, m = encoded.x_back, encoded.m0
    c1, c2 = encoded.context[:, 0], encoded.context[:, 1]
    cats, defects = [r.category for r in requests], [r.defect for r in requests]
    t = int(gen.sampling_scheduler().timesteps[len(gen.sampling_scheduler().timesteps) // 2])
    masked_processors = model.unet.attn_processors

    def default_attention_pass():
        model.unet.set_attn_processor(AttnProcessor())
        try:
            model.unet(z, torch.full((B,), t), encoder_hidden_states=c1)
        finally:
            model.unet.set_attn_processor(dict(masked_processors))  # diffusers pops from the dict it is given

    # -- 1. cost per sampling step -------------------------------------------------------------------
    with torch.inference_mode():
        step = interleaved_medians({
            "one": lambda: model.denoise(z, t, c1, m),
            "pair": lambda: model.denoise_pair(z, (1 - m) * z, t, c1, c2, m),
            "two_calls": lambda: (model.denoise(z, t, c1, m), model.denoise(z * (1 - m), t, c2, m)),
            "default_attention": default_attention_pass,
        }, args.repeats, clock)
    print(f"# BADG costs: tiny backbone (random init), batch {B}, {args.size} px ({latent}x{latent} latents), "
          f"{args.threads} thread(s), median of {args.repeats} interleaved repeats, {args.clock} seconds")
    print("\n| per sampling step | ms | vs one pass |\n|---|---:|---:|")
    for key, label in (("one", "one pass (C1), masked cross-attention"),
                       ("pair", "two passes C1 + C2, one batched U-Net call (BADG)"),
                       ("two_calls", "two passes C1 + C2, two U-Net calls"),
                       ("default_attention", "one pass, diffusers' default attention")):
        print(f"| {label} | {1e3 * step[key]:.1f} | {step[key] / step['one']:.2f}x |")

    # -- 2. inversion and generation ----------------------------------------------------------------
    paper_steps = BadgGenerator.Options().inversion_steps
    inverse = gen.inverse_scheduler()

    def inversion(steps):
        return lambda: masked_ddim_inversion(z, m, lambda zz, tt, cc: model.denoise(zz, tt, cc, m), inverse, steps,
                                             context=c2)

    sampler = gen.sampling_scheduler()
    positions = [model.tokens.defect_positions(c, d) for c, d in zip(cats, defects)]
    with torch.inference_mode():
        whole = interleaved_medians({
            "inv_smoke": inversion(opts.inversion_steps),
            "inv_paper": inversion(paper_steps),
            "generate": lambda: model.generate(z, m, torch.randn_like(z), c1, c2, sampler, gen.inverse_scheduler(),
                                               positions, c2_input=opts.c2_input),
        }, args.repeats, clock)
    inv = whole["inv_smoke"]
    print("\n| inversion and generation (whole batch) | s | ms per step |\n|---|---:|---:|")
    print(f"| masked DDIM inversion, {opts.inversion_steps} steps (smoke) | {inv:.3f} | {1e3 * inv / opts.inversion_steps:.1f} |")
    print(f"| masked DDIM inversion, {paper_steps} steps (paper) | {whole['inv_paper']:.3f} | "
          f"{1e3 * whole['inv_paper'] / paper_steps:.1f} |")
    print(f"| generate: inversion {opts.inversion_steps} + composite sampling {opts.sampling_steps} steps (smoke) | "
          f"{whole['generate']:.3f} | |")
    print(f"| of which composite sampling (generate - inversion), with Eq. 13 recording | {whole['generate'] - inv:.3f} | "
          f"{1e3 * (whole['generate'] - inv) / opts.sampling_steps:.1f} |")

    # -- 3. the smoke fit -----------------------------------------------------------------------------
    import lightning as L

    from benchmark.progress import quiet_lightning

    quiet_lightning()
    steps = args.fit_steps or opts.train_steps
    fit_gen = BadgGenerator(resolve_options(BadgGenerator, "smoke", {"train_steps": steps}), args.size)
    fit_gen.setup_split(split)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, deterministic=True)
    device = torch.device("cpu")
    before = rss_mb()
    reset_peak(device)
    start = clock()
    trainer.fit(fit_gen)
    seconds = clock() - start
    peak = peak_mb(device)
    print(f"\n| smoke fit ({steps} steps, batch {fit_gen.options.train_batch_size}) | value |\n|---|---:|")
    print(f"| seconds per step (Lightning fit, data loading included) | {seconds / steps:.3f} |")
    print(f"| peak RSS during the fit | {peak:.0f} MB |")
    print(f"| peak RSS above the RSS before the fit | {peak - before:.0f} MB |")


if __name__ == "__main__":
    main()
