"""Train-step and inference throughput and peak memory of every segmenter (issue 4).

    python tools/perf/segmenters_bench.py                      # all, 256 px, batch 8, CPU
    python tools/perf/segmenters_bench.py --models lfd segformer --steps 10
    python tools/perf/segmenters_bench.py --device cuda --precision bf16   # on a GPU

Each segmenter runs in a fresh process (so peak memory is its own): build with default options and
random init, then
  inference   eval mode, no_grad, `anomaly_probability` (logits -> softmax at input size)
  train step  `training_loss` (the model's own loss, auxiliary heads included) + backward + the
              optimiser `configure_optimizers` returns
one untimed warm-up call each, then `--steps` timed calls (fewer if `--max-seconds` runs out).
Peak memory on CPU is the process's peak RSS during that phase (VmHWM, reset through
/proc/self/clear_refs before each phase), on CUDA `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2]))  # the repository root

from segmenters import VARIANTS as CASES  # noqa: E402


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return rss_mb("VmHWM")


def timed(fn, steps: int, max_seconds: float, device) -> tuple[int, float]:
    import torch

    fn()  # warm-up (allocator, oneDNN/cuDNN kernel choice)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    done, start = 0, time.perf_counter()
    while done < steps and (done == 0 or time.perf_counter() - start < max_seconds):
        fn()
        done += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return done, time.perf_counter() - start


def worker(case: str, size: int, batch: int, steps: int, max_seconds: float, device_name: str,
           precision: str) -> dict:
    import logging

    import torch

    from benchmark.registry import SEGMENTERS

    logging.disable(logging.INFO)
    torch.manual_seed(0)
    device = torch.device(device_name)
    name, options = CASES[case]
    cls = SEGMENTERS.load(name)
    t0 = time.perf_counter()
    model = cls(cls.Options(**options)).to(device)
    build_s = time.perf_counter() - t0
    images = torch.rand(batch, 3, size, size, device=device)
    masks = (torch.rand(batch, size, size, device=device) > 0.95).long()
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    row = {"model": case, "params_inference": model.inference_parameters(),
           "params_total": sum(p.numel() for p in model.parameters()), "size": size, "batch": batch,
           "device": device_name, "precision": precision, "threads": torch.get_num_threads(),
           "build_s": round(build_s, 2), "rss_after_build_mb": round(rss_mb(), 1)}

    model.eval()
    reset_peak(device)

    def infer():
        with torch.no_grad(), autocast():
            model.anomaly_probability(images)

    n, seconds = timed(infer, steps, max_seconds, device)
    row.update(infer_steps=n, infer_images_per_s=round(n * batch / seconds, 2), infer_peak_mb=round(peak_mb(device), 1))

    model.train()
    opt = model.configure_optimizers()  # an optimizer, or ([optimizer], [scheduler dicts])
    opt = opt[0][0] if isinstance(opt, tuple) else opt
    reset_peak(device)

    def train_step():
        with autocast():
            loss = model.training_loss(images, masks)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    n, seconds = timed(train_step, steps, max_seconds, device)
    row.update(train_steps=n, train_s_per_step=round(seconds / n, 3),
               train_images_per_s=round(n * batch / seconds, 2), train_peak_mb=round(peak_mb(device), 1))
    return row


def table(rows: list[dict]) -> str:
    head = ("| model | params (inference) | train img/s | train s/step | train peak MB | "
            "infer img/s | infer peak MB |\n|---|---:|---:|---:|---:|---:|---:|")
    lines = [f"| {r['model']} | {r['params_inference'] / 1e6:.3f}M | {r['train_images_per_s']} | "
             f"{r['train_s_per_step']} | {r['train_peak_mb']:.0f} | {r['infer_images_per_s']} | "
             f"{r['infer_peak_mb']:.0f} |" for r in rows]
    return "\n".join([head, *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed calls per phase (after one warm-up)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop timing a phase after this long")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--json", default=None, help="also write the raw measurements here")
    args = parser.parse_args()
    common = (args.size, args.batch, args.steps, args.max_seconds, args.device, args.precision)
    if args.worker:
        print(json.dumps(worker(args.worker, *common)))
        return
    rows = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for case in args.models:
        cmd = [sys.executable, str(HERE), "--worker", case, "--size", str(args.size), "--batch", str(args.batch),
               "--steps", str(args.steps), "--max-seconds", str(args.max_seconds), "--device", args.device,
               "--precision", args.precision]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"{case}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    print(f"\n{args.size}x{args.size}, batch {args.batch}, {args.device} ({os.cpu_count()} cores, "
          f"load average {load[0]:.1f} at the end), {args.precision}\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
