"""AnomalyDiffusion as a benchmark generator: a `LatentDiffusionGenerator` with the paper's presets,
its training (masked textual inversion of the anomaly embeddings e_a jointly with the spatial
encoder E, Eq. 5/6, on jointly augmented pairs, Supp. B) and its sampler (blended DDIM, Eq. 1,
with adaptive attention re-weighting, Eq. 7/8); backbone, tokens, data, request encoding and
checkpoints are the base's (`generators.diffusion.generator`).

One model per run for every category and defect type of the split (the paper trains one E shared
by all types and one e_a per type, Supp. C.1). Masks: `mask_source="generated"` (the paper, Sec.
3.4) samples each request's mask from the per-type mask embedding e_m (Eq. 9 in training, Eq. 10
with s = 5 in sampling), binarises it and records it `synthesized`; `"given"` uses the request's
few-shot mask as the base places it (recorded `given`). e_m lives in the same `LearnedTokens` as
e_a, as the concept "mask/<type>" whose first k' vectors the mask prompt uses, and trains in the
same loop as e_a and E (its parameters are disjoint, so the sum of the losses trains each as its
own objective; the paper trains it in a separate 30K-iteration run).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import ClassVar

import torch
from torch import nn

from benchmark.contracts import MASK_GIVEN, MASK_SYNTHESIZED, SyntheticPair
from benchmark.data.images import load_image
from benchmark.errors import BenchError
from generators.anomalydiffusion.augment import joint_augment
from generators.anomalydiffusion.loss import mask_embedding_loss, masked_diffusion_loss
from generators.anomalydiffusion.options import AnomalyDiffusionOptions, DdimSettings
from generators.anomalydiffusion.spatial_encoder import IMAGENET_RESNET50, SpatialEncoder, spatial_anomaly_context
from generators.anomalydiffusion.torch_model import (AdaptiveAttentionReweighting, StoredSetDenoiser, binarise_mask,
                                                     blended_ddim_sampling, guided_mask_eps, touches_border)
from generators.diffusion.attention import CrossAttentionHook
from generators.diffusion.concepts import concept_name, prompt_text, split_concepts
from generators.diffusion.ddpm import add_noise
from generators.diffusion.generator import EncodedRequests, LatentDiffusionGenerator
from generators.diffusion.latents import (decode_latents, encode_masks, images_to_tensor, mask_to_latent,
                                          masks_to_tensor)
from generators.diffusion.noise import PerSampleNoise
from generators.diffusion.schedulers import make_scheduler

log = logging.getLogger(__name__)


class AnomalyDiffusionGenerator(LatentDiffusionGenerator):
    name = "anomalydiffusion"
    code_version: ClassVar[int] = 2  # 2: smoke masks from the stored-mask denoiser
    Options = AnomalyDiffusionOptions
    presets: ClassVar[dict[str, dict]] = {
        "paper": {"backbone": "CompVis/ldm-text2im-large-256", "resolution": 256, "train_steps": 300_000,
                  "train_batch_size": 4, "lr": 5e-3, "pairs_per_type": 1000, "ddim_steps": 200, "ddim_eta": 1.0,
                  "spatial_arch": "resnet50", "spatial_encoder_weights": IMAGENET_RESNET50},
        "smoke": {"backbone": "tiny", "train_steps": 150, "train_batch_size": 4, "pairs_per_type": 4,
                  "ddim_steps": 10, "spatial_arch": "resnet18", "spatial_fpn_channels": 16, "spatial_grid": 2,
                  "aar_x0_from": "previous", "mask_ddim_steps": 10, "mask_denoiser": "stored_masks"},
    }

    def __init__(self, options: AnomalyDiffusionOptions, image_size: int):
        super().__init__(options, image_size)
        dim = self.text_encoder.get_input_embeddings().embedding_dim
        self.spatial_encoder = SpatialEncoder(dim, options.spatial_tokens, options.spatial_arch,
                                              options.spatial_fpn_channels, options.spatial_grid,
                                              options.spatial_encoder_weights)
        self.stored_masks = (StoredMasks() if options.mask_source == "generated" and options.mask_denoiser == "stored_masks"
                             else None)
        self.mask_origins: Counter = Counter()  # of the pairs made, by mask origin (logged at the end)

    def check_options(self, T: int) -> None:
        o = self.options
        if max(o.ddim_steps, o.mask_ddim_steps) > T:
            raise BenchError(f"anomalydiffusion: ddim_steps {o.ddim_steps} and mask_ddim_steps {o.mask_ddim_steps} "
                             f"must lie within T = {T}")

    def trained_parts(self) -> dict[str, nn.Module]:
        parts = {**super().trained_parts(), "spatial_encoder": self.spatial_encoder}  # e_a and E (Eq. 6)
        return parts if self.stored_masks is None else {**parts, "stored_masks": self.stored_masks}

    @property
    def learns_mask_embedding(self) -> bool:
        return self.options.mask_source == "generated" and self.stored_masks is None

    def condition(self, concepts: list[str], texts: list[str], masks: torch.Tensor) -> torch.Tensor:
        """e = {e_a, e_s}: the prompt with the type's e_a tokens, then E(mask) (Sec. 3.2)."""
        context, _ = spatial_anomaly_context(self.context(concepts, texts), self.spatial_encoder(masks))
        return context

    # -- training: Eq. 5 / 6 on jointly augmented pairs ------------------------------------------------
    def augment(self, images, masks, rng):
        """Supp. B's joint crop / translate / rotate in place of the base's flips (none when off)."""
        if not self.options.augment:
            return images, masks
        pairs = [joint_augment(i, m, rng, self.options.augment_max_angle, self.options.augment_max_zoom)
                 for i, m in zip(images, masks)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def training_step(self, batch, batch_idx: int):
        rng = self._train_rng
        data = self.encode_train_batch(*batch)
        losses = self.training_loss(data.x0, data.m0, self.condition(data.concepts, data.texts, data.masks), rng)
        if self.stored_masks is not None:
            self.stored_masks.add(data.masks, data.concept_ids, self.options.stored_masks_per_type)
        if self.learns_mask_embedding:
            losses["loss_diff"] = losses["loss"]
            losses["loss_mask"] = self.mask_loss(data.masks, data.concepts, rng)
            losses["loss"] = losses["loss_diff"] + losses["loss_mask"]
        self.log_losses(losses, len(data.x0))
        return losses["loss"]

    def training_loss(self, x0, m0, context, rng) -> dict[str, torch.Tensor]:
        """Eq. 5 at uniform timesteps."""
        index = self.draw_timesteps(len(x0), rng)
        eps = self.draw_noise(x0, rng)
        z_t = add_noise(x0, eps, self.abar[index].view(-1, 1, 1, 1))
        eps_pred = self.unet(z_t, index, encoder_hidden_states=context).sample
        return {"loss": masked_diffusion_loss(eps, eps_pred, m0)}

    # -- the mask embedding e_m: Eq. 9 in training, Eq. 10 in sampling --------------------------------
    def setup_split(self, split) -> None:
        super().setup_split(split)
        self.split_concept_names = [concept_name(c, d) for c, d in split_concepts(split)]  # FewShotDefects' order
        if self.learns_mask_embedding:
            for category, defect in split_concepts(split):
                self.tokens.add(mask_concept(concept_name(category, defect)))

    def mask_context(self, concepts: list[str] | None, n: int) -> torch.Tensor:
        """The text condition of mask sampling: the first k' tokens of each type's e_m, or the empty
        prompt (None: the unconditional branch of Eq. 10)."""
        if concepts is None:
            prompts = [""] * n
        else:
            prompts = [" ".join(self.tokens.placeholders(mask_concept(c))[:self.options.mask_tokens]) for c in concepts]
        return self.tokens.encode(prompts, self.backbone.max_length)

    def mask_loss(self, masks: torch.Tensor, concepts: list[str], rng: torch.Generator) -> torch.Tensor:
        """Eq. 9: plain textual inversion of e_m on the type's mask images (encoded as grey images)."""
        with torch.no_grad():
            z0 = encode_masks(self.vae, masks)
        index = self.draw_timesteps(len(z0), rng)
        eps = self.draw_noise(z0, rng)
        z_t = add_noise(z0, eps, self.abar[index].view(-1, 1, 1, 1))
        return mask_embedding_loss(eps, self.unet(z_t, index, encoder_hidden_states=self.mask_context(concepts, len(z0))).sample)

    def sample_masks(self, batch: EncodedRequests) -> tuple[list, list[str]]:
        """One mask per request from e_m: DDIM with classifier-free guidance (Eq. 10), binarised;
        draws that are empty or break the authors' border rule are redrawn from the request's own
        stream, and after `mask_tries` the request's given mask is used (and recorded so)."""
        o = self.options
        eps_cond, eps_uncond = self.mask_eps_functions(batch.concepts)
        masks, origins = list(batch.masks), [MASK_GIVEN] * len(batch.masks)
        todo = list(range(len(masks)))
        # a stream of its own per request: how many draws the others need never moves its image noise
        noise = PerSampleNoise([r.seed + MASK_STREAM for r in batch.requests], self.device)
        for _ in range(o.mask_tries):
            if not todo:
                break
            scheduler = make_scheduler("ddim", self.backbone.scheduler_config)
            scheduler.set_timesteps(o.mask_ddim_steps, device=self.device)
            z = noise.randn_like(batch.x_back)
            for t in scheduler.timesteps:
                eps_c, eps_u = eps_cond(z, t), eps_uncond(z, t)
                z = scheduler.step(guided_mask_eps(eps_u, eps_c, o.mask_guidance), t, z, eta=o.ddim_eta,
                                   variance_noise=noise.randn_like(z)).prev_sample
            drawn = binarise_mask(decode_latents(self.vae, z), o.mask_threshold)
            rejected = touches_border(drawn) if o.mask_border_rule else torch.zeros(len(drawn), dtype=torch.bool)
            for i in list(todo):
                if drawn[i].sum() > 0 and not bool(rejected[i]):
                    masks[i], origins[i] = drawn[i, 0].cpu().numpy() > 0.5, MASK_SYNTHESIZED
                    todo.remove(i)
        return masks, origins

    def mask_eps_functions(self, concepts: list[str]):
        """(conditional, unconditional) noise predictions of Eq. 10 as functions of (z_t, t): the
        frozen U-Net with e_m's first k' tokens and with the empty prompt, or (stored_masks) the
        ideal denoiser of the type's stored masks and of every type's."""
        if self.stored_masks is None:
            cond, uncond = self.mask_context(concepts, len(concepts)), self.mask_context(None, len(concepts))
            return (lambda z, t: self.unet(z, t.expand(len(z)), encoder_hidden_states=cond).sample,
                    lambda z, t: self.unet(z, t.expand(len(z)), encoder_hidden_states=uncond).sample)
        if not len(self.stored_masks.masks):
            raise BenchError("anomalydiffusion: no stored masks (mask_denoiser=stored_masks keeps the masks seen "
                             "in the fit); fit the generator or load its trained state first")
        latents = encode_masks(self.vae, self.stored_masks.masks[:, None].to(self.device))
        owner = self.stored_masks.owner.to(self.device)
        own = {c: latents[owner == self.split_concept_names.index(c)] for c in set(concepts)}
        missing = sorted(c for c, s in own.items() if not len(s))
        if missing:
            raise BenchError(f"anomalydiffusion: no stored masks of {', '.join(missing)}; the fit saw none of its defects")
        own = {c: StoredSetDenoiser(s) for c, s in own.items()}
        every = StoredSetDenoiser(latents)

        def cond(z, t):
            return torch.cat([own[c].eps(z[i:i + 1], self.abar[t]) for i, c in enumerate(concepts)])

        return cond, lambda z, t: every.eps(z, self.abar[t])

    def predict_step(self, batch, batch_idx: int = 0):
        encoded = self.encode_requests(batch)
        if self.options.mask_source == "given":
            pairs = self.decode_pairs(encoded, self.sample(encoded))
        else:
            masks, origins = self.sample_masks(encoded)
            encoded.masks = masks
            encoded.m0 = mask_to_latent(masks_to_tensor(masks, self.device), encoded.x_back.shape[-2:])
            pairs = [SyntheticPair(p.request, p.image, p.mask, origin)
                     for p, origin in zip(self.decode_pairs(encoded, self.sample(encoded)), origins)]
        self.mask_origins.update(p.mask_origin for p in pairs)
        return pairs

    def on_predict_start(self) -> None:
        self.mask_origins = Counter()

    def on_predict_end(self) -> None:
        if self.options.mask_source == "given" or not self.mask_origins:
            return
        fell_back, total = self.mask_origins[MASK_GIVEN], sum(self.mask_origins.values())
        report = log.warning if fell_back else log.info
        report("anomalydiffusion: %d of %d masks generated (mask_origin synthesized), %d fell back to the given "
               "mask after %d draws (mask_origin given)", total - fell_back, total, fell_back, self.options.mask_tries)

    # -- generation: blended DDIM with AAR --------------------------------------------------------------
    def sample(self, batch: EncodedRequests) -> torch.Tensor:
        o = self.options
        m_pixels = masks_to_tensor(batch.masks, self.device)
        context = self.condition(batch.concepts, [self._text(r) for r in batch.requests], m_pixels)
        scheduler = make_scheduler("ddim", self.backbone.scheduler_config)
        x_T = batch.noise.randn_like(batch.x_back)

        def denoise(x_t, t):
            return self.unet(x_t, t, encoder_hidden_states=context).sample

        if not o.aar:
            return blended_ddim_sampling(denoise, scheduler, x_T, batch.x_back, batch.m0, batch.noise,
                                         DdimSettings(o.ddim_steps, o.ddim_eta))
        y = images_to_tensor([load_image(r.normal_image, self.resolution) for r in batch.requests], self.device)
        with CrossAttentionHook(record=False).attach(self.unet) as hook:
            aar = AdaptiveAttentionReweighting(hook, clamp=tuple(o.aar_clamp) if o.aar_clamp else None)
            return blended_ddim_sampling(denoise, scheduler, x_T, batch.x_back, batch.m0, batch.noise,
                                         DdimSettings(o.ddim_steps, o.ddim_eta), aar=aar,
                                         decode=lambda z: decode_latents(self.vae, z), y_pixels=y,
                                         m_pixels=m_pixels, x0_from=o.aar_x0_from)

    def _text(self, request) -> str:
        return prompt_text(request.category, request.defect, self.options.prompt)


MASK_STREAM = 1 << 40  # offset of the mask-sampling seed from the request's seed


class StoredMasks(nn.Module):
    """The jointly augmented few-shot masks the fit saw, as uint8 (N,R,R) with the index of their
    type in the split's concept order (N,): the set `stored_set_eps` denoises towards. Buffers, so
    they travel in the trained state; a load resizes them to the saved set."""

    def __init__(self):
        super().__init__()
        self.register_buffer("masks", torch.zeros(0, 0, 0, dtype=torch.uint8))
        self.register_buffer("owner", torch.zeros(0, dtype=torch.long))

    def add(self, masks: torch.Tensor, types: list[int], per_type: int) -> None:
        """Keep each (1,R,R) mask of the batch while its type has fewer than `per_type`."""
        for m, k in zip(masks, types):
            if m.any() and int((self.owner == k).sum()) < per_type:
                m = m[0].round().to(torch.uint8).cpu()[None]
                self.masks = m if not len(self.masks) else torch.cat([self.masks, m])
                self.owner = torch.cat([self.owner, torch.tensor([k])])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("masks", "owner"):  # the saved set's size, not the empty one of a fresh module
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def mask_concept(concept: str) -> str:
    """The learned-token concept of a type's mask embedding e_m."""
    return f"mask/{concept}"
