"""AnomalyDiffusion as a benchmark generator: a `LatentDiffusionGenerator` with the paper's presets,
its training (masked textual inversion of the anomaly embeddings e_a jointly with the spatial
encoder E, Eq. 5/6, on jointly augmented pairs, Supp. B) and its sampler (blended DDIM, Eq. 1,
with adaptive attention re-weighting, Eq. 7/8); backbone, tokens, data, request encoding and
checkpoints are the base's (`generators.diffusion.generator`).

One model per run for every category and defect type of the split (the paper trains one E shared
by all types and one e_a per type, Supp. C.1). Masks come from the requests (the given few-shot
masks, placed by the base, recorded `given`); the mask-generation model (per-type mask embedding,
Eq. 9/10) has its math in `torch_model` but is not wired into this generator yet
(docs/anomalydiffusion.md).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from benchmark.data.images import load_image
from benchmark.errors import BenchError
from generators.anomalydiffusion.augment import joint_augment
from generators.anomalydiffusion.loss import masked_diffusion_loss
from generators.anomalydiffusion.spatial_encoder import IMAGENET_RESNET50, SpatialEncoder, spatial_anomaly_context
from generators.anomalydiffusion.torch_model import (DDIM_SETTINGS, AdaptiveAttentionReweighting, DdimSettings,
                                                     blended_ddim_sampling)
from generators.diffusion.attention import CrossAttentionHook
from generators.diffusion.concepts import prompt_text
from generators.diffusion.ddpm import add_noise
from generators.diffusion.generator import EncodedRequests, LatentDiffusionGenerator, LatentDiffusionOptions
from generators.diffusion.latents import decode_latents, encode_images, images_to_tensor, mask_to_latent, masks_to_tensor
from generators.diffusion.schedulers import make_scheduler


class AnomalyDiffusionOptions(LatentDiffusionOptions):
    """Defaults are the paper's (Sec. 4.1, Supp. C.1); the `smoke` preset shrinks them."""

    pairs_per_type: int = 1000
    train_steps: int = Field(300_000, ge=1)
    train_batch_size: int = Field(4, ge=1)
    lr: float = 5e-3
    tokens_per_type: int = Field(8, ge=1)  # k, the anomaly embedding e_a
    spatial_tokens: int = Field(4, ge=1)  # n, the spatial embedding e_s
    spatial_arch: Literal["resnet50", "resnet18"] = "resnet50"
    spatial_fpn_channels: int = Field(256, ge=1)
    spatial_grid: int = Field(4, ge=1)
    spatial_encoder_weights: str | None = None  # torchvision ImageNet ResNet state dict: a path, or a name under <cache>/weights/
    augment: bool = True  # Supp. B joint crop / translate / rotate
    augment_max_angle: float = 30.0
    augment_max_zoom: float = Field(1.25, ge=1.0)
    ddim_steps: int = Field(DDIM_SETTINGS["authors"].steps, ge=1)  # the paper gives none: the authors' 200
    ddim_eta: float = DDIM_SETTINGS["authors"].eta
    aar: bool = True
    aar_x0_from: Literal["current", "previous"] = "current"
    aar_clamp: tuple[float, float] | None = None  # the authors' code: (1.0, 1.5)


class AnomalyDiffusionGenerator(LatentDiffusionGenerator):
    name = "anomalydiffusion"
    code_version: ClassVar[int] = 1
    Options = AnomalyDiffusionOptions
    presets: ClassVar[dict[str, dict]] = {
        "paper": {"backbone": "CompVis/ldm-text2im-large-256", "resolution": 256, "train_steps": 300_000,
                  "train_batch_size": 4, "lr": 5e-3, "pairs_per_type": 1000, "ddim_steps": 200, "ddim_eta": 1.0,
                  "spatial_arch": "resnet50", "spatial_encoder_weights": IMAGENET_RESNET50},
        "smoke": {"backbone": "tiny", "train_steps": 150, "train_batch_size": 4, "pairs_per_type": 4,
                  "ddim_steps": 10, "spatial_arch": "resnet18", "spatial_fpn_channels": 16, "spatial_grid": 2,
                  "aar_x0_from": "previous"},
    }

    def __init__(self, options: AnomalyDiffusionOptions, image_size: int):
        super().__init__(options, image_size)
        dim = self.text_encoder.get_input_embeddings().embedding_dim
        self.spatial_encoder = SpatialEncoder(dim, options.spatial_tokens, options.spatial_arch,
                                              options.spatial_fpn_channels, options.spatial_grid,
                                              options.spatial_encoder_weights)

    def check_options(self, T: int) -> None:
        if self.options.ddim_steps > T:
            raise BenchError(f"anomalydiffusion: ddim_steps {self.options.ddim_steps} must lie within T = {T}")

    def trained_parts(self) -> dict[str, nn.Module]:
        return {**super().trained_parts(), "spatial_encoder": self.spatial_encoder}  # e_a and E (Eq. 6)

    def condition(self, concepts: list[str], texts: list[str], masks: torch.Tensor) -> torch.Tensor:
        """e = {e_a, e_s}: the prompt with the type's e_a tokens, then E(mask) (Sec. 3.2)."""
        context, _ = spatial_anomaly_context(self.context(concepts, texts), self.spatial_encoder(masks))
        return context

    # -- training: Eq. 5 / 6 on jointly augmented pairs ------------------------------------------------
    def training_step(self, batch, batch_idx: int):
        images, masks, concept_ids = batch
        rng = self._train_rng
        images, masks = images.cpu(), masks.cpu()
        if self.options.augment:
            pairs = [joint_augment(i, m, rng, self.options.augment_max_angle, self.options.augment_max_zoom)
                     for i, m in zip(images, masks)]
            images, masks = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        images, masks = images.to(self.device), masks.to(self.device)
        with torch.no_grad():
            x0 = encode_images(self.vae, images)
        m0 = mask_to_latent(masks, x0.shape[-2:])
        ids = concept_ids.tolist()
        context = self.condition([self.train_set.concepts[k] for k in ids], [self.train_set.texts[k] for k in ids], masks)
        losses = self.training_loss(x0, m0, context, rng)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=False, batch_size=len(x0))
        return losses["loss"]

    def training_loss(self, x0, m0, context, rng) -> dict[str, torch.Tensor]:
        """Eq. 5 at uniform timesteps."""
        index = self.draw_timesteps(len(x0), rng)
        eps = self.draw_noise(x0, rng)
        z_t = add_noise(x0, eps, self.abar[index].view(-1, 1, 1, 1))
        eps_pred = self.unet(z_t, index, encoder_hidden_states=context).sample
        return {"loss": masked_diffusion_loss(eps, eps_pred, m0)}

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
