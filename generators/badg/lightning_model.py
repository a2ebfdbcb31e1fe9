"""BADG as a benchmark generator: a `LatentDiffusionGenerator` with BADG's presets, its loss
(Eq. 5-7, `loss.badg_loss`) and its inference (Alg. 1 lines 6-7: the masked DDIM inversion of
Eq. 8, z_T* of Sec. 3.2, the composite sampling of Eq. 9, the refined mask of Eq. 13:
`torch_model.BadgModel.generate`); backbone, data, request encoding and checkpoints are the base's.

What trains: the whole U-Net ("we only trained the U-Net part of Stable Diffusion followed by
Dreambooth", Sec. 4.1); the VAE and text encoder stay frozen and no tokens are learned (the
DreamBooth identifiers of `BadgTokens` are fixed words).

Scope: one U-Net per run for every category and defect type of the split. The paper trains one
model "per each class of objects" (App. B) for 500 iterations; a run on one category (the paper's
setting) matches it, a run on several shares the 500 iterations among them (a departure, said in
docs/badg.md).

Background: Proposition 3.3 keeps the background's denoising path independent of the defect, so
outside m the pair is the normal image up to the DDIM-inversion gap (inversion then sampling is
not exact for a real U-Net). `keep_normal_background` (on in `smoke`, off in `paper`) replaces the
background latent by the normal one after sampling; the smoke's random U-Net has a large gap.

What is recorded: the pair's mask is the refined mask m* of Eq. 13 (`mask_origin = "predicted"`)
when it is non-empty, else the request's (placed) mask (`"given"`): Eq. 13 at threshold 1/2 is
empty when the defect words hold less than half of C_def's attention. The manifest's
`mask_origin` says which, per pair, and the count of empty refinements is logged.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from benchmark.contracts import MASK_GIVEN, MASK_PREDICTED, GenerationRequest, SyntheticPair
from generators.badg.loss import badg_loss
from generators.badg.options import BadgOptions
from generators.badg.torch_model import BadgModel, refine_mask
from generators.diffusion.generator import EncodedRequests, LatentDiffusionGenerator
from generators.diffusion.latents import decode_latents, masks_to_tensor, tensor_to_images
from generators.diffusion.schedulers import make_scheduler, scheduler_class

log = logging.getLogger(__name__)


class BadgGenerator(LatentDiffusionGenerator):
    name = "badg"
    code_version: ClassVar[int] = 1
    Options = BadgOptions
    freeze_backbone: ClassVar[bool] = False  # the U-Net trains; `frozen_modules` keeps the rest in eval
    # the paper's run protocol, two 1/2 folds averaged (App. A.1), is not a generator option: the
    # registry entry's `protocol` sets split.folds=2 for the `paper` profile (benchmark/registry.py)
    presets: ClassVar[dict[str, dict]] = {
        "paper": {"backbone": "stable-diffusion-v1-5/stable-diffusion-v1-5", "resolution": 256, "train_steps": 500,
                  "train_batch_size": 1, "lr": 5e-6, "sampling_steps": 50, "inversion_steps": 50},
        # the tiny backbone (random init); few steps so the demo run stays inside the smoke budget.
        # lr 1e-4: at DreamBooth's 5e-6 a 60-step fit would barely move a random U-Net
        "smoke": {"backbone": "tiny", "resolution": None, "train_steps": 60, "train_batch_size": 2, "lr": 1e-4,
                  "pairs_per_type": 4, "sampling_steps": 10, "inversion_steps": 10,
                  # the random tiny U-Net's inversion gap is large (background 4-10 dB PSNR in the latent
                  # at 10-200 steps, measured), which would mislabel every smoke pair
                  "keep_normal_background": True},
    }

    def __init__(self, options: BadgOptions, image_size: int):
        super().__init__(options, image_size)
        self.model = BadgModel(self.backbone)  # installs the masked cross-attention on every U-Net layer
        self.empty_refinements = 0

    def check_options(self, T: int) -> None:
        from benchmark.errors import BenchError

        if self.options.inversion_steps > T:
            raise BenchError(f"badg: inversion_steps {self.options.inversion_steps} must lie within T = {T}")

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae, self.text_encoder]

    def trained_parts(self) -> dict[str, nn.Module]:
        return {"unet": self.unet}

    # -- schedulers: deterministic DDIM (eta = 0) on the backbone's schedule ------------------------
    def sampling_scheduler(self):
        scheduler = make_scheduler("ddim", self.backbone.scheduler_config)
        scheduler.set_timesteps(self.options.sampling_steps)
        return scheduler

    def inverse_scheduler(self):
        """From the sampler's config, so the inversion's first level is the sampler's last (docs/badg.md)."""
        inverse = scheduler_class("ddim_inverse").from_config(self.noise_scheduler.config)
        inverse.set_timesteps(self.options.inversion_steps)
        return inverse

    # -- prompts: C1 = [C_def, C_bg] and C2 = [C_m, C_bg] -----------------------------------------
    def context(self, concepts: list[str], texts: list[str]) -> torch.Tensor:
        """(B, 2, 2L, D): C1 and C2 of each concept ("category/defect"), stacked on dim 1. The
        base hands this to `training_loss`; BADG's prompts are its own (`BadgTokens`), not `texts`."""
        categories, defects = zip(*(c.split("/", 1) for c in concepts))
        c1, c2 = self.model.contexts(list(categories), list(defects))
        return torch.stack([c1, c2], 1)

    # -- fit: Eq. 5 at uniform timesteps, one eps shared by both noisings (Eq. 6, 7) ----------------
    def training_loss(self, x0, m0, context, rng) -> dict[str, torch.Tensor]:
        index = self.draw_timesteps(len(x0), rng)
        eps = self.draw_noise(x0, rng)
        c1, c2 = context[:, 0], context[:, 1]
        return badg_loss(lambda z_t, z_t_m, t: self.model.denoise_pair(z_t, z_t_m, t, c1, c2, m0),
                         x0, m0, eps, index, self.abar)

    # -- generate ---------------------------------------------------------------------------------
    def sample_with_map(self, batch: EncodedRequests) -> tuple[torch.Tensor, torch.Tensor]:
        """z_0* and Eq. 13's map (m' * M_def on the C_def words, latent size) for the requests."""
        requests = batch.requests
        categories, defects = [r.category for r in requests], [r.defect for r in requests]
        c1, c2 = batch.context[:, 0], batch.context[:, 1]  # `context` above, per request
        eps = batch.noise.randn_like(batch.x_back)  # the m * eps of z_T*, one stream per request seed
        positions = [self.model.tokens.defect_positions(c, d) for c, d in zip(categories, defects)]
        sampler = self.sampling_scheduler()
        z0, defect_map = self.model.generate(batch.x_back, batch.m0, eps, c1, c2, sampler, self.inverse_scheduler(),
                                             positions, c2_input=self.options.c2_input)
        if self.options.keep_normal_background:
            z0 = (1 - batch.m0) * batch.x_back + batch.m0 * z0  # the defect cells of z_0*, the rest of the normal latent
        return z0, defect_map

    def sample(self, batch: EncodedRequests) -> torch.Tensor:
        return self.sample_with_map(batch)[0]

    def predict_step(self, batch: list[GenerationRequest], batch_idx: int = 0) -> list[SyntheticPair]:
        encoded = self.encode_requests(batch)
        z0, defect_map = self.sample_with_map(encoded)
        given = masks_to_tensor(encoded.masks, self.device)  # (B,1,R,R), the placed masks
        refined = refine_mask(defect_map, given, self.options.refine_threshold).bool().cpu().numpy()[:, 0]
        images = tensor_to_images(decode_latents(self.vae, z0))
        pairs = []
        for request, image, mask, m_star in zip(encoded.requests, images, encoded.masks, refined):
            origin = MASK_PREDICTED if m_star.any() else MASK_GIVEN  # Eq. 13 empty: keep the given mask
            if origin == MASK_GIVEN:
                self.empty_refinements += 1
                log.debug("badg: Eq. 13 left an empty mask for %s; the pair keeps its given mask", request.id)
            pairs.append(SyntheticPair(request, *self._at_image_size(image, m_star if origin == MASK_PREDICTED
                                                                     else np.asarray(mask, bool)), origin))
        return pairs

    def on_predict_end(self) -> None:
        if self.empty_refinements:
            log.warning("badg: %d pair(s) kept the given mask (Eq. 13's refined mask was empty); "
                        "the manifest's mask_origin says which", self.empty_refinements)
