"""STAGE as a benchmark generator: Lightning fit (Eq. 12) and predict (Algorithm 1).

Scope: one model per run for every category and defect type of the split, i.e. one pair of mask
guidance adapters shared by all types and 8 learned tokens per (category, type), prompted as
"<class> <anomaly type> <tokens>". The paper does not say; the authors' scripts train one model
per (product, defect) type. One shared model keeps the smoke profile inside its time budget and
the 80k-iteration budget comparable to AnomalyDiffusion's unified setup; the tokens still tell
the types apart.

Deviations, each an option: fewer sampling steps than T = 1000 respace the ancestral DDPM
("trailing" spacing, so sampling starts at t = T); `intervals` defaults to the paper's
[1000, 800] and [400, 300] (the authors' code: [800, 700] and [400, 300]); `adapter_residual`
(off by default) makes the adapters start from the frozen UNet's prediction; `prompt` is the
paper's "class name + anomaly type" (set it to "damaged" for BTAD, as the paper does). Choices
where paper and code are silent or disagree sit where they are made: Eq. 7 vs Algorithm 1
(`torch_model.graded_diffusion`), Eq. 12's branch labels (`loss`), a latent cell belongs to the
mask when any of its pixels does (`generators.diffusion.latents.mask_to_latent`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field, model_validator
from torch.utils.data import DataLoader, RandomSampler

from benchmark.data.images import load_image, load_mask
from benchmark.errors import BenchError
from generators.base import MASK_GIVEN, GenerationRequest, Generator, GeneratorOptions, SyntheticPair
from generators.diffusion.backbone import load_backbone
from generators.diffusion.latents import (decode_latents, encode_images, images_to_tensor, mask_to_latent,
                                          masks_to_tensor, tensor_to_images)
from generators.diffusion.noise import PerSampleNoise
from generators.diffusion.schedulers import alphas_cumprod, make_scheduler
from generators.stage.data import FewShotDefects, concept_name, place_mask, prompt_text, random_flips, split_concepts
from generators.stage.loss import stage_loss
from generators.stage.torch_model import SamplingConfig, StageModel, graded_diffusion


class StageOptions(GeneratorOptions):
    """Defaults are the paper's (Sec. IV-A); the `smoke` preset shrinks them."""

    pairs_per_type: int = 500
    backbone: str = "CompVis/ldm-text2im-large-256"  # hub id, local folder, or "tiny"
    resolution: int | None = None  # px; None = the run's image size
    train_steps: int = Field(80_000, ge=1)
    train_batch_size: int = Field(4, ge=1)
    lr: float = 1e-3
    tokens_per_type: int = Field(8, ge=1)
    init_word: str = "anomaly"  # initialises the learned tokens (authors' code)
    prompt: str = "{category} {defect}"  # the text before the learned tokens; BTAD in the paper: "damaged"
    adapter_channels: tuple[int, ...] = (64, 256, 512, 256, 64)  # authors' code
    adapter_residual: bool = False
    sampling_steps: int = Field(1000, ge=1)  # < T: respaced ancestral DDPM (a deviation, for speed)
    intervals: tuple[tuple[int, int], ...] = ((1000, 800), (400, 300))  # anomaly-only branch, paper's t
    t_s: int = Field(200, ge=0)
    graded_diffusion: bool = True
    anomaly_inference: bool = True
    mask_alignment: Literal["ema", "binary", "none"] = "ema"
    mask_augment: bool = True  # rot90/flip/shift of the given mask from the request seed
    seed: int = 0  # training draws: batches, flips, timesteps, noise

    @model_validator(mode="after")
    def _check(self):
        if any(min(a, b) < 1 for a, b in self.intervals):
            raise ValueError("intervals are in the paper's t = 1..T")
        return self


