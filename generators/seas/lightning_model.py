"""SeaS as a benchmark generator: a `LatentDiffusionGenerator` with SeaS' two training stages and
its sampler; the math is in `prompts`, `loss` and `torch_model` (docs/seas.md).

Fit (one Lightning fit, `train_steps` optimizer steps, manual optimization with two optimizers):
1. Separation and Sharing Fine-tuning (SSF, A.3): the whole U-Net (AdamW, `lr`) and the UA prompt's
   new token rows (`token_lr`) on mixed batches, `train_batch_size` anomaly images with
   P_n = "a <ob> with <df..>" plus `normal_batch_size` normal images of the same products with
   "a <ob>"; loss = eps-MSE(anomaly) + DA (Eq. 3, encoder cross-attention at 1/2 and 1/4 of the
   latent) + NA (`loss.ssf_loss`).
2. Refined Mask Prediction (RMP, A.3, A.5): the branch alone (`rmp_lr`) on the frozen fine-tuned
   U-Net, same mixed batches, normal images with all-zero masks, focal loss Eq. 10
   (`loss.rmp_loss`).
Generate: a normal image of the request's product noised to t = 1500 on the extended schedule
(`torch_model.noise_to_extended_timestep`), denoised by diffusers' DPMSolverMultistepScheduler
(`sampling_steps`, 25 in the paper) with classifier-free guidance, RMP on the last `mask_steps`
steps averaged and thresholded at 0.2 -> the pair's mask, recorded as `predicted`. With
`output="normal"` the prompt is "a <ob>" (SeaS' normal-image generation; the mask is still the
RMP's, which was trained to say "nothing" on normal images).

Departures, each also in docs/seas.md ("The Lightning glue"):
- one model (U-Net, tokens, RMP) for every product of the split, each product with its own <ob>
  and <df> tokens; the paper and the authors train one model per product. Steps scale as the
  paper's 800 x G per product, summed over the split (`train_steps=None`).
- no gradient accumulation and a 32-bit AdamW (the authors: 8-bit AdamW, accumulation 2).
- the smoke backbones' autoencoders have no decoder blocks: their "VAE-decoder features" are the
  decoded image of the latent at 1/4, 1/2 and 1/1 of its size (`vae_features`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.contracts import MASK_PREDICTED, BenchError, GenerationRequest, SyntheticPair
from benchmark.data.images import load_image
from generators.base import Generator
from generators.diffusion.attention import AttentionRecord, CrossAttentionHook
from generators.diffusion.concepts import split_concepts
from generators.diffusion.conditioning import multi_condition_guidance
from generators.diffusion.generator import LatentDiffusionGenerator
from generators.diffusion.latents import decode_latents, encode_images, images_to_tensor, tensor_to_images
from generators.diffusion.noise import PerSampleNoise
from generators.diffusion.schedulers import make_scheduler, training_target
from generators.seas.loss import ENCODER, da_loss, da_sizes, rmp_loss, ssf_loss
from generators.seas.options import (GUIDANCE, RMP_LR, SAMPLING_STEPS, SD_V14, T_EXTENDED, TOKEN_LR, UNET_LR,
                                     SeasOptions)
from generators.seas.prompts import UnbalancedPrompts, param_groups
from generators.seas.torch_model import (RefinedMaskPrediction, anomaly_probability, binarize_mask, extended_schedule,
                                         noise_to_extended_timestep, unet_decoder_features, vae_decoder_features)

PYRAMID = (4, 2, 1)  # tiny backbone: the decoded image at 1/4, 1/2, 1/1 stands in for VAE-decoder features


class SeasGenerator(LatentDiffusionGenerator):
    name = "seas"
    code_version: ClassVar[int] = 3  # 2, 3: smoke preset on the pre-trained tiny-demo backbone from t = 1500 (3: its
    # linear-skip U-Net; the synthetic-set key does not see the backbone folder, so a new recipe bumps this)
    uses_given_masks: ClassVar[bool] = False  # the mask is predicted (RMP), requests carry none
    repaints_image: ClassVar[bool] = True
    freeze_backbone: ClassVar[bool] = False  # SSF fine-tunes the whole U-Net (A.3)
    Options = SeasOptions
    presets: ClassVar[dict[str, dict]] = {
        "paper": {"backbone": SD_V14, "resolution": 512, "train_steps": None, "ssf_steps_per_type": 800,
                  "rmp_steps_per_type": 800, "train_batch_size": 2, "normal_batch_size": 2, "lr": UNET_LR,
                  "token_lr": TOKEN_LR, "rmp_lr": RMP_LR, "sampling_steps": SAMPLING_STEPS,
                  "noise_timestep": T_EXTENDED, "guidance_scale": GUIDANCE["mvtec"], "pairs_per_type": 1000},
        # smoke: the `tiny-demo` backbone (a 32-channel PCA latent and a tiny U-Net pre-trained once to
        # denoise normal demo images of an unused seed, as SeaS starts from a pre-trained SD), the paper's
        # t = 1500 on the extended schedule; rates far above SD's 4e-6 so a few hundred steps move the small
        # model (measured: 300 steps at U-Net lr 1e-4 left most pairs the wrong product, 600 at 3e-4 few);
        # the RMP is trained at t < 200, the noise levels of the last sampling steps where it is read;
        # encoder cross-attention only at 1/2 of the latent (DA scale 2); up blocks 1, 2 are its finest
        # decoder features
        "smoke": {"backbone": "tiny-demo", "train_steps": 600, "ssf_steps_per_type": 3, "rmp_steps_per_type": 2,
                  "train_batch_size": 2, "normal_batch_size": 2, "lr": 3e-4, "token_lr": 1e-2, "rmp_lr": 2e-3,
                  "sampling_steps": 25, "noise_timestep": T_EXTENDED, "rmp_timesteps": 200, "guidance_scale": 2.0,
                  "pairs_per_type": 4, "batch_size": 8, "da_scales": (2,), "rmp_features": (1, 2),
                  "rmp_coarse_channels": (8, 8), "rmp_attention_layers": 1, "rmp_heads": 2, "rmp_norm_groups": 8},
    }

    def __init__(self, options: SeasOptions, image_size: int):
        super().__init__(options, image_size)
        self.automatic_optimization = False  # two optimizers, one per stage, one step per batch
        # SSF trains the U-Net and the new token rows only: the VAE and the text encoder stay frozen
        for frozen in (self.vae, self.text_encoder):
            frozen.requires_grad_(False).eval()
        o = self.options
        up_channels = list(reversed(self.unet.config.block_out_channels))  # output channels of up_blocks[i]
        self.rmp = RefinedMaskPrediction(
            unet_channels=[up_channels[y - 1] for y in o.rmp_features], coarse_channels=o.rmp_coarse_channels,
            vae_channels=self._vae_feature_channels(), attention_layers=o.rmp_attention_layers, heads=o.rmp_heads,
            norm_groups=o.rmp_norm_groups)
        self.forward_noise = make_scheduler("ddpm", self.backbone.scheduler_config)  # training's q(x_t | x_0)
        self.prompts: dict[str, UnbalancedPrompts] = {}
        self.ssf_steps = 0
        self._normals: dict[str, list[str]] = {}

    # -- backbone pieces ------------------------------------------------------------------------
    def sampling_scheduler(self):
        """diffusers' DPM-Solver++ (2nd order multistep) on the backbone's schedule, `sampling_steps` steps."""
        scheduler = make_scheduler("dpm", self.backbone.scheduler_config)
        scheduler.set_timesteps(self.options.sampling_steps)
        return scheduler

    def check_options(self, T: int) -> None:
        o = self.options
        if o.mask_steps > o.sampling_steps:
            raise BenchError(f"seas: mask_steps {o.mask_steps} exceeds sampling_steps {o.sampling_steps}")
        if o.rmp_timesteps is not None and o.rmp_timesteps > T:
            raise BenchError(f"seas: rmp_timesteps must lie within T = {T}")
        if max(o.rmp_features) > len(self.backbone.unet.up_blocks):
            raise BenchError(f"seas: rmp_features {o.rmp_features} name up blocks the U-Net does not have "
                             f"({len(self.backbone.unet.up_blocks)}); the smoke preset uses (1, 2)")

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae, self.text_encoder]

    def trained_parts(self) -> dict[str, nn.Module]:
        return {"tokens": self.tokens, "unet": self.unet, "rmp": self.rmp}

    def _vae_feature_channels(self) -> list[int]:
        if hasattr(self.vae, "decoder"):  # AutoencoderKL: decoder.up_blocks[i] ends at the i-th reversed width
            return list(reversed(self.vae.config.block_out_channels))[:3]
        return [3] * len(PYRAMID)

    def vae_features(self, latents: torch.Tensor) -> list[torch.Tensor]:
        """High-resolution features for the MRMs, coarse to fine: AutoencoderKL's decoder up blocks
        0, 1, 2 (A.5, Table 15); the tiny backbones' autoencoders (pixel-unshuffle, PCA) have no
        decoder blocks, so their decoded image at 1/4, 1/2, 1/1 stands in (a smoke-only departure)."""
        if hasattr(self.vae, "decoder"):
            with vae_decoder_features(self.vae) as taps:
                decode_latents(self.vae, latents)
            return list(taps.outputs)
        image = decode_latents(self.vae, latents)
        return [F.avg_pool2d(image, s) if s > 1 else image for s in PYRAMID]

    # -- prompts --------------------------------------------------------------------------------
    def setup_split(self, split) -> None:
        Generator.setup_split(self, split)  # not the base's: SeaS registers UA tokens per product, not per type
        types: dict[str, list[str]] = {}
        for category, defect in split_concepts(split):
            types.setdefault(category, []).append(defect)
        o = self.options
        for category, defects in types.items():
            if category not in self.prompts:
                self.prompts[category] = UnbalancedPrompts(self.tokens, category, defects, o.normal_tokens,
                                                           o.anomaly_tokens)
            self._normals[category] = [str(s.image) for s in split.categories[category].train_good]
        G = sum(len(d) for d in types.values())
        ssf, rmp = o.ssf_steps_per_type, o.rmp_steps_per_type
        total = o.train_steps if o.train_steps is not None else (ssf + rmp) * max(G, 1)
        # a copy, so the runner's options (part of the run's config) stay as the user gave them
        self.options = o.model_copy(update={"train_steps": total})
        self.ssf_steps = min(total - 1, max(1, round(total * ssf / (ssf + rmp))))

    def _prompt(self, category: str, defect: str | None) -> str:
        if category not in self.prompts:
            raise BenchError(f"seas: no learned tokens for product {category}; train on a split that has it")
        prompts = self.prompts[category]
        if defect is not None and defect not in prompts.defect_types:
            raise BenchError(f"seas: no learned tokens for {category}/{defect}; train on a split that has them")
        return prompts.normal_prompt() if defect is None else prompts.anomaly_prompt(defect)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.tokens.encode(prompts, self.backbone.max_length)

    def _positions(self, category: str, defect: str) -> tuple[list[int], list[int]]:
        _, ob, df = self.prompts[category].prompt_positions(defect, self.backbone.max_length)
        return ob, df

    # -- fit --------------------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.options
        ssf = torch.optim.AdamW(param_groups(self.unet, self.tokens, o.lr, o.token_lr))
        rmp = torch.optim.AdamW(self.rmp.parameters(), lr=o.rmp_lr)
        return [ssf, rmp]

    def _draw_normals(self, categories: list[str], rng: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        """`normal_batch_size` normal images, the k-th of the k-th anomaly image's product (cycling)."""
        chosen = [categories[k % len(categories)] for k in range(self.options.normal_batch_size)]
        images = []
        for category in chosen:
            files = self._normals[category]
            if not files:
                raise BenchError(f"seas: product {category} has no normal training images (the NA loss needs them)")
            index = int(torch.randint(len(files), (1,), generator=rng))
            images.append(load_image(files[index], self.resolution))
        return images_to_tensor(images) if images else torch.empty(0, 3, self.resolution, self.resolution), chosen

    def training_step(self, batch, batch_idx: int):
        images, masks, concept_ids = batch
        rng = self._train_rng
        concepts = [self.train_set.concepts[k] for k in concept_ids.tolist()]
        categories = [c.split("/", 1)[0] for c in concepts]
        defects = [c.split("/", 1)[1] for c in concepts]
        normals, normal_categories = self._draw_normals(categories, rng)
        images = torch.cat([images.cpu(), normals])
        masks = torch.cat([masks.cpu(), torch.zeros(len(normals), *masks.shape[1:])])  # M_ob = 0 (A.3)
        data = self.encode_train_batch(images, masks, concept_ids)  # flipped together, anomaly rows first
        prompts = [self._prompt(c, d) for c, d in zip(categories, defects)]
        prompts += [self._prompt(c, None) for c in normal_categories]
        n_df = len(concepts)
        ssf_opt, rmp_opt = self.optimizers()
        if self.global_step < self.ssf_steps:
            losses = self.ssf_losses(data.x0, data.masks, prompts, categories, defects, n_df, rng)
            opt = ssf_opt
        else:
            losses = self.rmp_losses(data.x0, data.masks, prompts, n_df, rng)
            losses = {f"rmp_{k}" if k != "loss" else k: v for k, v in losses.items()}
            opt = rmp_opt
        opt.zero_grad()
        self.manual_backward(losses["loss"])
        opt.step()
        self.log_losses(losses, len(data.x0))
        return losses["loss"].detach()

    def ssf_losses(self, x0, masks, prompts, categories, defects, n_df, rng) -> dict:
        """SSF on one mixed batch: rows [0, n_df) anomaly images with P_n, the rest normal images
        with "a <ob>"; independent timesteps and noise for every image (authors' code)."""
        index = self.draw_timesteps(len(x0), rng)
        eps = self.draw_noise(x0, rng)
        x_t = self.forward_noise.add_noise(x0, eps, index)  # q(x_t | x_0), diffusers' DDPM
        context = self.encode_prompts(prompts)
        positions = [self._positions(c, d) for c, d in zip(categories, defects)]
        ob = torch.tensor([p[0] for p in positions], device=self.device)
        df = torch.tensor([p[1] for p in positions], device=self.device)
        with CrossAttentionHook(record=True, detach=False, layers=[ENCODER]).attach(self.unet) as hook:
            pred = self.unet(x_t, index, encoder_hidden_states=context).sample
        records = [AttentionRecord(r.layer, r.probs[:n_df], r.size) for r in hook.records]  # anomaly rows only
        da = da_loss(records, masks[:n_df], ob, df, da_sizes(tuple(x0.shape[-2:]), self.options.da_scales))
        target = training_target(self.forward_noise, x0, eps, index)  # eps, or v / x0 for such a backbone
        out = ssf_loss(target[:n_df], pred[:n_df], target[n_df:], pred[n_df:], self.options.da_weight * da["da"])
        if n_df == len(x0):  # no normal images in the batch: no NA term (Table 12 ablation)
            out["loss"], out["na"] = out["diffusion"] + self.options.da_weight * da["da"], out["na"].detach() * 0
        return {**out, **{k: v for k, v in da.items() if k != "da"}}

    def rmp_features(self, x_t, index, context) -> list[torch.Tensor]:
        with torch.no_grad(), unet_decoder_features(self.unet, self.options.rmp_features) as taps:
            self.unet(x_t, index, encoder_hidden_states=context)
        return list(taps.outputs)

    def rmp_losses(self, x0, masks, prompts, n_df, rng) -> dict:
        """Eq. 10 on one mixed batch, the fine-tuned U-Net frozen (no gradients reach it): U-Net
        and VAE-decoder features of the same x_t at a random t, as the branch sees them when
        sampling (the authors' pipeline decodes the current latent; the paper does not say)."""
        high = self.options.rmp_timesteps or self.T
        index = torch.randint(0, high, (len(x0),), generator=rng).to(self.device)
        eps = self.draw_noise(x0, rng)
        x_t = self.forward_noise.add_noise(x0, eps, index)
        with torch.no_grad():
            context = self.encode_prompts(prompts)
            vae = self.vae_features(x_t)
        coarse, refined = self.rmp(self.rmp_features(x_t, index, context), vae)
        normal = torch.arange(len(x0), device=self.device) >= n_df
        return rmp_loss(coarse, refined, masks, normal)

    # -- generate ---------------------------------------------------------------------------------
    def start_schedule(self) -> torch.Tensor:
        """abar at the paper's t (counted from 1): on the trained schedule when t <= T, else on the
        schedule re-spread over t steps (`torch_model.extended_schedule`)."""
        t = self.options.noise_timestep
        abar = self.abar.double() if t <= self.T else extended_schedule(self.backbone.scheduler_config, t)
        return abar

    def sampling_timesteps(self, scheduler) -> list:
        """The scheduler's timesteps the loop visits. Above T (the paper's 1500) all of them: the
        noised latent is taken as the state at the first (999). At or below T (a smoke-profile
        option, not the paper) only those below the noise level, as diffusers' img2img does."""
        t = self.options.noise_timestep
        steps = list(scheduler.timesteps)
        return steps if t > self.T else [s for s in steps if int(s) <= t - 1]  # diffusers' index = t - 1

    @torch.no_grad()
    def predict_step(self, batch: list[GenerationRequest], batch_idx: int = 0) -> list[SyntheticPair]:
        o = self.options
        normals = [load_image(r.normal_image, self.resolution) for r in batch]
        x_back = encode_images(self.vae, images_to_tensor(normals, self.device))
        defect = (lambda r: None) if o.output == "normal" else (lambda r: r.defect)
        context = self.encode_prompts([self._prompt(r.category, defect(r)) for r in batch])
        uncond = self.encode_prompts([""] * len(batch))
        noise = PerSampleNoise([r.seed for r in batch], self.device)
        x = noise_to_extended_timestep(x_back, noise.randn_like(x_back), self.start_schedule(), o.noise_timestep)
        x, probabilities = self.denoise(x, context, uncond)
        mask = binarize_mask(probabilities, o.mask_threshold)[:, 0].cpu().numpy() > 0.5
        images = tensor_to_images(decode_latents(self.vae, x))
        return [SyntheticPair(r, *self._at_image_size(img, m), MASK_PREDICTED)
                for r, img, m in zip(batch, images, mask)]

    def denoise(self, x: torch.Tensor, context: torch.Tensor, uncond: torch.Tensor):
        """DPM-Solver with classifier-free guidance from x (taken as the state at the scheduler's
        first timestep); at each of the last `mask_steps` steps the RMP reads the prompted half's
        U-Net features and the VAE-decoder features of the same current latent (authors' pipeline). Returns the
        final latent and the steps' anomaly probabilities (B,1,H,W)."""
        o = self.options
        scheduler = self.sampling_scheduler()  # fresh: the multistep solver keeps state
        steps = self.sampling_timesteps(scheduler)
        if len(steps) < o.mask_steps:
            raise BenchError(f"seas: noise_timestep {o.noise_timestep} leaves {len(steps)} of {o.sampling_steps} "
                             f"sampling steps, fewer than mask_steps {o.mask_steps}")
        both = torch.cat([uncond, context])
        probabilities = []
        with unet_decoder_features(self.unet, o.rmp_features) as taps:
            for i, t in enumerate(steps):
                eps_u, eps_c = self.unet(torch.cat([x, x]), t, encoder_hidden_states=both).sample.chunk(2)
                if i >= len(steps) - o.mask_steps:
                    features = [f[len(x):] for f in taps.outputs]  # the prompted half
                    _, refined = self.rmp(features, self.vae_features(x))
                    probabilities.append(anomaly_probability(refined))
                eps = multi_condition_guidance(eps_u, [eps_c], [o.guidance_scale])  # Ho & Salimans Eq. 6
                x = scheduler.step(eps, t, x).prev_sample
        return x, probabilities
