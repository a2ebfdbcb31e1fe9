"""DefectDiffu as a benchmark generator: a `LatentDiffusionGenerator` whose denoiser is the three-part
DiT (`torch_model.TdiaTransformer`) instead of the backbone's U-Net; the math is in `double_free`,
`loss`, `sampling` and `torch_model` (docs/defectdiffu.md).

Fit: each step takes few-shot defect images of the split (the base's sampler and flips), drops
conditions by Algorithm 1 (p1 = p2 = 0.2), encodes the three TDIA prompts per image, and minimises
Eq. 11: eps-MSE + the AAL defect-region term (Eq. 7-10, R from the defect blocks' attention at the
defect words) + 0.2 x the mask-module loss (Eq. 6, against the VAE-encoded real mask). What trains:
the whole TDIA (DiT blocks and the added cross-attention) and the mask generation module; the VAE
and the text encoder stay frozen; no tokens are learned (the prompts are plain words, Sec. 3.2).
Generate: from pure noise (no normal image, no given mask, Sec. 3.3), three eps evaluations per
step combined by Eq. 4 (w_p, and w_d fixed or cycled through `w_d_sweep`), the mask module read
from the (c_d, null) pass at every step, decoded, averaged over the last `mask_steps` steps and
binarised by isodata: the pair's mask is recorded as `predicted`. `zero_shot_targets` adds Eq. 12
requests: a product of the split with normal images only gets the defects learned on the others.

Departures and choices (each also in docs/defectdiffu.md, "The Lightning glue"):
- The sampler is deterministic DDIM (eta = 0) on the backbone's schedule, so a pair depends on its
  request's seed alone (the paper names no sampler; the authors respace DiT's DDPM).
- DiT's learned-variance output channels (paper size) get no loss: the DDIM sampler does not use them.
- One model for every product of the split (the paper's multi-product model, Sec. 3.2).
- The backbone supplies the VAE and the CLIP text encoder; its U-Net is dropped after loading.
- Only few-shot defect images are trained on (the base's data); normal images of the products are
  not drawn, so (c_g, c_p) is learned only from Algorithm 1's c_d -> good dropout of defect images.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from benchmark.contracts import MASK_PREDICTED, BenchError, GenerationRequest, SyntheticPair
from generators.defectdiffu.double_free import W_D_SWEEP, double_free_dropout, guidance_contexts, w_d_for_requests
from generators.defectdiffu.loss import (adaptive_attention_loss, defect_token_positions, mask_prediction_loss,
                                         total_loss)
from generators.defectdiffu.options import BLOCKS_PAPER, DIT_FOLDER, LAST_STEPS, SD_V15, DefectDiffuOptions
from generators.defectdiffu.sampling import defect_pass_maps, double_free_sample
from generators.defectdiffu.tiny_dit import TDIA as TINY_DEMO_TDIA
from generators.defectdiffu.tiny_dit import MASK_HIDDEN as TINY_DEMO_MASK_HIDDEN
from generators.defectdiffu.tiny_dit import TINY_DEMO_DIT, load_tiny_demo_dit
from generators.defectdiffu.torch_model import (DIT_XL_2_512, MaskGenerationModule, TdiaTransformer, cell_mask_target,
                                                defect_block_maps, mask_gray, upsample_cell_mask)
from generators.defectdiffu.vocabulary import PartPrompts, part_prompts, unified_defect
from generators.diffusion.attention import CrossAttentionHook
from generators.diffusion.concepts import split_concepts
from generators.diffusion.ddpm import add_noise
from generators.diffusion.denoiser import as_denoiser
from generators.diffusion.generator import LatentDiffusionGenerator, resolution_fix
from generators.diffusion.latents import decode_latents, encode_masks, tensor_to_images
from generators.diffusion.noise import PerSampleNoise
from generators.diffusion.schedulers import make_scheduler

log = logging.getLogger(__name__)

# the smoke preset's TDIA: 5 blocks (2 background, 2 defect, 1 fusion), 64 wide
TINY_DIT = dict(num_attention_heads=4, attention_head_dim=48, patch_size=1, blocks=(2, 2, 1))


class DefectDiffu(LatentDiffusionGenerator):
    name = "defectdiffu"
    code_version: ClassVar[int] = 1
    uses_given_masks: ClassVar[bool] = False  # the mask is generated with the image (Sec. 3.4)
    repaints_image: ClassVar[bool] = True
    Options = DefectDiffuOptions
    presets: ClassVar[dict[str, dict]] = {
        "paper": {"backbone": SD_V15, "resolution": 512, "transformer": "dit-xl-2", "dit_weights": DIT_FOLDER,
                  "blocks": BLOCKS_PAPER, "train_steps": 50_000, "train_batch_size": 2, "lr": 1e-5,
                  "sampling_steps": 250, "mask_steps": LAST_STEPS, "w_d_sweep": W_D_SWEEP},
        # the tiny backbone's text encoder with the pre-trained tiny-demo-dit TDIA and its PCA
        # autoencoder (a random TDIA on the pixel-unshuffle latent made block noise after a 400-step
        # fit: docs/defectdiffu.md, "History"); one-channel cell masks (pixel-unshuffle mask latents
        # decoded as dot grids); PCA latents are whitened, not in [-1, 1], so no DDIM clipping; w_p 3
        # (the paper prints no value): at 1 the products' colours and textures were fainter (seen)
        "smoke": {"backbone": "tiny", "resolution": None, "transformer": TINY_DEMO_DIT, "dit_weights": None,
                  "blocks": TINY_DEMO_TDIA["blocks"], "train_steps": 300, "train_batch_size": 4, "lr": 3e-4,
                  "mask_hidden": TINY_DEMO_MASK_HIDDEN, "mask_latent": "cell", "sampling_steps": 25, "mask_steps": 10,
                  "w_p": 3.0, "pairs_per_type": 4, "w_d_sweep": (1.0, 1.5, 2.0), "unify_defects": False,
                  "clip_sample": False},
    }

    def __init__(self, options: DefectDiffuOptions, image_size: int):
        super().__init__(options, image_size)
        backbone_channels = self.backbone.latent_channels  # read from the U-Net's config
        self.unet = self.backbone.unet = None  # DefectDiffu denoises with its own transformer
        pretrained_mask_module = None
        if options.transformer == TINY_DEMO_DIT:
            vae, self.transformer, pretrained_mask_module = load_tiny_demo_dit()
            self.vae = self.backbone.vae = vae.requires_grad_(False).eval()  # the latent it was pre-trained on
            self._check_text_width()
        else:
            self.transformer = self._build_transformer(backbone_channels)
        self.latent_channels = latent_channels = int(self.transformer.config.in_channels)
        self.denoiser = as_denoiser(self.transformer)
        self.defect_layers = self.transformer.attention_layers("defect")
        patch = self.transformer.config.patch_size
        self.mask_module = MaskGenerationModule(len(self.defect_layers) * self.backbone.max_length,
                                                latent_channels if options.mask_latent == "vae" else 1, patch,
                                                options.mask_hidden)
        if pretrained_mask_module is not None:
            self._load_pretrained_mask_module(pretrained_mask_module)
        self.trained_types: set[tuple[str, str]] = set()  # (product, unified defect) with few-shot defects

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def check_resolution(cls, options: DefectDiffuOptions, resolution: int, pixels_per_cell: int,
                         multiple: int) -> None:
        """The base's check with the DiT's patch in place of the U-Net's downsampling."""
        transformers = {"dit-xl-2": DIT_XL_2_512, "tiny": TINY_DIT, TINY_DEMO_DIT: TINY_DEMO_TDIA}
        patch = transformers[options.transformer]["patch_size"]
        multiple = pixels_per_cell * patch
        if resolution % multiple:
            raise BenchError(f"defectdiffu: resolution {resolution} px is not a multiple of {multiple} (the VAE's "
                             f"{pixels_per_cell} px per latent cell x the DiT patch {patch}); "
                             + resolution_fix(options, resolution, multiple))

    def check_options(self, T: int) -> None:
        o = self.options
        if o.mask_steps > o.sampling_steps:
            raise BenchError(f"defectdiffu: mask_steps {o.mask_steps} exceeds sampling_steps {o.sampling_steps}")
        if sum(o.blocks) < 1 or o.blocks[1] < 1:
            raise BenchError(f"defectdiffu: blocks {tuple(o.blocks)} needs at least one defect block (the mask "
                             "module reads them)")

    def _build_transformer(self, latent_channels: int) -> TdiaTransformer:
        o = self.options
        text_width = int(self.text_encoder.config.hidden_size)
        latent = self.latent_size
        if o.transformer == "tiny":
            config = dict(TINY_DIT, in_channels=latent_channels, out_channels=None, sample_size=latent,
                          cross_attention_dim=text_width, blocks=tuple(o.blocks))
        else:
            config = dict(DIT_XL_2_512, in_channels=latent_channels, out_channels=2 * latent_channels,
                          sample_size=latent, cross_attention_dim=text_width, blocks=tuple(o.blocks))
        model = TdiaTransformer(**config)
        if o.dit_weights is not None:
            new = model.load_dit(self._load_dit(Path(o.dit_weights)))
            log.info("defectdiffu: DiT weights from %s; %d new parameters (the cross-attention)",
                     o.dit_weights, len(new))
        return model

    def _check_text_width(self) -> None:
        width, expected = int(self.text_encoder.config.hidden_size), int(self.transformer.config.cross_attention_dim)
        if width != expected or tuple(self.transformer.config.blocks) != tuple(self.options.blocks):
            raise BenchError(f"defectdiffu: transformer {TINY_DEMO_DIT} was pre-trained with the `tiny` backbone's "
                             f"text encoder ({expected} wide) and blocks {tuple(self.transformer.config.blocks)}; "
                             f"got backbone '{self.options.backbone}' ({width} wide) and blocks "
                             f"{tuple(self.options.blocks)}: set generator options backbone=tiny and those blocks")

    def _load_pretrained_mask_module(self, state: dict) -> None:
        try:
            self.mask_module.load_state_dict(state)
        except RuntimeError:
            raise BenchError(f"defectdiffu: transformer {TINY_DEMO_DIT} comes with a mask module of width "
                             f"{TINY_DEMO_MASK_HIDDEN} and cell masks; set generator options "
                             f"mask_hidden={TINY_DEMO_MASK_HIDDEN} mask_latent=cell") from None

    @staticmethod
    def _load_dit(folder: Path) -> nn.Module:
        """diffusers' DiTTransformer2DModel from a local folder, or one line naming what to put where."""
        from diffusers import DiTTransformer2DModel

        if not (folder / "config.json").exists():
            raise BenchError(f"defectdiffu: no DiT weights at {folder} (config.json missing): put a diffusers "
                             "DiTTransformer2DModel there (the `transformer` folder of facebook/DiT-XL-2-512) or set "
                             "generator option dit_weights=<folder>")
        try:
            return DiTTransformer2DModel.from_pretrained(folder)
        except (OSError, ValueError) as err:
            raise BenchError(f"defectdiffu: {folder} holds no loadable DiTTransformer2DModel ({err}); "
                             "set generator option dit_weights=<folder>") from None

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae, self.text_encoder]

    def trained_parts(self) -> dict[str, nn.Module]:
        return {"transformer": self.transformer, "mask_module": self.mask_module}

    def sampling_scheduler(self):
        """Deterministic DDIM (eta = 0) on the backbone's schedule: the paper names no sampler."""
        scheduler = make_scheduler("ddim", self.backbone.scheduler_config, clip_sample=self.options.clip_sample)
        scheduler.set_timesteps(self.options.sampling_steps)
        return scheduler

    # -- prompts ----------------------------------------------------------------------------------
    def defect_name(self, product: str, defect: str) -> str:
        if not self.options.unify_defects:
            return defect
        try:
            return unified_defect(product, defect)
        except KeyError as err:
            raise BenchError(f"defectdiffu: {err.args[0]}; for data that is not MVTec AD set generator option "
                             "unify_defects=false") from None

    def encode_parts(self, prompts: list[PartPrompts]) -> torch.Tensor:
        """(B, 3, L, D): the frozen text encoder's states of each sample's background, defect and
        fusion prompts (Sec. 3.2)."""
        texts = [text for p in prompts for text in p.as_tuple()]
        ids = self.backbone.tokenizer(texts, padding="max_length", max_length=self.backbone.max_length,
                                      truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            states = self.text_encoder(ids.to(self.device))[0]
        return states.reshape(len(prompts), 3, *states.shape[1:])

    def setup_split(self, split) -> None:
        super().setup_split(split)
        self.trained_types = {(c, self.defect_name(c, d)) for c, d in split_concepts(split)}
        unknown = sorted(set(self.options.zero_shot_targets) - set(split.categories))
        if unknown:
            raise BenchError(f"defectdiffu: zero_shot_targets {unknown} are not products of the split")

    # -- fit: Algorithm 1, Eq. 6-11 ---------------------------------------------------------------
    def training_step(self, batch, batch_idx: int):
        rng = self._train_rng
        data = self.encode_train_batch(*batch)
        with torch.no_grad():
            mask_target = self.mask_latent_target(data.masks, data.x0.shape[-2:])  # Mask_f of Eq. 6
        products, defects = zip(*(c.split("/", 1) for c in data.concepts))
        defects = [self.defect_name(p, d) for p, d in zip(products, defects)]
        draws = torch.rand(len(data.x0), 3, generator=rng, dtype=torch.float64)
        prompts = double_free_dropout(products, defects, draws, self.options.p1, self.options.p2)
        losses = self.defectdiffu_loss(data.x0, data.masks, mask_target, *prompts, rng)
        self.log_losses(losses, len(data.x0))
        return losses["loss"]

    def defectdiffu_loss(self, x0, masks, mask_target, products, defects, rng) -> dict[str, torch.Tensor]:
        """Eq. 11 for latents x0 with pixel masks (B,1,H,W), their encoded masks and the prompts after
        Algorithm 1 (a product may be None, a defect "good")."""
        context = self.encode_parts([part_prompts(p, d) for p, d in zip(products, defects)])
        t = self.draw_timesteps(len(x0), rng)
        eps = self.draw_noise(x0, rng)
        x_t = add_noise(x0, eps, self.abar[t].view(-1, 1, 1, 1))
        positions = defect_token_positions(self.backbone.tokenizer, defects, context.shape[2])
        with CrossAttentionHook(record=True, detach=False, layers=self.defect_layers).attach(self.transformer) as hook:
            eps_pred = self.denoiser(x_t, t, context)
        aal = adaptive_attention_loss(hook.records, self.defect_layers, positions, eps_pred, eps, masks)
        loss_m = mask_prediction_loss(self.mask_module(defect_block_maps(hook.records, self.defect_layers)),
                                      mask_target)
        loss = total_loss(eps_pred, eps, aal["loss_d"], loss_m, self.options.lambda_mask)
        return {"loss": loss, "loss_d": aal["loss_d"].detach(), "loss_m": loss_m.detach(),
                "r": aal["r"].mean(), "rat": aal["rat"].mean()}

    def mask_latent_target(self, masks: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
        """Mask_f of Eq. 6: the VAE-encoded mask, or (`mask_latent="cell"`) each cell's mask area."""
        if self.options.mask_latent == "cell":
            return cell_mask_target(masks, latent_size)
        return encode_masks(self.vae, masks)

    def mask_image(self, mask_latent: torch.Tensor) -> torch.Tensor:
        """M_pre^t (B, H, W) in [0, 255] of a predicted mask latent: VAE-decoded, or upsampled cells."""
        if self.options.mask_latent == "cell":
            return mask_gray(upsample_cell_mask(mask_latent, (self.resolution, self.resolution)))
        return mask_gray(decode_latents(self.vae, mask_latent))

    def training_loss(self, x0, m0, context, rng):  # the base's hook; DefectDiffu's step is its own
        raise NotImplementedError("defectdiffu trains through training_step / defectdiffu_loss")

    # -- planning: Eq. 12 requests for products with normal images only ---------------------------
    def plan(self, split, seed: int) -> list[GenerationRequest]:
        requests = super().plan(split, seed)
        for target in self.options.zero_shot_targets:
            cat = split.categories[target]
            own = {d for p, d in self.trained_types if p == target}
            for defect in sorted({d for p, d in self.trained_types if p != target} - own):
                # the base plans a type only when it has shots; DefectDiffu reads no mask from them
                # (uses_given_masks is False), so the target stands in with a placeholder shot list
                requests += self._plan_type(replace(cat, train_defects={defect: [defect]}), defect, seed)
        return requests

    # -- generate: Eq. 4 (or Eq. 12) from pure noise, the mask of Sec. 3.4 ------------------------
    def w_d_of(self, requests: list[GenerationRequest]) -> torch.Tensor:
        """(B,1,1,1) defect strengths: `w_d`, or the sweep cycled by the request's index in its type
        (the id's last field), so a pair's w_d does not depend on its batch."""
        o = self.options
        if not o.w_d_sweep:
            return torch.full((len(requests), 1, 1, 1), o.w_d, device=self.device)
        index = [int(r.id.rsplit("/", 1)[-1]) for r in requests]
        sweep = w_d_for_requests(max(index) + 1, o.w_d_sweep)
        return torch.tensor([sweep[i] for i in index], device=self.device).view(-1, 1, 1, 1)

    def request_defect(self, r: GenerationRequest) -> str:
        """The defect prompt word of a request: its unified name when (product, defect) was trained,
        or, for a zero-shot target, a defect learned on other products (Eq. 12; already unified)."""
        learned_elsewhere = any(d == r.defect for p, d in self.trained_types if p != r.category)
        if r.category in self.options.zero_shot_targets and learned_elsewhere \
                and (r.category, r.defect) not in self.trained_types:
            return r.defect
        d = self.defect_name(r.category, r.defect)
        if (r.category, d) not in self.trained_types:
            raise BenchError(f"defectdiffu: {r.category}/{r.defect} was not trained and is no zero-shot transfer "
                             "(list the product in zero_shot_targets and request a defect learned on another product)")
        return d

    @torch.no_grad()
    def predict_step(self, batch: list[GenerationRequest], batch_idx: int = 0) -> list[SyntheticPair]:
        products = [r.category for r in batch]
        defects = [self.request_defect(r) for r in batch]
        # Eq. 4; for a zero-shot target product this is Eq. 12 (c_T with a defect learned elsewhere)
        contexts = guidance_contexts(self.encode_parts, products, defects)
        noise = PerSampleNoise([r.seed for r in batch], self.device)
        latents = noise.randn(self.latent_channels, self.latent_size, self.latent_size)
        scheduler = self.sampling_scheduler()
        with CrossAttentionHook(record=True, layers=self.defect_layers).attach(self.transformer) as hook:
            def mask_at_step() -> torch.Tensor:
                maps = defect_pass_maps(hook, self.defect_layers, len(batch))
                return self.mask_image(self.mask_module(maps))

            latents, mask = double_free_sample(self.denoiser, scheduler, latents, contexts, self.options.w_p,
                                               self.w_d_of(batch), mask_at_step, last=self.options.mask_steps)
        images = tensor_to_images(decode_latents(self.vae, latents))
        masks = mask[:, 0].bool().cpu().numpy()
        return [SyntheticPair(r, *self._at_image_size(img, m), MASK_PREDICTED)
                for r, img, m in zip(batch, images, masks)]