class StageGenerator(Generator):
    name = "stage"
    # 2: the tiny backbone's lossless autoencoder makes different (real) smoke pairs; part of the
    # synthetic-set cache key, so no cached set from version 1 is reused
    code_version: ClassVar[int] = 2
    trainable: ClassVar[bool] = True
    uses_given_masks: ClassVar[bool] = True
    Options = StageOptions
    presets: ClassVar[dict[str, dict]] = {
        "paper": {"backbone": "CompVis/ldm-text2im-large-256", "resolution": 256, "train_steps": 80_000,
                  "train_batch_size": 4, "lr": 1e-3, "pairs_per_type": 500, "sampling_steps": 1000},
        "smoke": {"backbone": "tiny", "train_steps": 150, "train_batch_size": 4, "sampling_steps": 20,
                  "pairs_per_type": 4, "adapter_channels": (32, 32), "tokens_per_type": 8},
    }

    def __init__(self, options: StageOptions, image_size: int):
        super().__init__(options, image_size)
        backbone = load_backbone(options.backbone)
        self.resolution = options.resolution or image_size
        if self.resolution % backbone.size_multiple:
            raise BenchError(f"stage: resolution {self.resolution} px is not a multiple of {backbone.size_multiple} "
                             f"(what backbone '{options.backbone}' needs); set the generator option resolution")
        T = backbone.num_train_timesteps
        if options.sampling_steps > T or options.t_s >= T or any(max(i) > T for i in options.intervals):
            raise BenchError(f"stage: sampling_steps, t_s and intervals must lie within T = {T}")
        self.model = StageModel(backbone, options.tokens_per_type, options.init_word,
                                tuple(options.adapter_channels), options.adapter_residual)
        scheduler = make_scheduler("ddpm", backbone.scheduler_config, timestep_spacing="trailing")
        scheduler.set_timesteps(options.sampling_steps)
        self.timesteps = [int(t) for t in scheduler.timesteps]
        self.register_buffer("abar", alphas_cumprod(scheduler).float(), persistent=False)
        self.sampling = SamplingConfig(T=T, intervals=tuple(tuple(i) for i in options.intervals), t_s=options.t_s,
                                       graded=options.graded_diffusion, anomaly_inference=options.anomaly_inference,
                                       mask_alignment=options.mask_alignment)
        self.strict_loading = False  # Lightning checkpoints hold the trained parts only
        self._train_rng: torch.Generator | None = None

    # -- data ---------------------------------------------------------------------------------
    def setup_split(self, split) -> None:
        super().setup_split(split)
        for category, defect in split_concepts(split):
            self.model.tokens.add(concept_name(category, defect))

    def train_dataloader(self) -> DataLoader:
        if self.split is None:
            raise BenchError("stage: call setup_split(split) before fit")
        self.train_set = FewShotDefects(self.split, self.resolution, self.options.prompt)
        if not len(self.train_set):
            raise BenchError("stage: the split has no few-shot defects to learn from")
        o = self.options
        sampler = RandomSampler(self.train_set, replacement=True, num_samples=o.train_steps * o.train_batch_size,
                                generator=torch.Generator().manual_seed(o.seed))
        return DataLoader(self.train_set, batch_size=o.train_batch_size, sampler=sampler, drop_last=True)

    # -- fit ----------------------------------------------------------------------------------
    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.trainable_parameters(), lr=self.options.lr)

    def on_fit_start(self) -> None:
        self._train_rng = torch.Generator().manual_seed(self.options.seed * 1000 + self.global_rank)

    def training_step(self, batch, batch_idx: int):
        images, masks, concept_ids = batch
        g = self._train_rng
        images, masks = random_flips(images.cpu(), masks.cpu(), g)
        with torch.no_grad():
            x0 = encode_images(self.model.vae, images.to(self.device))
        m0 = mask_to_latent(masks.to(self.device), x0.shape[-2:])
        ids = concept_ids.tolist()
        context = self.model.context([self.train_set.concepts[k] for k in ids], [self.train_set.texts[k] for k in ids])
        index = torch.randint(0, self.sampling.T, (len(x0),), generator=g).to(self.device)
        eps_1 = torch.randn(x0.shape, generator=g).to(self.device)
        eps_2 = torch.randn(x0.shape, generator=g).to(self.device)
        losses = stage_loss(self.model, x0, m0, context, index, eps_1, eps_2, self.abar, self.sampling.T, self.sampling.t_s)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=False, batch_size=len(x0))
        return losses["loss"]

    # -- generate -----------------------------------------------------------------------------
    def predict_step(self, batch: list[GenerationRequest], batch_idx: int = 0) -> list[SyntheticPair]:
        size = self.resolution
        normals, masks = [], []
        for r in batch:
            if not r.mask:
                raise BenchError(f"stage: request {r.id} has no mask; STAGE generates inside a given mask")
            mask = load_mask(list(r.mask), size)
            normals.append(load_image(r.normal_image, size))
            masks.append(place_mask(mask, np.random.default_rng(r.seed)) if self.options.mask_augment else mask)
        concepts = [concept_name(r.category, r.defect) for r in batch]
        unknown = sorted(set(concepts) - set(self.model.tokens.concepts))
        if unknown:
            raise BenchError(f"stage: no learned tokens for {', '.join(unknown)}; train on a split that has them")
        x_back = encode_images(self.model.vae, images_to_tensor(normals, self.device))
        m0 = mask_to_latent(masks_to_tensor(masks, self.device), x_back.shape[-2:])
        context = self.model.context(concepts, [prompt_text(r.category, r.defect, self.options.prompt) for r in batch])

        def denoise(x_t, index, branch, mask):
            return self.model.denoise(x_t, index, context, mask, branch)

        noise = PerSampleNoise([r.seed for r in batch], self.device)
        x0 = graded_diffusion(denoise, x_back, m0, self.timesteps, self.abar, noise, self.sampling)
        images = tensor_to_images(decode_latents(self.model.vae, x0))
        return [SyntheticPair(r, *self._at_image_size(img, m), MASK_GIVEN) for r, img, m in zip(batch, images, masks)]

    def _at_image_size(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.resolution == self.image_size:
            return image, mask
        s = (self.image_size, self.image_size)
        image = np.asarray(Image.fromarray(image).resize(s, Image.BICUBIC))
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(s, Image.NEAREST)) > 127
        return image, mask

    # -- checkpoints: tokens + adapters only, never the frozen backbone -----------------------
    def trained_state(self) -> dict:
        return self.model.trained_state()

    def load_trained_state(self, state: dict) -> None:
        self.model.load_trained_state(state)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k.startswith(("model.adapters.", "model.tokens."))}
        checkpoint["stage_concepts"] = list(self.model.tokens.concepts)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for concept in checkpoint.get("stage_concepts", []):  # token slots must exist before the state loads
            self.model.tokens.add(concept)
