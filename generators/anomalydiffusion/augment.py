"""The joint image/mask augmentation of Supp. B: random crop, translation and rotation applied to
an anomaly image and its mask together, with the anomaly kept inside the image ("by recording the
maximum and minimum coordinates of the anomaly region in the image, we ensure that the anomaly
remains within the image").

One affine map in pixel coordinates (x right, y down, origin at the top-left pixel centre):

    p' = s R(theta) (p - c) + c + t,     R(theta) = [[cos, -sin], [sin, cos]],  c = image centre

s >= 1 zooms in (a random crop resized back to the full size), theta rotates, t translates. The
corners of the anomaly's bounding box are mapped with (s, theta, t = 0); t is then drawn in the
range that keeps their image inside [0, W-1] x [0, H-1], so every anomaly pixel centre lands
inside (the rotated box contains the rotated anomaly). When no t fits (a large anomaly zoomed
too far), the draw is repeated and finally falls back to a pure translation, which always fits.
Written with `grid_sample` rather than torchvision's `affine` because the bounding-box check
needs the exact forward map the warp uses. Pixels brought in from outside the image are 0 (black
image, background mask): Eq. 5 ignores them, as they lie outside the mask.
Ranges (rotation, zoom) are not in the paper; the defaults are ours, see docs/anomalydiffusion.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def forward_map(points: torch.Tensor, size: tuple[int, int], angle: float, scale: float,
                translate: tuple[float, float]) -> torch.Tensor:
    """p' = s R(theta)(p - c) + c + t for (N, 2) points (x, y); angle in degrees."""
    h, w = size
    c = points.new_tensor([(w - 1) / 2, (h - 1) / 2])
    a = math.radians(angle)
    rot = points.new_tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return scale * (points - c) @ rot.T + c + points.new_tensor(translate)


def warp(x: torch.Tensor, angle: float, scale: float, translate: tuple[float, float], mode: str) -> torch.Tensor:
    """Resample (C,H,W) so that output(p') = input(p) for the forward map above (zeros outside)."""
    _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    out = torch.stack([xs, ys], -1).reshape(-1, 2)
    c = torch.tensor([(w - 1) / 2, (h - 1) / 2])
    a = math.radians(angle)
    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    src = (out - c - torch.tensor(translate)) @ rot / scale + c  # inverse map: R^-1 = R^T
    norm = src / torch.tensor([w - 1, h - 1]) * 2 - 1  # align_corners=True: -1 / +1 are pixel centres
    grid = norm.reshape(1, h, w, 2).to(x.device, torch.float32)
    return F.grid_sample(x[None].float(), grid, mode=mode, padding_mode="zeros", align_corners=True)[0].to(x.dtype)


def draw_affine(mask: torch.Tensor, generator: torch.Generator, max_angle: float = 30.0, max_zoom: float = 1.25,
                tries: int = 10) -> tuple[float, float, tuple[float, float]]:
    """(angle, scale, translate) keeping the anomaly of `mask` (1,H,W) inside the image."""
    h, w = mask.shape[-2:]
    ys, xs = torch.nonzero(mask[0] > 0.5, as_tuple=True)
    if len(xs) == 0:  # nothing to keep inside: any translation goes
        ys, xs = torch.tensor([(h - 1) / 2]), torch.tensor([(w - 1) / 2])
    x0, x1, y0, y1 = xs.min().item(), xs.max().item(), ys.min().item(), ys.max().item()
    corners = torch.tensor([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=torch.float32)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=generator).item()

    for attempt in range(tries + 1):
        angle, scale = (uniform(-max_angle, max_angle), uniform(1.0, max_zoom)) if attempt < tries else (0.0, 1.0)
        mapped = forward_map(corners, (h, w), angle, scale, (0.0, 0.0))
        lo, hi = mapped.min(0).values, mapped.max(0).values
        t_lo, t_hi = -lo, torch.tensor([w - 1.0, h - 1.0]) - hi  # t range keeping the box in the image
        if bool((t_lo <= t_hi).all()):
            return angle, scale, (uniform(t_lo[0].item(), t_hi[0].item()), uniform(t_lo[1].item(), t_hi[1].item()))
    raise AssertionError("unreachable: the identity map always fits")


def joint_augment(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, max_angle: float = 30.0,
                  max_zoom: float = 1.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Supp. B: the same random crop / translation / rotation of image (C,H,W) and mask (1,H,W);
    bilinear for the image, nearest for the mask (it stays binary)."""
    angle, scale, t = draw_affine(mask, generator, max_angle, max_zoom)
    return warp(image, angle, scale, t, "bilinear"), warp(mask, angle, scale, t, "nearest")
