"""`LatentDiffusionGenerator`: what every few-shot latent-diffusion defect generator shares.

The base owns the glue; a method subclasses it and writes only its paper's math:
- backbone: loaded once (`load_backbone`, frozen unless `freeze_backbone = False`) and checked
  against the resolution (a multiple of what the VAE and U-Net downsample by) and T;
- the noise schedule: `abar` (diffusers' alphas_cumprod) and the sampling timesteps of the
  scheduler `sampling_scheduler()` returns (DDPM with "trailing" spacing unless overridden);
- concepts: one per (category, defect type) of the split, each with learned tokens
  (`LearnedTokens`, textual inversion) when `tokens_per_type > 0`; `context()` encodes prompts;
- fit: the few-shot defects (`FewShotDefects`) drawn by a seeded sampler that a resumed fit
  continues (`ResumableDraws`), augmented (`augment`: random flips) and encoded into a `TrainBatch`
  (`encode_train_batch`); its latents reach the hook;
- generate: each request's normal image and placed mask as latents, its prompt context and its own
  noise stream (`EncodedRequests`), then the hook's latents decoded into `SyntheticPair`s;
- checkpoints: only `trained_parts()` are saved, in `generator.pt` and in Lightning's checkpoints.

Hooks: `training_loss(x0, m0, context, rng)` (the method's loss), `sample(batch)` (its sampler),
`trained_parts()` (modules that train), optionally `check_options(T)`, `sampling_scheduler()` and
`augment(images, masks, rng)`. A method whose fit step is its own still starts it with
`encode_train_batch` and ends it with `log_losses`.
docs/diffusion.md shows a complete subclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from benchmark.contracts import MASK_GIVEN, BenchError, GenerationRequest, SyntheticPair
from benchmark.data.images import load_image, load_mask
from generators.base import Generator
from generators.diffusion.backbone import backbone_geometry, load_backbone
from generators.diffusion.concepts import concept_name, prompt_text, split_concepts
from generators.diffusion.few_shot import FewShotDefects, ResumableDraws, place_mask, random_flips
from generators.diffusion.latents import (decode_latents, encode_images, images_to_tensor, mask_to_latent,
                                          masks_to_tensor, tensor_to_images)
from generators.diffusion.noise import PerSampleNoise
from generators.diffusion.options import LatentDiffusionOptions
from generators.diffusion.schedulers import alphas_cumprod, make_scheduler
from generators.diffusion.tokens import LearnedTokens


def resolution_fix(options: LatentDiffusionOptions, resolution: int, multiple: int) -> str:
    """How to give a resolution the backbone takes: the generator option when it is set, else
    the run's --image-size (which it follows), each with the two nearest multiples."""
    below, above = resolution // multiple * multiple, (resolution // multiple + 1) * multiple
    nearest = below or above
    if options.resolution is None:
        sizes = f"{below} or {above}" if below else f"{above}"
        return (f"pass --image-size {sizes}, or keep the image size and give the generator its own "
                f"with --set generator.options.resolution={nearest}")
    return f"pass --set generator.options.resolution={nearest}" + (f" (or {above})" if below else "")


@dataclass
class TrainBatch:
    """A fit batch as the losses need it: augmented, on the device, encoded. Rows past
    `len(concepts)` are images a method appended to the few-shot defects (SeaS' normal images)."""

    masks: torch.Tensor  # (B,1,H,W) augmented pixel masks
    x0: torch.Tensor  # (B,C,h,w) latents of the augmented images
    m0: torch.Tensor  # (B,1,h,w) binary masks at latent size
    concept_ids: list[int]  # the few-shot defects' concept indices into `FewShotDefects.concepts`
    concepts: list[str]
    texts: list[str]  # each concept's prompt text


@dataclass
class EncodedRequests:
    """A predict batch as the sampler needs it."""

    requests: list[GenerationRequest]
    x_back: torch.Tensor  # (B,C,h,w) latents of the normal images
    m0: torch.Tensor  # (B,1,h,w) binary masks at latent size
    masks: list[np.ndarray]  # the placed masks at the generator's resolution (returned with the pairs)
    concepts: list[str]
    context: torch.Tensor  # (B,L,D) text-encoder states of each request's prompt
    noise: PerSampleNoise  # one stream per request seed


