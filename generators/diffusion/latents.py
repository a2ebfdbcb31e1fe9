"""Between pixels and latents: VAE encode/decode of images and masks, masks at latent resolution.

Images enter as uint8 HxWx3 (what `benchmark.data.images.load_image` returns), become (B,3,H,W)
floats in [-1, 1], and latents are scaled by the VAE's `scaling_factor` (0.18215 for the LDM and
SD v1), as the diffusion models were trained.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def images_to_tensor(images: list[np.ndarray], device=None) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return (x / 127.5 - 1.0).to(device)


def tensor_to_images(x: torch.Tensor) -> list[np.ndarray]:
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return list(x.permute(0, 2, 3, 1).cpu().numpy())


def masks_to_tensor(masks: list[np.ndarray], device=None) -> torch.Tensor:
    return torch.from_numpy(np.stack(masks).astype(np.float32))[:, None].to(device)


def encode_images(vae, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False) -> torch.Tensor:
    """Latents of images in [-1, 1]: the posterior mode (deterministic) unless `sample`."""
    dist = vae.encode(images.to(vae.dtype)).latent_dist
    z = dist.sample(generator) if sample else dist.mode()
    return z * vae.config.scaling_factor


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample


def encode_masks(vae, masks: torch.Tensor) -> torch.Tensor:
    """Latents of binary (B,1,H,W) masks, encoded as grey images (0 -> -1, 1 -> +1): how
    DefectDiffu supervises its mask latent with the VAE."""
    return encode_images(vae, (masks.float() * 2 - 1).expand(-1, 3, -1, -1))


def decode_masks(vae, latents: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Binary (B,1,H,W) masks from mask latents: channel mean of the decoded image above `threshold`."""
    return (decode_latents(vae, latents).mean(1, keepdim=True) > threshold).float()


def mask_to_latent(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary (B,1,H,W) pixel mask -> binary (B,1,h,w) latent mask: a latent cell is in the mask when
    any of its pixels is, so a defect thinner than the VAE's 8 px cell is never dropped."""
    return (F.adaptive_max_pool2d(mask.float(), size) > 0.5).to(mask.dtype if mask.is_floating_point() else torch.float32)
