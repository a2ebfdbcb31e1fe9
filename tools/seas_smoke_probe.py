"""Issue 11's recipe search for SeaS' smoke profile (docs/seas.md, "Recipe search"): fit the smoke
preset with overrides on the demo data, track the eps-MSE inside / outside the few-shot images'
defect cells, sample pairs per type and save a PNG to look at; or check where the anomaly-token
attention maps lie against the masks (the DA loss' target).

    python tools/seas_smoke_probe.py fit OUT [--set lr=1e-3 ...] [--patch 8] [--unet-channels 32,64]
                                             [--prediction epsilon] [--pretrain steps=2400 ...]
                                             [--guidance 2 5] [--pairs 2]
    python tools/seas_smoke_probe.py attention OUT [--fresh]

`fit` writes OUT/state.pt (the trained parts), OUT/overrides.json and OUT/samples_g<scale>.png: one
row per product and type, its two few-shot images with their masks (red, green outline), then each
pair and its predicted mask. `--patch` / `--unet-channels` / `--prediction` / `--pretrain` (keys of
`tiny_demo.PRETRAIN`, e.g. ema_decay) build a `tiny-demo` variant (its own recipe hash and cache
folder; set SIAS_BENCH_CACHE). One thread: OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from benchmark.config import resolve_options
from benchmark.data.demo import demo_dataset_path
from benchmark.data.layouts import read_dataset
from benchmark.data.split import few_shot_split
from generators.diffusion import tiny_demo
from generators.diffusion.attention import CrossAttentionHook
from generators.diffusion.ddpm import as_epsilon
from generators.diffusion.few_shot import FewShotDefects
from generators.diffusion.latents import encode_images, mask_to_latent, tensor_to_images
from generators.seas.lightning_model import SeasGenerator
from generators.seas.loss import ENCODER, da_loss, da_sizes, encoder_maps, gather_tokens, mask_at

SIZE = 128
TIMESTEPS = (100, 300, 600)  # diffusers' index


def generator(overrides: dict) -> tuple[SeasGenerator, object, FewShotDefects]:
    split = few_shot_split(read_dataset(demo_dataset_path(), "mvtec"))
    gen = SeasGenerator(resolve_options(SeasGenerator, "smoke", overrides), SIZE)
    gen.setup_split(split)
    shots = FewShotDefects(split, SIZE)
    return gen, split, shots


def few_shot_batch(gen: SeasGenerator, shots: FewShotDefects):
    """Latents, (N,1,H,W) masks, P_n contexts and (category, defect) of every few-shot image."""
    images, masks, ids = zip(*shots.items)
    names = [shots.concepts[k].split("/", 1) for k in ids]
    with torch.no_grad():
        x0 = encode_images(gen.vae, torch.stack(images))
        context = gen.encode_prompts([gen._prompt(c, d) for c, d in names])
    return x0, torch.stack(masks), context, names


@torch.no_grad()
def defect_cell_error(gen: SeasGenerator, shots: FewShotDefects, draws: int = 2) -> dict:
    """eps-MSE of the U-Net with each image's P_n (a v or x0 output read as the eps it stands for),
    inside / outside the latent cells its defect touches (max-pooled mask), per timestep, over
    `draws` seeded noise draws."""
    was_training = gen.training
    gen.eval()
    x0, masks, context, _ = few_shot_batch(gen, shots)
    inside = mask_to_latent(masks, tuple(x0.shape[-2:]))
    rng = torch.Generator().manual_seed(123)
    out = {}
    for t in TIMESTEPS:
        sums = np.zeros(2)
        for _ in range(draws):
            eps = torch.randn(x0.shape, generator=rng)
            index = torch.full((len(x0),), t)
            x_t = gen.forward_noise.add_noise(x0, eps, index)
            pred = gen.unet(x_t, index, encoder_hidden_states=context).sample
            pred = as_epsilon(gen.forward_noise.config.prediction_type, pred, x_t, gen.forward_noise.alphas_cumprod[t])
            err = (pred - eps).square().mean(1, keepdim=True)
            sums += [float((err * inside).sum() / inside.sum()), float((err * (1 - inside)).sum() / (1 - inside).sum())]
        out[t] = tuple(round(float(v), 3) for v in sums / draws)
    gen.train(was_training)
    return out


class ReportDefectCells(L.Callback):
    def __init__(self, shots, every: int):
        self.shots, self.every = shots, every

    def on_train_batch_end(self, trainer, gen, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every == 0 and step <= gen.ssf_steps:
            print(f"step {step}: eps-MSE in / outside defect cells {defect_cell_error(gen, self.shots)}", flush=True)


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[mask] = (0.45 * out[mask] + np.array([140, 0, 0])).clip(0, 255).astype(np.uint8)
    out[mask & ~ndimage.binary_erosion(mask)] = [0, 255, 0]
    return out


def sample_grid(gen: SeasGenerator, split, shots: FewShotDefects, path: Path) -> list[float]:
    pairs = []
    requests = gen.plan(split, seed=0)
    with torch.no_grad():
        for i in range(0, len(requests), 8):
            pairs += gen.predict_step(requests[i:i + 8])
    by_type: dict[str, list] = {}
    for image, mask, k in shots.items:
        shot = tensor_to_images(image[None])[0]
        by_type.setdefault(shots.concepts[k], []).append(overlay(shot, mask[0].numpy() > 0.5))
    fractions = []
    for p in pairs:
        mask = np.asarray(p.mask) > 0
        fractions.append(float(mask.mean()))
        by_type[f"{p.request.category}/{p.request.defect}"] += [np.asarray(p.image), overlay(np.asarray(p.image), mask)]
    Image.fromarray(np.concatenate([np.concatenate(row, 1) for row in by_type.values()], 0)).save(path)
    return fractions


def fit(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    (out / "overrides.json").write_text(json.dumps({"overrides": overrides, "patch": args.patch,
                                                    "unet_channels": args.unet_channels,
                                                    "prediction": args.prediction, "pretrain": args.pretrain}))
    torch.manual_seed(0)
    start = time.process_time()
    gen, split, shots = generator({"pairs_per_type": args.pairs, **overrides})
    print(f"backbone ready, CPU {time.process_time() - start:.0f} s; {gen.ssf_steps} SSF steps of "
          f"{gen.options.train_steps}", flush=True)
    print(f"before the fit: eps-MSE in / outside defect cells {defect_cell_error(gen, shots)}", flush=True)
    start = time.process_time()
    L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, max_steps=gen.options.train_steps, max_epochs=-1,
              callbacks=[ReportDefectCells(shots, args.every)]).fit(gen)
    print(f"fit: CPU {time.process_time() - start:.0f} s", flush=True)
    print(f"after the fit: eps-MSE in / outside defect cells {defect_cell_error(gen, shots)}", flush=True)
    torch.save(gen.trained_state(), out / "state.pt")
    gen.eval()
    for scale in args.guidance or [gen.options.guidance_scale]:
        gen.options = gen.options.model_copy(update={"guidance_scale": scale})
        start = time.process_time()
        fractions = sample_grid(gen, split, shots, out / f"samples_g{scale:g}.png")
        print(f"guidance {scale:g}: {len(fractions)} pairs, CPU {time.process_time() - start:.0f} s; mask fraction "
              f"median {np.median(fractions):.3f} ({min(fractions):.3f}-{max(fractions):.3f})", flush=True)


@torch.no_grad()
def attention(args) -> None:
    """DA's maps on the few-shot images at a few timesteps: the DA loss, the AUROC of the mean
    anomaly-token map against the mask (per image, median), and the attention shares."""
    out = Path(args.out)
    gen, _, shots = generator(json.loads((out / "overrides.json").read_text())["overrides"])
    if not args.fresh:
        gen.load_trained_state(torch.load(out / "state.pt", weights_only=False))
    gen.eval()
    x0, masks, context, names = few_shot_batch(gen, shots)
    positions = [gen._positions(c, d) for c, d in names]
    ob, df = (torch.tensor([p[i] for p in positions]) for i in (0, 1))
    size = da_sizes(tuple(x0.shape[-2:]), gen.options.da_scales)[0]
    m = mask_at(masks, size)[:, 0] > 0.5
    rng = torch.Generator().manual_seed(1)
    for t in (50, 300, 600, 900):
        index = torch.full((len(x0),), t)
        x_t = gen.forward_noise.add_noise(x0, torch.randn(x0.shape, generator=rng), index)
        with CrossAttentionHook(record=True, detach=True, layers=[ENCODER]).attach(gen.unet) as hook:
            gen.unet(x_t, index, encoder_hidden_states=context)
        maps = encoder_maps(hook.records, size)
        df_map, ob_map = gather_tokens(maps, df).mean(1), gather_tokens(maps, ob).mean(1)
        aucs = [roc_auc_score(m[i].flatten().numpy(), df_map[i].flatten().numpy())
                for i in range(len(m)) if 0 < m[i].sum() < m[i].numel()]
        print(f"t={t}: DA {float(da_loss(hook.records, masks, ob, df, [size])['da']):.3f}, AUROC of the <df> map vs "
              f"the mask median {np.median(aucs):.2f} ({len(aucs)} images), <df> share mean {float(df_map.mean()):.4f} "
              f"(in the mask {float(df_map[m].mean()):.4f}), <ob> share {float(ob_map.mean()):.4f} "
              f"(in the mask {float(ob_map[m].mean()):.4f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["fit", "attention"])
    ap.add_argument("out", help="output folder")
    ap.add_argument("--set", action="append", default=[], help="generator option KEY=JSON over the smoke preset")
    ap.add_argument("--patch", type=int, default=tiny_demo.PATCH)
    ap.add_argument("--unet-channels", default=None, help="e.g. 64,128 (tiny_demo.UNET_CHANNELS)")
    ap.add_argument("--prediction", default=tiny_demo.PREDICTION, choices=["epsilon", "v_prediction", "sample"])
    ap.add_argument("--pretrain", action="append", default=[], help="tiny_demo.PRETRAIN KEY=JSON over the recipe")
    ap.add_argument("--guidance", type=float, nargs="*", default=None)
    ap.add_argument("--pairs", type=int, default=2, help="pairs per type")
    ap.add_argument("--every", type=int, default=300, help="report the defect-cell error every this many SSF steps")
    ap.add_argument("--fresh", action="store_true", help="attention: the backbone before the fit")
    args = ap.parse_args()
    saved = json.loads((Path(args.out) / "overrides.json").read_text()) if args.command == "attention" else vars(args)
    tiny_demo.PATCH = saved["patch"]
    tiny_demo.PREDICTION = saved.get("prediction", "epsilon")
    tiny_demo.PRETRAIN = {**tiny_demo.PRETRAIN, **{k: json.loads(v) for k, v in (s.split("=", 1) for s in
                                                                                   saved.get("pretrain", []))}}
    if saved["unet_channels"]:
        tiny_demo.UNET_CHANNELS = tuple(int(c) for c in str(saved["unet_channels"]).split(","))
    fit(args) if args.command == "fit" else attention(args)


if __name__ == "__main__":
    main()
