"""The `tiny-demo-dit` smoke transformer: a tiny TDIA on tiny-demo's PCA latent, pre-trained once.

Why: DefectDiffu generates the whole image from pure noise (Sec. 3.3), so its denoiser must
already make images; the paper starts from DiT pre-trained on ImageNet (Sec. 4.1). The smoke
preset's random TDIA on the `tiny` backbone's 192-channel pixel-unshuffle latent did not learn that
in a 400-step fit (eps-MSE 0.1-0.2, every pair 8 px block noise; docs/defectdiffu.md, "History").
The same cure as SeaS' `tiny-demo` (docs/seas.md):
- the latent: `PatchPCAAutoencoder` (tiny-demo's 8 x 8-block PCA, 32 whitened channels, fitted by
  one SVD on the same normal pre-training images), imported from `generators.diffusion.tiny_demo`;
- `LinearSkipTdia`: the TDIA whose eps prediction adds the linear MMSE estimate sqrt(1 - abar_t) x_t
  (the preconditioning that made tiny-demo's U-Net work), patch 2 on the 16 x 16 latent
  (64 tokens of 2 x 2 x 32 = 128 numbers), width 128, one block per part (1, 1, 1);
- pre-trained for `PRETRAIN["steps"]` AdamW steps on the eps-MSE of demo images rendered from seed
  1000, which the benchmark's demo data (seed 0) does not use, with the TDIA's own part prompts
  (`part_prompts`) and Algorithm 1's condition dropout (so Eq. 4's null conditions are learned):
  normal images as (product, "good") and, a smoke-only departure (docs/defectdiffu.md), generic
  defect images of every demo type as (product, defect): the prior knowledge of defects a large
  pre-trained model would bring, which a CPU-minute fit on a few shots cannot teach;
- with the TDIA, a mask generation module (one channel per latent cell, `cell_mask_target`) is
  pre-trained on the same images (Eq. 6 with lambda 1, normal images with empty masks), the defect
  blocks' attention keeping its gradients: in a 300-step fit from a random mask module the module
  learned only the mean mask (every smoke mask flat, hence empty; measured, docs/defectdiffu.md).
  The generator starts its mask module from this state.

Built on first use under `$SIAS_BENCH_CACHE/models/tiny-demo-dit-<recipe hash>` (temp dir + rename,
like `tiny` and `tiny-demo`): `vae/` (the PCA autoencoder), `transformer/` (the TDIA) and
`mask_module.pt`. DefectDiffu loads them in place of the backbone's autoencoder and denoiser and as
its mask module's initial state; the backbone (`tiny`) keeps supplying
the text encoder, tokenizer and schedule, which this pre-training used.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from generators.defectdiffu.double_free import P1, P2, double_free_dropout
from generators.defectdiffu.torch_model import (MaskGenerationModule, TdiaTransformer, cell_mask_target,
                                                defect_block_maps)
from generators.defectdiffu.vocabulary import GOOD, part_prompts
from generators.diffusion.attention import CrossAttentionHook
from generators.diffusion.hub import atomic_folder, quiet_hub_libraries, recipe_folder
from generators.diffusion.tiny import TINY_SEED, TINY_VERSION
from generators.diffusion.tiny_demo import (LATENT_CHANNELS, PatchPCAAutoencoder, ldm_alphas_cumprod,
                                            pretraining_defect_images, pretraining_images, tiny_text_encoder,
                                            with_linear_skip)

log = logging.getLogger(__name__)

TINY_DEMO_DIT = "tiny-demo-dit"
TDIA = dict(num_attention_heads=4, attention_head_dim=32, patch_size=2, blocks=(1, 1, 1))
PRETRAIN = dict(steps=1300, batch_size=8, lr=1e-3, ema=0.995, normals_per_category=48, defects_per_type=16,
                seed=1000, size=128, p1=P1, p2=P2, lambda_mask=1.0)
MASK_HIDDEN = 32  # the pre-trained mask module's width (the smoke preset's `mask_hidden`)


class LinearSkipTdia(TdiaTransformer):
    """A TDIA whose eps prediction is sqrt(1 - abar_t) x_t + F(x_t, t, c): the linear MMSE estimate
    of eps for a zero-mean unit-variance latent (the whitened PCA latent) plus the network, so at
    t near T, where eps is almost x_t, the skip carries the target (as tiny-demo's
    `LinearSkipUNet`; EDM's preconditioning, Karras et al. 2022, Sec. 5, in eps form). Same config
    and weights as the parent; no learned-variance channels (out_channels = in_channels)."""

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states=None, timestep=None,
                class_labels: torch.Tensor | None = None, cross_attention_kwargs: dict | None = None,
                return_dict: bool = True, **unused):
        out = super().forward(hidden_states, encoder_hidden_states, timestep, class_labels, cross_attention_kwargs,
                              return_dict=return_dict)
        return with_linear_skip(out, hidden_states, timestep, return_dict)


def recipe() -> dict:
    from benchmark.data.demo import DEMO_VERSION

    tdia = {k: list(v) if isinstance(v, tuple) else v for k, v in TDIA.items()}
    return {"latent_channels": LATENT_CHANNELS, "tdia": tdia, "skip": "linear",
            "mask_module": {"hidden": MASK_HIDDEN, "latent": "cell"}, **PRETRAIN, "tiny_version": TINY_VERSION,
            "demo_version": DEMO_VERSION}


def tiny_demo_dit_folder() -> Path:
    folder = recipe_folder(TINY_DEMO_DIT, recipe())
    if not (folder / "recipe.json").exists():
        build_tiny_demo_dit(folder)
    return folder


def load_tiny_demo_dit() -> tuple[PatchPCAAutoencoder, LinearSkipTdia, dict]:
    """The cached (built on first use) PCA autoencoder, pre-trained TDIA and its mask module's state
    (a `MaskGenerationModule` of `MASK_HIDDEN` width with one output channel: cell masks)."""
    folder = tiny_demo_dit_folder()
    with quiet_hub_libraries():
        vae = PatchPCAAutoencoder.from_pretrained(folder / "vae")
        tdia = LinearSkipTdia.from_pretrained(folder / "transformer")
    return vae, tdia, torch.load(folder / "mask_module.pt", weights_only=True)


def pretraining_mask_module(tdia: TdiaTransformer, max_length: int) -> MaskGenerationModule:
    """The mask module that reads `tdia`'s defect blocks (prompts of `max_length` tokens) and writes
    one channel per latent cell."""
    return MaskGenerationModule(len(tdia.attention_layers("defect")) * max_length, 1, tdia.config.patch_size,
                                MASK_HIDDEN)


def pretrain_tdia(tdia: LinearSkipTdia, mask_module: MaskGenerationModule, tokenizer, text_encoder,
                  latents: torch.Tensor, masks: torch.Tensor, products: list[str], defects: list[str], steps: int,
                  batch_size: int, lr: float, ema: float, seed: int, p1: float, p2: float, lambda_mask: float,
                  **_) -> list[float]:
    """Train `tdia` and `mask_module` in place on the eps-MSE (Ho et al. 2020 Eq. 14) of `latents` plus
    `lambda_mask` x the mask loss (Eq. 6 on cell masks of `masks`, (B, 1, H, W); the defect blocks'
    attention maps keep their gradients, so the attention learns to find the defect, as in the
    fit), each image with its (product, defect) passed through Algorithm 1's dropout; leave both at
    the exponential moving average of their weights (decay `ema`; DiT samples with an EMA too,
    Peebles & Xie Sec. 5; torch's `AveragedModel`). Returns the per-step total losses."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    rng = torch.Generator().manual_seed(seed)
    abar = ldm_alphas_cumprod()
    contexts: dict[tuple, torch.Tensor] = {}

    def encode(product, defect) -> torch.Tensor:  # (3, L, D), memoised: a few dozen distinct prompt sets
        if (product, defect) not in contexts:
            ids = tokenizer(list(part_prompts(product, defect).as_tuple()), padding="max_length",
                            max_length=text_encoder.config.max_position_embeddings, truncation=True,
                            return_tensors="pt").input_ids
            with torch.no_grad():
                contexts[product, defect] = text_encoder(ids)[0]
        return contexts[product, defect]

    trained = torch.nn.ModuleDict({"tdia": tdia, "mask_module": mask_module})
    optimizer = torch.optim.AdamW(trained.parameters(), lr=lr)
    averaged = AveragedModel(trained, multi_avg_fn=get_ema_multi_avg_fn(ema), use_buffers=True)
    layers = tdia.attention_layers("defect")
    mask_targets = cell_mask_target(masks, tuple(latents.shape[-2:]))
    trained.train()
    losses = []
    for _ in range(steps):
        pick = torch.randint(len(latents), (batch_size,), generator=rng).tolist()
        draws = torch.rand(batch_size, 3, generator=rng, dtype=torch.float64)
        kept_p, kept_d = double_free_dropout([products[i] for i in pick], [defects[i] for i in pick], draws, p1, p2)
        context = torch.stack([encode(p, d) for p, d in zip(kept_p, kept_d)])
        x0 = latents[pick]
        t = torch.randint(len(abar), (batch_size,), generator=rng)
        eps = torch.randn(x0.shape, generator=rng)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with CrossAttentionHook(record=True, detach=False, layers=layers).attach(tdia) as hook:
            eps_loss = F.mse_loss(tdia(x_t, context, t).sample, eps)
        mask_loss = F.mse_loss(mask_module(defect_block_maps(hook.records, layers)), mask_targets[pick])
        loss = eps_loss + lambda_mask * mask_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        averaged.update_parameters(trained)
        losses.append(float(loss.detach()))
        if len(losses) % 100 == 0:
            log.info("tiny-demo-dit pre-training: step %d/%d, loss of the last 100 steps %.4f", len(losses), steps,
                     float(np.mean(losses[-100:])))
    trained.load_state_dict(averaged.module.state_dict())
    trained.eval()
    return losses


def build_tiny_demo_dit(folder: Path) -> Path:
    """Fit the PCA autoencoder on the normal pre-training images (as tiny-demo does), pre-train the
    TDIA on normal and defect images of seed 1000, write both atomically."""
    p = PRETRAIN
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        tokenizer, text_encoder = tiny_text_encoder()
        normals, normal_products = pretraining_images(p["normals_per_category"], p["seed"], p["size"])
        vae = PatchPCAAutoencoder(factor=8, latent_channels=LATENT_CHANNELS).fit(normals)
        defects, defect_masks, defect_products, defect_types = pretraining_defect_images(p["defects_per_type"],
                                                                                         p["seed"], p["size"])
        pixels = torch.cat([normals, defects])
        pixels = torch.cat([pixels, pixels.flip(-1)])  # horizontal flips
        masks = torch.cat([torch.zeros(len(normals), 1, *normals.shape[-2:]), defect_masks])
        masks = torch.cat([masks, masks.flip(-1)])
        products = (normal_products + defect_products) * 2
        kinds = ([GOOD] * len(normal_products) + defect_types) * 2
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mode()
        latent_size = p["size"] // vae.downscale_factor
        with torch.random.fork_rng(devices=[]), quiet_hub_libraries():
            torch.manual_seed(TINY_SEED)
            tdia = LinearSkipTdia(**TDIA, in_channels=LATENT_CHANNELS, out_channels=None, sample_size=latent_size,
                                  cross_attention_dim=int(text_encoder.config.hidden_size))
            mask_module = pretraining_mask_module(tdia, int(text_encoder.config.max_position_embeddings))
            losses = pretrain_tdia(tdia, mask_module, tokenizer, text_encoder, latents, masks, products, kinds, **p)
        vae.save_pretrained(tmp / "vae")
        tdia.save_pretrained(tmp / "transformer")
        torch.save(mask_module.state_dict(), tmp / "mask_module.pt")
        (tmp / "recipe.json").write_text(json.dumps({**recipe(), "final_loss_last_100": float(np.mean(losses[-100:]))},
                                                    indent=1))
    return folder
