"""The `tiny-demo` backbone: a small latent space and a tiny U-Net pre-trained once to denoise demo images.

Why: a method that regenerates the whole image from (almost) pure noise, as SeaS does from
t = 1500, needs a denoiser that already makes images; SeaS starts from Stable Diffusion. The
`tiny` backbone cannot: its lossless pixel-unshuffle latent has 192 channels and its U-Net's first
convolution maps them to 32, so the U-Net cannot pass x_t through, which the eps target needs at
high noise (measured, docs/seas.md: even a (64, 128)-channel U-Net pre-trained for 600 steps
predicts eps with std 0.5 at t = 999 and samples saturated noise from t = 1500).

`tiny-demo` keeps tiny's text encoder, tokenizer and schedule, and changes two things:
- `PatchPCAAutoencoder`: each 8 x 8 pixel block (192 values, the pixel-unshuffle) projected on the
  `LATENT_CHANNELS` leading principal directions of the pre-training images' blocks, whitened
  (unit variance per channel, as SD scales its latents to about unit variance). Closed form
  (an SVD), lossy (what the discarded directions held: fine texture) but with a latent as narrow
  as the U-Net's first level, so no bottleneck. torch has no such module; diffusers' AutoencoderKL
  would need training and reconstructs worse at this size.
- `LinearSkipUNet`, a U-Net of tiny's shape on that latent whose eps prediction adds the linear
  MMSE estimate sqrt(1 - abar_t) x_t (without it, eps at t = 999 stayed off by MSE 0.14 after
  800 steps and every sample was block noise; docs/seas.md), trained for `PRETRAIN["steps"]`
  AdamW steps on the eps-MSE (Ho et al. 2020 Eq. 14) of normal demo images rendered from a seed the demo dataset does
  not use (`PRETRAIN["seed"]`), so no benchmark image is in its training set. Prompts are
  "a <category>" (the product's name, as SD knows the word "wood"), dropped to "" with
  probability 0.1 so classifier-free guidance has an unconditional model. It never sees a defect.

Option, off in the recipe (a smoke-only departure if switched on, measured in docs/seas.md,
"Diagnosis of the missing defects"): `defects_per_type` > 0 adds that many defect images per type
of the same unused seed, captioned with generic words ("a wood with a hole", `defect_prompt`), as
SD has seen holes and scratches in general; `defect_weight` weighs the latent cells a defect
touches by 1 + w in the eps-MSE. Measured: with 16 per type the backbone still draws no defect
for those captions (nor with 3x the steps), and w = 20 or 50 turns its samples into cell noise;
so the smoke backbone stays trained on normal images only (and keeps its cache folder: the recipe
leaves the option's keys out while it is off). `ema_decay` > 0, off in the recipe too, ends the
pre-training on the moving average of the U-Net's weights (measured for issue 11, docs/seas.md).
`PATCH` (8) is the PCA's block side, so the latent is size / PATCH cells a side; `PREDICTION`
("epsilon") the U-Net's target, "v_prediction" giving a plain U-Net (no linear skip) trained on v,
"sample" a `LinearSkipX0UNet` trained on x0 (its skip is the linear MMSE estimate sqrt(abar_t) x_t
of x0). PATCH = 4, v- and x0-prediction were measured for issue 11 (docs/seas.md, "Recipe search");
the recipe names them only when they differ from the defaults.

Built on first use and cached under `$SIAS_BENCH_CACHE/models/tiny-demo-<recipe hash>` (temp dir
+ rename, like `tiny`); the hash covers the recipe, the tiny backbone's and the demo data's
versions, so a changed recipe builds a new folder. The build's cost is measured in docs/seas.md.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import logging

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from generators.diffusion.hub import atomic_folder, quiet_hub_libraries, recipe_folder
from generators.diffusion.schedulers import training_target
from generators.diffusion.tiny import TINY_VERSION, tiny_backbone_folder

log = logging.getLogger(__name__)

TINY_DEMO = "tiny-demo"
LATENT_CHANNELS = 32  # = the U-Net's first width: x_t passes through unchanged in width
UNET_CHANNELS = (32, 64)  # tiny's shape
PATCH = 8  # pixels per latent cell (the PCA's block side); 4 was measured for issue 11 (docs/seas.md)
PREDICTION = "epsilon"  # the U-Net's target; "v_prediction" and "sample" (x0) measured for issue 11 (docs/seas.md)
PRETRAIN = dict(steps=800, batch_size=8, lr=1e-3, images_per_category=48, seed=1000, size=128,
                prompt="a {category}", drop_prompt=0.1,
                # smoke-only departure (module docstring): defect images of the same unused seed, captioned
                # with generic words, as SD has seen holes and scratches in general
                defects_per_type=0, defect_prompt="a {category} with a {defect}", defect_weight=0.0,
                # the U-Net keeps the exponential moving average of its weights over the steps (decay per
                # step; 0 = the last weights, as the recipe has it); measured for issue 11 (docs/seas.md)
                ema_decay=0.0)


class PatchPCAAutoencoder(nn.Module, ConfigMixin):
    """8 x 8 pixel blocks -> their `latent_channels` leading principal components, whitened; decode
    is the transpose. Answers the calls the project makes on an AutoencoderKL (as
    `PixelShuffleAutoencoder` does). `fit` sets the basis from images; `save_pretrained` writes the
    config and the basis."""

    config_name = "config.json"
    weights_name = "pca.pt"

    @register_to_config
    def __init__(self, factor: int = 8, in_channels: int = 3, latent_channels: int = 32, scaling_factor: float = 1.0):
        super().__init__()
        d = in_channels * factor**2
        self.register_buffer("mean", torch.zeros(d))  # mean block
        self.register_buffer("basis", torch.eye(d)[:, :latent_channels])  # (d, k) orthonormal principal directions
        self.register_buffer("scale", torch.ones(latent_channels))  # std of each component (whitening)

    @property
    def downscale_factor(self) -> int:
        return int(self.config.factor)

    @property
    def dtype(self) -> torch.dtype:
        return self.basis.dtype

    @property
    def device(self) -> torch.device:
        return self.basis.device

    @torch.no_grad()
    def fit(self, pixels: torch.Tensor) -> "PatchPCAAutoencoder":
        """Principal directions of the (B, 3, H, W) images' blocks, in [-1, 1] (one SVD)."""
        blocks = F.pixel_unshuffle(pixels.double(), self.config.factor).permute(0, 2, 3, 1).reshape(-1, self.mean.numel())
        mean = blocks.mean(0)
        _, singular, vh = torch.linalg.svd(blocks - mean, full_matrices=False)
        k = self.config.latent_channels
        self.mean.copy_(mean)
        self.basis.copy_(vh[:k].T)
        self.scale.copy_(singular[:k] / (len(blocks) - 1) ** 0.5)
        return self

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        blocks = F.pixel_unshuffle(x, self.config.factor) - self.mean.view(1, -1, 1, 1)
        z = torch.einsum("bdhw,dk->bkhw", blocks, self.basis) / self.scale.view(1, -1, 1, 1)
        # zero variance: `mode()` and `sample()` both return the projection
        dist = DiagonalGaussianDistribution(torch.cat([z, torch.zeros_like(z)], 1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        blocks = torch.einsum("bkhw,dk->bdhw", z * self.scale.view(1, -1, 1, 1), self.basis)
        x = F.pixel_shuffle(blocks + self.mean.view(1, -1, 1, 1), self.config.factor)
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x).latent_dist.mode()).sample

    def save_pretrained(self, folder) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.save_config(folder)
        torch.save({k: v.float() for k, v in self.state_dict().items()}, Path(folder) / self.weights_name)

    @classmethod
    def from_pretrained(cls, folder, **kwargs) -> "PatchPCAAutoencoder":
        model = cls.from_config(cls.load_config(Path(folder)))
        model.load_state_dict(torch.load(Path(folder) / cls.weights_name, weights_only=True))
        return model