class LatentDiffusionGenerator(Generator):
    trainable: ClassVar[bool] = True
    uses_given_masks: ClassVar[bool] = True
    Options = LatentDiffusionOptions
    freeze_backbone: ClassVar[bool] = True  # False: U-Net, VAE and text encoder get gradients (and train mode)

    def __init__(self, options: LatentDiffusionOptions, image_size: int):
        super().__init__(options, image_size)
        backbone = load_backbone(options.backbone, freeze=self.freeze_backbone)
        self.backbone = backbone
        self.resolution = options.resolution or image_size
        self.T = backbone.num_train_timesteps
        self._check_backbone()
        self.check_options(self.T)
        self.unet, self.vae, self.text_encoder = backbone.unet, backbone.vae, backbone.text_encoder
        self.tokens = (LearnedTokens(backbone.tokenizer, backbone.text_encoder, options.tokens_per_type,
                                     options.init_word) if options.tokens_per_type else None)
        self.noise_scheduler = self.sampling_scheduler()
        self.timesteps = [int(t) for t in self.noise_scheduler.timesteps]
        self.register_buffer("abar", alphas_cumprod(self.noise_scheduler).float(), persistent=False)
        self.strict_loading = False  # Lightning checkpoints hold the trained parts only
        self._train_rng: torch.Generator | None = None
        self._resumed_rng: torch.Tensor | None = None
        self.train_set: FewShotDefects | None = None

    # -- hooks ----------------------------------------------------------------------------------
    def check_options(self, T: int) -> None:
        """Raise a BenchError for options that do not fit a backbone with T training steps."""

    def sampling_scheduler(self):
        """The sampling scheduler, timesteps set: ancestral DDPM on the backbone's schedule,
        "trailing" spacing so a respaced run still starts at t = T."""
        scheduler = make_scheduler("ddpm", self.backbone.scheduler_config, timestep_spacing="trailing")
        scheduler.set_timesteps(self.options.sampling_steps)
        return scheduler

    def trained_parts(self) -> dict[str, nn.Module]:
        """The modules fit trains and checkpoints keep, by the name their state is saved under."""
        return {"tokens": self.tokens} if self.tokens is not None else {}

    def training_loss(self, x0: torch.Tensor, m0: torch.Tensor, context: torch.Tensor,
                      rng: torch.Generator) -> dict[str, torch.Tensor]:
        """The method's loss on a batch of few-shot defect latents x0, their latent masks m0 and
        prompt context; draw timesteps and noise from `rng` (`draw_timesteps`, `draw_noise`).
        Returns a dict with "loss" (what is optimised) and any terms to log."""
        raise NotImplementedError

    def sample(self, batch: EncodedRequests) -> torch.Tensor:
        """The method's sampler: x0 latents (B,C,h,w) for the encoded requests."""
        raise NotImplementedError

    # -- backbone -------------------------------------------------------------------------------
    @classmethod
    def preflight(cls, options: LatentDiffusionOptions, image_size: int) -> None:
        """The backbone is there and takes the resolution (its configs only, no weights loaded)."""
        pixels_per_cell, multiple = backbone_geometry(options.backbone)
        cls.check_resolution(options, options.resolution or image_size, pixels_per_cell, multiple)

    @classmethod
    def check_resolution(cls, options: LatentDiffusionOptions, resolution: int, pixels_per_cell: int,
                         multiple: int) -> None:
        if resolution % multiple:
            raise BenchError(f"{cls.name}: resolution {resolution} px is not a multiple of {multiple} "
                             f"(what backbone '{options.backbone}' needs: its VAE maps {pixels_per_cell} px to one "
                             f"latent cell, its denoiser downsamples the latent by {multiple // pixels_per_cell}); "
                             + resolution_fix(options, resolution, multiple))

    def _check_backbone(self) -> None:
        b, o = self.backbone, self.options
        self.check_resolution(o, self.resolution, b.vae_scale_factor, b.size_multiple)
        if o.sampling_steps > self.T:
            raise BenchError(f"{self.name}: sampling_steps {o.sampling_steps} must lie within T = {self.T}")

    @property
    def latent_size(self) -> int:
        return self.resolution // self.backbone.vae_scale_factor

    def frozen_modules(self) -> list[nn.Module]:
        return [self.unet, self.vae, self.text_encoder] if self.freeze_backbone else []

    def train(self, mode: bool = True):
        super().train(mode)
        for frozen in self.frozen_modules():
            frozen.eval()  # no dropout in a frozen backbone (LDM-BERT has p = 0.1) while the rest trains
        return self

    # -- concepts and prompts -------------------------------------------------------------------
    def setup_split(self, split) -> None:
        super().setup_split(split)
        if self.tokens is not None:
            for category, defect in split_concepts(split):
                self.tokens.add(concept_name(category, defect))

    def context(self, concepts: list[str], texts: list[str]) -> torch.Tensor:
        """(B,L,D) text-encoder states of "<text> <learned tokens of the concept>" (or the text alone)."""
        if self.tokens is None:
            ids = self.backbone.tokenizer(texts, padding="max_length", max_length=self.backbone.max_length,
                                          truncation=True, return_tensors="pt").input_ids
            return self.text_encoder(ids.to(self.device))[0]
        prompts = [self.tokens.prompt(c, t) for c, t in zip(concepts, texts)]
        return self.tokens.encode(prompts, self.backbone.max_length)

    # -- fit --------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        if self.split is None:
            raise BenchError(f"{self.name}: call setup_split(split) before fit")
        self.train_set = FewShotDefects(self.split, self.resolution, self.options.prompt)
        if not len(self.train_set):
            raise BenchError(f"{self.name}: the split has no few-shot defects to learn from")
        o = self.options
        draws = ResumableDraws(len(self.train_set), o.train_steps * o.train_batch_size, o.seed)
        if self._trainer is not None and self.trainer.world_size == 1:
            # a resumed fit: global_step is restored before the loader is made (with several ranks
            # Lightning shards the sampler and a resumed fit replays from the start, as before)
            draws.start = self.trainer.global_step * o.train_batch_size
        return DataLoader(self.train_set, batch_size=o.train_batch_size, sampler=draws, drop_last=True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for part in self.trained_parts().values() for p in part.parameters()]

    def configure_optimizers(self):
        return torch.optim.AdamW(self.trainable_parameters(), lr=self.options.lr)

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.tokens is not None:  # concepts absent from the batch: no AdamW decay or momentum step
            self.tokens.drop_absent_gradients()

    def on_fit_start(self) -> None:
        self._train_rng = torch.Generator().manual_seed(self.options.seed * 1000 + self.global_rank)
        if self._resumed_rng is not None and self.trainer.world_size == 1:
            self._train_rng.set_state(self._resumed_rng)  # continue the draws where the checkpoint left them
        self._resumed_rng = None

    def draw_timesteps(self, n: int, rng: torch.Generator) -> torch.Tensor:
        """n diffusers timestep indices, uniform in 0..T-1 (drawn on the CPU, then moved)."""
        return torch.randint(0, self.T, (n,), generator=rng).to(self.device)

    def draw_noise(self, like: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        return torch.randn(like.shape, generator=rng).to(self.device)

    def augment(self, images: torch.Tensor, masks: torch.Tensor, rng: torch.Generator):
        """The fit's augmentation of CPU images (B,3,H,W) and masks (B,1,H,W), drawn from `rng`:
        random flips."""
        return random_flips(images, masks, rng)

    def encode_train_batch(self, images: torch.Tensor, masks: torch.Tensor, concept_ids: torch.Tensor) -> TrainBatch:
        """A loader batch (or one a method extended) augmented, moved to the device and encoded."""
        images, masks = self.augment(images.cpu(), masks.cpu(), self._train_rng)
        images, masks = images.to(self.device), masks.to(self.device)
        with torch.no_grad():
            x0 = encode_images(self.vae, images)
        ids = concept_ids.tolist()
        return TrainBatch(masks, x0, mask_to_latent(masks, x0.shape[-2:]), ids,
                          [self.train_set.concepts[k] for k in ids], [self.train_set.texts[k] for k in ids])

    def log_losses(self, losses: dict[str, torch.Tensor], batch_size: int) -> None:
        """Each term as `train/<name>` (Lightning logs the values detached)."""
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=False, batch_size=batch_size)

    def training_step(self, batch, batch_idx: int):
        data = self.encode_train_batch(*batch)
        losses = self.training_loss(data.x0, data.m0, self.context(data.concepts, data.texts), self._train_rng)
        self.log_losses(losses, len(data.x0))
        return losses["loss"]

    # -- generate ---------------------------------------------------------------------------------
    def encode_requests(self, batch: list[GenerationRequest]) -> EncodedRequests:
        size = self.resolution
        normals, masks = [], []
        for r in batch:
            if not r.mask:
                raise BenchError(f"{self.name}: request {r.id} has no mask; this generator draws inside a given mask")
            mask = load_mask(list(r.mask), size)
            normals.append(load_image(r.normal_image, size))
            masks.append(place_mask(mask, np.random.default_rng(r.seed)) if self.options.mask_augment else mask)
        concepts = [concept_name(r.category, r.defect) for r in batch]
        if self.tokens is not None:
            unknown = sorted(set(concepts) - set(self.tokens.concepts))
            if unknown:
                raise BenchError(f"{self.name}: no learned tokens for {', '.join(unknown)}; "
                                 "train on a split that has them")
        x_back = encode_images(self.vae, images_to_tensor(normals, self.device))
        m0 = mask_to_latent(masks_to_tensor(masks, self.device), x_back.shape[-2:])
        context = self.context(concepts, [prompt_text(r.category, r.defect, self.options.prompt) for r in batch])
        return EncodedRequests(list(batch), x_back, m0, masks, concepts, context,
                               PerSampleNoise([r.seed for r in batch], self.device))

    def decode_pairs(self, batch: EncodedRequests, x0: torch.Tensor, mask_origin: str = MASK_GIVEN) -> list[SyntheticPair]:
        images = tensor_to_images(decode_latents(self.vae, x0))
        return [SyntheticPair(r, *self._at_image_size(img, m), mask_origin)
                for r, img, m in zip(batch.requests, images, batch.masks)]

    def predict_step(self, batch: list[GenerationRequest], batch_idx: int = 0) -> list[SyntheticPair]:
        encoded = self.encode_requests(batch)
        return self.decode_pairs(encoded, self.sample(encoded))

    def _at_image_size(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.resolution == self.image_size:
            return image, mask
        s = (self.image_size, self.image_size)
        image = np.asarray(Image.fromarray(image).resize(s, Image.BICUBIC))
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(s, Image.NEAREST)) > 127
        return image, mask

    # -- checkpoints: the trained parts only, never the frozen backbone ---------------------------
    def trained_state(self) -> dict:
        state = {}
        for name, part in self.trained_parts().items():
            if isinstance(part, LearnedTokens):  # concepts by name, so a checkpoint loads into any split order
                state[name] = part.trained_state()
            else:
                state[name] = {k: v.detach().cpu().clone() for k, v in part.state_dict().items()}
        return state

    def load_trained_state(self, state: dict) -> None:
        parts = self.trained_parts()
        missing = sorted(set(parts) - set(state))
        if missing:
            raise BenchError(f"{self.name}: the checkpoint has no {', '.join(missing)}")
        for name, part in parts.items():
            if isinstance(part, LearnedTokens):
                part.load_trained_state(state[name])
            else:
                part.load_state_dict(state[name])

    def _trained_prefixes(self) -> tuple[str, ...]:
        parts = [id(p) for p in self.trained_parts().values()]
        return tuple(f"{name}." for name, module in self.named_modules() if id(module) in parts)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        prefixes = self._trained_prefixes()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefixes)}
        checkpoint["concepts"] = list(self.tokens.concepts) if self.tokens is not None else []
        if self._train_rng is not None:
            checkpoint["train_rng"] = self._train_rng.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.tokens is not None:
            for concept in checkpoint.get("concepts", []):  # token slots must exist before the state loads
                self.tokens.add(concept)
        self._resumed_rng = checkpoint.get("train_rng")