class LinearSkipUNet(UNet2DConditionModel):
    """A UNet2DConditionModel whose eps prediction is the linear MMSE estimate plus the network:
    eps = sqrt(1 - abar_t) x_t + F(x_t, t, c). For latents of zero mean and unit variance (the
    whitened PCA latent), x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps gives E[eps | x_t] =
    sqrt(1 - abar) x_t for Gaussian data, so F only has to learn what is not Gaussian; at t near T,
    where the eps target is almost x_t itself, the skip carries it and x_0 estimates cannot explode
    (the preconditioning idea of Karras et al. 2022, EDM, Sec. 5, in eps form). Same config and
    weights layout as the parent; abar is the tiny backbone's LDM schedule."""

    def forward(self, sample, timestep, encoder_hidden_states, *args, return_dict: bool = True, **kwargs):
        out = super().forward(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        return with_linear_skip(out, sample, timestep, return_dict)


class LinearSkipX0UNet(UNet2DConditionModel):
    """The x0-predicting twin of `LinearSkipUNet`: x0 = sqrt(abar_t) x_t + F(x_t, t, c), the linear
    MMSE estimate E[x0 | x_t] = sqrt(abar) x_t of whitened Gaussian data plus the network (EDM's
    c_skip, Karras et al. 2022, Table 1, with sigma_data = 1, written for the VP x_t). At t near 0,
    where x0 is almost x_t, the skip carries it, so the small U-Net need not copy its input."""

    def forward(self, sample, timestep, encoder_hidden_states, *args, return_dict: bool = True, **kwargs):
        out = super().forward(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        return with_linear_skip(out, sample, timestep, return_dict, target="sample")


def with_linear_skip(out, x_t: torch.Tensor, timestep, return_dict: bool, target: str = "epsilon"):
    """A diffusers model output (object or tuple) with the linear MMSE estimate of its `target`
    added to its sample: sqrt(1 - abar_t) x_t for eps, sqrt(abar_t) x_t for x0 ("sample")."""
    abar = ldm_alphas_cumprod().to(x_t.device, x_t.dtype)
    t = torch.as_tensor(timestep, device=x_t.device).long().flatten().expand(len(x_t))
    coefficient = {"epsilon": lambda a: (1 - a).sqrt(), "sample": lambda a: a.sqrt()}[target](abar[t])
    skip = coefficient.view(-1, 1, 1, 1) * x_t
    if return_dict:
        out.sample = out.sample + skip
        return out
    return (out[0] + skip, *out[1:])


@functools.cache
def ldm_alphas_cumprod() -> torch.Tensor:
    """abar_t, t = 0..T-1, of the LDM schedule (the `tiny` backbone's), for the linear skips."""
    from diffusers import DDPMScheduler

    from generators.diffusion.hub import LDM_SCHEDULE

    return DDPMScheduler(**LDM_SCHEDULE).alphas_cumprod.float()


def recipe() -> dict:
    from benchmark.data.demo import DEMO_VERSION

    pretrain = dict(PRETRAIN)
    if not pretrain["defects_per_type"]:  # normal images only: the recipe (and folder) of before the option
        for key in ("defects_per_type", "defect_prompt", "defect_weight"):
            pretrain.pop(key)
    if not pretrain["ema_decay"]:  # the last weights: the recipe (and folder) of before the option
        pretrain.pop("ema_decay")
    # the options below name themselves only when they differ, so the default recipe (and folder) is as before them
    variants = {} if PATCH == 8 else {"patch": PATCH}
    unet = "plain" if PREDICTION == "v_prediction" else "linear-skip"  # on eps or x0 (`PREDICTION`)
    if PREDICTION != "epsilon":
        variants["prediction"] = PREDICTION
    return {"latent_channels": LATENT_CHANNELS, "unet_channels": list(UNET_CHANNELS), "unet": unet, **pretrain,
            **variants, "tiny_version": TINY_VERSION, "demo_version": DEMO_VERSION}


def tiny_demo_backbone_folder() -> Path:
    folder = recipe_folder(TINY_DEMO, recipe())
    if not (folder / "model_index.json").exists():
        build_tiny_demo_backbone(folder)
    return folder


def pretraining_images(images_per_category: int, seed: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """Normal demo images of every category from `seed` (the benchmark's demo data uses 0), in
    [-1, 1], with each image's category."""
    from benchmark.data.demo import CATEGORIES, render_demo_image

    images, categories = [], []
    for category in sorted(CATEGORIES):
        for index in range(images_per_category):
            images.append(render_demo_image(category, "good", seed, index, size, "train").image)
            categories.append(category)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return pixels, categories


def pretraining_defect_images(defects_per_type: int, seed: int, size: int
                               ) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """Defect demo images (test split) of every category and defect type from `seed`, in [-1, 1],
    their (N, 1, H, W) masks in {0, 1}, and each image's category and defect type."""
    from benchmark.data.demo import CATEGORIES, render_demo_image

    images, masks, categories, defects = [], [], [], []
    for category in sorted(CATEGORIES):
        for defect in CATEGORIES[category]:
            for index in range(defects_per_type):
                rendered = render_demo_image(category, defect, seed, index, size, "test")
                images.append(rendered.image)
                masks.append(rendered.mask > 0)
                categories.append(category)
                defects.append(defect)
    if not images:
        return torch.empty(0, 3, size, size), torch.empty(0, 1, size, size), [], []
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return pixels, torch.from_numpy(np.stack(masks)).float()[:, None], categories, defects


def pretraining_set(images_per_category: int, seed: int, size: int, prompt: str, defects_per_type: int = 0,
                    defect_prompt: str = "", **_) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """The pre-training images (normal, then defect ones), their captions and their (N, 1, H, W)
    defect masks (all zero for the normal images)."""
    normal, categories = pretraining_images(images_per_category, seed, size)
    defect, masks, defect_categories, defects = pretraining_defect_images(defects_per_type, seed, size)
    captions = [prompt.format(category=c) for c in categories]
    captions += [defect_prompt.format(category=c, defect=d) for c, d in zip(defect_categories, defects)]
    masks = torch.cat([torch.zeros(len(normal), 1, size, size), masks])
    if not defects:  # the normal tensor as it is (its memory layout too), so the default build is unchanged
        return normal, captions, masks
    return torch.cat([normal, defect]), captions, masks


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum w (pred - target)^2 / sum w, with the (B, 1, h, w) cell weights shared by all channels;
    the plain mean squared error when every weight is 1."""
    weight = weight.expand_as(pred)
    return (weight * (pred - target) ** 2).sum() / weight.sum()


def pretrain_unet(unet, vae, tokenizer, text_encoder, scheduler, steps: int, batch_size: int, lr: float,
                  images_per_category: int, seed: int, size: int, prompt: str, drop_prompt: float,
                  defects_per_type: int = 0, defect_prompt: str = "", defect_weight: float = 0.0,
                  ema_decay: float = 0.0, **_) -> list[float]:
    """Train `unet` in place on the MSE of the scheduler's target (eps, v or x0) of demo images
    (normal ones, and `defects_per_type` defect images per type); latent cells a defect touches
    weigh 1 + `defect_weight` in the mean (a defect covers a few % of an image, so the plain mean
    barely sees it). With `ema_decay` > 0 the U-Net ends with the exponential moving average of its
    weights after each step (torch's `AveragedModel`, which starts from the first step's weights).
    Returns the per-step losses."""
    pixels, captions, masks = pretraining_set(images_per_category, seed, size, prompt, defects_per_type,
                                              defect_prompt)
    names = sorted(set(captions))
    pixels = torch.cat([pixels, pixels.flip(-1)])  # horizontal flips, in pixel space
    masks = torch.cat([masks, masks.flip(-1)])
    label = torch.tensor([names.index(c) for c in captions] * 2)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
        factor = pixels.shape[-1] // latents.shape[-1]
        weights = 1 + defect_weight * F.max_pool2d(masks, factor)  # a cell counts as defect if any pixel is
        ids = tokenizer(names + [""], padding="max_length", max_length=text_encoder.config.max_position_embeddings,
                        truncation=True, return_tensors="pt").input_ids
        contexts = text_encoder(ids)[0]  # one per caption, the last is the empty prompt
    rng = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr)
    T = scheduler.config.num_train_timesteps
    ema = AveragedModel(unet, multi_avg_fn=get_ema_multi_avg_fn(ema_decay)) if ema_decay else None
    unet.train()
    losses = []
    for _ in range(steps):
        pick = torch.randint(len(latents), (batch_size,), generator=rng)
        x0 = latents[pick]
        t = torch.randint(T, (batch_size,), generator=rng)
        eps = torch.randn(x0.shape, generator=rng)
        context = torch.where((torch.rand(batch_size, generator=rng) < drop_prompt).view(-1, 1, 1),
                              contexts[-1], contexts[label[pick]])
        pred = unet(scheduler.add_noise(x0, eps, t), t, encoder_hidden_states=context).sample
        target = training_target(scheduler, x0, eps, t)
        # unweighted: torch's mse_loss as before the option, so the default recipe's build is unchanged
        loss = weighted_mse(pred, target, weights[pick]) if defect_weight else F.mse_loss(pred, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(unet)
        losses.append(float(loss.detach()))
        if len(losses) % 100 == 0:
            log.info("tiny-demo pre-training: step %d/%d, MSE of the last 100 steps %.4f", len(losses), steps,
                     float(np.mean(losses[-100:])))
    if ema is not None:
        with torch.no_grad():
            for weight, average in zip(unet.parameters(), ema.module.parameters()):
                weight.copy_(average)
    unet.eval()
    return losses


def tiny_text_encoder():
    """`tiny`'s tokenizer and frozen text encoder, which the built backbones keep; loaded here
    directly, because the backbone loader imports this module (generators.diffusion.backbone's
    BUILT_BACKBONES)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    with quiet_hub_libraries():
        tokenizer = CLIPTokenizer.from_pretrained(tiny_backbone_folder() / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(tiny_backbone_folder() / "text_encoder")
    return tokenizer, text_encoder.eval().requires_grad_(False)


def build_tiny_demo_backbone(folder: Path) -> Path:
    """`tiny`'s text encoder, tokenizer and schedule; a PCA autoencoder fitted to, and a U-Net
    pre-trained on, the pre-training images; written atomically."""
    from diffusers import DDPMScheduler

    from generators.diffusion.tiny import TINY_SEED, UNET

    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        tokenizer, text_encoder = tiny_text_encoder()
        shutil.copytree(tiny_backbone_folder(), tmp, dirs_exist_ok=True)
        shutil.rmtree(tmp / "unet")
        shutil.rmtree(tmp / "vae")
        scheduler = DDPMScheduler.from_pretrained(tmp / "scheduler")
        if PREDICTION != "epsilon":
            scheduler = DDPMScheduler.from_config(scheduler.config, prediction_type=PREDICTION)
            scheduler.save_pretrained(tmp / "scheduler")
        pixels, _, _ = pretraining_set(**PRETRAIN)
        vae = PatchPCAAutoencoder(factor=PATCH, latent_channels=LATENT_CHANNELS).fit(pixels)
        vae.save_pretrained(tmp / "vae")
        with torch.random.fork_rng(devices=[]), quiet_hub_libraries():
            torch.manual_seed(TINY_SEED)
            # v-prediction: a plain U-Net, whose zero output is already the linear estimate (for whitened
            # data E[v | x_t] = sqrt(abar (1 - abar)) x_t - sqrt((1 - abar) abar) x_t = 0)
            unet_class = {"epsilon": LinearSkipUNet, "v_prediction": UNet2DConditionModel,
                          "sample": LinearSkipX0UNet}[PREDICTION]
            unet = unet_class(**{**UNET, "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS,
                                 "block_out_channels": UNET_CHANNELS, "sample_size": PRETRAIN["size"] // PATCH})
            losses = pretrain_unet(unet, vae, tokenizer, text_encoder, scheduler, **PRETRAIN)
            unet.save_pretrained(tmp / "unet")
        index = json.loads((tmp / "model_index.json").read_text())
        index["vae"] = ["generators.diffusion.tiny_demo", "PatchPCAAutoencoder"]
        # what was trained is what loads (the loader takes diffusers' own classes by library name)
        library = "diffusers" if unet_class is UNet2DConditionModel else unet_class.__module__
        index["unet"] = [library, unet_class.__name__]
        index["_sias_bench_tiny_demo"] = {**recipe(), "final_loss_last_100": float(np.mean(losses[-100:]))}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder
