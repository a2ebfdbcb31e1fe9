"""The built-in demo dataset: small, procedural, deterministic, in MVTec AD layout.

What it is for: running the whole pipeline (few-shot split -> generator -> segmenter -> metrics)
with no download, in tests, in the `smoke` profile and in CI, and giving the synthesis methods
something with real structure to learn from: textured backgrounds (a twill-woven carpet, wood
grain, a metal wire grid) and an object on a background (a speckled pill placed with position
and rotation jitter, so a segmenter has to tell the object's edge from a defect). Each category
has two or three defect types among

- ``scratch``: thin bright or dark curved lines,
- ``hole``: a dark irregular ellipse with lit and shadowed inner walls and a raised rim,
- ``stain``: a soft coloured blob with texture showing through and a darker drying edge,
- ``crack``: a dark tapering polyline with branches.

Defects are composited into the texture with an alpha map; the ground-truth mask is exactly
``alpha >= 0.5``, so it covers the visible defect and never a pixel the defect did not touch.

What it is not: a substitute for MVTec AD, VisA or any real dataset. Numbers measured on it say
that the code runs and can be compared run to run (a CI baseline); they say nothing about how a
method does on real defects, and must never be reported as such.

Determinism: every image draws from its own `numpy.random.Generator`, seeded from
``(seed, category, split/defect type, index)``; nothing touches a global RNG and nothing is
threaded, so re-running with the same arguments writes byte-identical PNGs on the same platform,
and changing a count (``n_train`` ...) leaves the images that exist at both counts unchanged.
``DEMO_VERSION`` changes whenever the rendering changes, which invalidates cached copies.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from benchmark.errors import BenchError

DEMO_VERSION = 1
DEFAULT_SIZE = 128
DEFAULT_N_TRAIN = 10
DEFAULT_N_TEST_GOOD = 6
DEFAULT_N_DEFECT_PER_TYPE = 6

# category -> its defect types (MVTec's own names where the defect matches one).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "carpet_like": ("hole", "scratch", "stain"),
    "wood": ("hole", "scratch", "stain"),
    "grid": ("crack", "hole", "stain"),
    "pill": ("crack", "scratch", "stain"),
}
OBJECT_CATEGORIES = frozenset({"pill"})
MANIFEST = "demo.json"

_MIN_MASK_PIXELS_AT_128 = 12  # a defect smaller than this is redrawn (scaled with image area)
_LIGHT = np.array([-0.45, -0.55, 0.70])  # light from the top left, as on a ring-lit bench
_LIGHT = _LIGHT / np.linalg.norm(_LIGHT)


@dataclass(frozen=True)
class DemoImage:
    """One rendered image. `clean` is the same image without its defect (equal to `image` for
    normal images); `region` is where a defect may go (the object, or everywhere)."""

    image: np.ndarray  # HxWx3 uint8
    mask: np.ndarray  # HxW uint8, 0/255; all zero for normal images
    clean: np.ndarray  # HxWx3 uint8
    region: np.ndarray  # HxW bool


# --------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3 (C2-continuous lattice interpolation)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _lattice_axis(coords: np.ndarray, cells: int):
    """Neighbouring lattice indices and fade weights along one axis (coords in cell units)."""
    c0 = np.floor(coords)
    return c0.astype(np.int64) % cells, (c0.astype(np.int64) + 1) % cells, _fade(coords - c0)


def _fbm(
    rng: np.random.Generator,
    size: int,
    *,
    scale: float,
    octaves: int = 4,
    gain: float = 0.5,
    stretch_x: float = 1.0,
    stretch_y: float = 1.0,
) -> np.ndarray:
    """Fractional Brownian motion of value noise on the size x size pixel grid, roughly
    zero-mean with unit standard deviation. `scale` is the feature size of the first octave in
    pixels; `stretch_x`/`stretch_y` > 1 elongate features along that axis (fibres, grain).

    The lattice interpolation is separable (columns, then rows: two gathers, no matrix product),
    which keeps it fast and free of any BLAS thread-count dependence."""
    total = np.zeros((size, size))
    amp, norm, freq = 1.0, 0.0, 1.0 / scale
    centres = np.arange(size, dtype=np.float64) + 0.5
    cells = 64  # lattice period in cells; coordinates wrap, so no visible tiling at 128-512 px
    for _ in range(octaves):
        grid = rng.standard_normal((cells, cells))
        offset = rng.random(2) * cells
        i0, i1, fx = _lattice_axis(centres * freq / stretch_x + offset[0], cells)
        j0, j1, fy = _lattice_axis(centres * freq / stretch_y + offset[1], cells)
        cols = grid[:, i0] * (1.0 - fx) + grid[:, i1] * fx  # (cells, size)
        total += amp * (cols[j0] * (1.0 - fy)[:, None] + cols[j1] * fy[:, None])
        norm += amp * amp
        amp *= gain
        freq *= 2.0
    # each lattice value has unit variance; interpolation shrinks it to about 0.45
    return total / np.sqrt(norm) / 0.45


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each size x size."""
    c = np.arange(size, dtype=np.float64) + 0.5
    return np.meshgrid(c, c)


def _rotate(x: np.ndarray, y: np.ndarray, angle: float, cx: float, cy: float):
    ca, sa = np.cos(angle), np.sin(angle)
    dx, dy = x - cx, y - cy
    return ca * dx + sa * dy, -sa * dx + ca * dy


def _smoothstep(e0: float, e1: float, t: np.ndarray) -> np.ndarray:
    s = np.clip((t - e0) / (e1 - e0), 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def _lerp(a, b, t):
    return a + (b - a) * t


def _colorize(value: np.ndarray, dark, light) -> np.ndarray:
    """Map a scalar field in [0, 1] onto the segment between two RGB colours."""
    dark = np.asarray(dark, dtype=np.float64)
    light = np.asarray(light, dtype=np.float64)
    return dark + (light - dark) * value[..., None]


def _luma(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114])


# --------------------------------------------------------------------------------------------
# Normal images
# --------------------------------------------------------------------------------------------


def _carpet(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A 2/1 twill weave (diagonal ribs, as on MVTec's carpet) of fuzzy, unevenly dyed yarns."""
    x, y = _grid(size)
    s = size / 128.0
    period = rng.uniform(5.5, 7.0) * s
    # the cloth is never laid perfectly straight: a gentle low-frequency warp of the coordinates
    wx = x + 1.2 * s * _fbm(rng, size, scale=40 * s, octaves=2)
    wy = y + 1.2 * s * _fbm(rng, size, scale=40 * s, octaves=2)
    ox, oy = rng.random(2) * period
    u, v = (wx + ox) / period, (wy + oy) / period
    col, row = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = u - np.floor(u), v - np.floor(v)
    warp_on_top = ((col - row) % 3) != 0
    across_warp = np.sin(np.pi * fu) ** 0.6  # round yarn cross-section
    across_weft = np.sin(np.pi * fv) ** 0.6
    warp = across_warp * (0.75 + 0.25 * np.sin(np.pi * fv))
    weft = across_weft * (0.75 + 0.25 * np.sin(np.pi * fu))
    height = np.where(warp_on_top, warp, weft)
    # each yarn has its own dye lot
    n_yarns = int(size / period) + 4
    warp_dye = rng.normal(0.0, 0.06, n_yarns)[col % n_yarns]
    weft_dye = rng.normal(0.0, 0.06, n_yarns)[row % n_yarns]
    dye = np.where(warp_on_top, warp_dye, weft_dye)
    fuzz = _fbm(rng, size, scale=1.5 * s, octaves=2)  # loose fibres
    mottle = _fbm(rng, size, scale=30 * s, octaves=3)
    value = 0.30 + 0.55 * height + dye + 0.07 * fuzz + 0.04 * mottle
    base = np.array(
        [rng.uniform(150, 175), rng.uniform(135, 150), rng.uniform(110, 125)]
    )
    img = base * (0.35 + 0.85 * np.clip(value, 0.0, 1.3))[..., None]
    return img, np.ones((size, size), dtype=bool)


def _wood(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain-sawn wood: growth rings (early/late wood) bent by fBm, fibre streaks, pores."""
    x, y = _grid(size)
    s = size / 128.0
    angle = rng.uniform(-0.04, 0.04)  # grain runs top to bottom, nearly vertical
    gx, _ = _rotate(x, y, angle, size / 2, size / 2)
    ring_width = rng.uniform(9.0, 14.0) * s
    # wood grain: rings are level sets of a distorted distance, stretched along the fibres (y)
    bend = _fbm(rng, size, scale=60 * s, octaves=4, stretch_y=3.0)
    rings = (gx + 14.0 * s * bend + rng.random() * ring_width) / ring_width
    phase = rings - np.floor(rings)
    latewood = _smoothstep(0.55, 0.85, phase) * (1.0 - _smoothstep(0.9, 1.0, phase))
    streaks = _fbm(rng, size, scale=10 * s, octaves=3, stretch_y=8.0)  # long thin fibres
    pores = _fbm(rng, size, scale=1.2 * s, octaves=1, stretch_y=4.0)
    blotch = _fbm(rng, size, scale=45 * s, octaves=2)
    value = np.clip(
        0.85 - 0.40 * latewood + 0.06 * streaks + 0.035 * pores + 0.05 * blotch, 0.0, 1.0
    )
    tone = rng.uniform(-12, 12)
    img = _colorize(value, (120 + tone, 72 + tone, 38 + tone), (228 + tone, 184 + tone, 132 + tone))
    return img, np.ones((size, size), dtype=bool)


def _wire_grid(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A woven metal mesh over a dark ground, seen slightly askew (grayscale, as MVTec's grid)."""
    x, y = _grid(size)
    s = size / 128.0
    angle = rng.uniform(-0.12, 0.12)
    period = rng.uniform(10.0, 13.0) * s
    radius = rng.uniform(1.4, 1.9) * s
    u, v = _rotate(x, y, angle, size / 2, size / 2)
    # slight perspective: the pitch grows towards the bottom of the frame
    v = v + 0.0012 * rng.uniform(-1, 1) * v * v / s
    u = u + rng.random() * period
    v = v + rng.random() * period
    du = (u / period - np.round(u / period)) * period  # signed distance to the nearest wire
    dv = (v / period - np.round(v / period)) * period
    # plain over/under weave: each wire's height follows a cosine that peaks where it crosses
    # over its neighbour; the two wires at a crossing are in opposite phase
    cu = np.round(u / period).astype(np.int64)
    cv = np.round(v / period).astype(np.int64)
    height_v = np.cos(np.pi * (v / period + cu))
    height_h = np.cos(np.pi * (u / period + cv + 1))

    def wire(d: np.ndarray, height: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = np.clip(np.abs(d) / radius, 0.0, 1.0)
        cover = np.clip(radius + 0.5 - np.abs(d), 0.0, 1.0)
        nz = np.sqrt(1.0 - r * r)  # cylinder normal: diffuse term plus a specular line
        shade = 0.35 + 0.40 * nz + 0.35 * nz**12 + 0.10 * np.sign(d) * r
        return cover, shade * (0.72 + 0.28 * height)

    cov_v, sh_v = wire(du, height_v)
    cov_h, sh_h = wire(dv, height_h)
    cover = np.maximum(cov_v, cov_h)
    crossing = (cov_v > 0) & (cov_h > 0)
    shade = np.where(cov_v >= cov_h, sh_v, sh_h)
    shade = np.where(crossing, np.where(height_v >= height_h, sh_v, sh_h), shade)
    # wires cast a soft shadow onto the ground
    shadow = ndimage.gaussian_filter(cover, 1.6 * s)
    shadow = ndimage.shift(shadow, (2.0 * s, 1.5 * s), order=1, mode="wrap")
    ground = 55 + 8 * _fbm(rng, size, scale=25 * s, octaves=3) + 4 * _fbm(rng, size, scale=2 * s, octaves=1)
    ground = ground * (1.0 - 0.45 * shadow)
    metal = 175 * shade * (1.0 + 0.06 * _fbm(rng, size, scale=6 * s, octaves=2))
    value = _lerp(ground, metal, cover)
    img = np.repeat(value[..., None], 3, axis=2)
    return img, np.ones((size, size), dtype=bool)


def _pill(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A white, red-speckled capsule tablet on a dark tray, with position and rotation jitter."""
    x, y = _grid(size)
    s = size / 128.0
    half_len = rng.uniform(0.20, 0.23) * size
    radius = rng.uniform(0.14, 0.16) * size
    cx = size / 2 + rng.uniform(-0.07, 0.07) * size
    cy = size / 2 + rng.uniform(-0.07, 0.07) * size
    angle = rng.uniform(-0.45, 0.45)
    u, v = _rotate(x, y, angle, cx, cy)
    along = np.clip(u, -half_len, half_len)
    du, dv = u - along, v  # offset from the capsule's axis, in the pill's frame
    r = np.hypot(du, dv)
    cover = np.clip(radius + 0.5 - r, 0.0, 1.0)
    # dome-shaped top: normal of a flattened ellipsoid section
    rr = np.clip(r / radius, 0.0, 1.0)
    nz = np.sqrt(1.0 - rr**2) * 1.6 + 0.15
    ca, sa = np.cos(angle), np.sin(angle)
    nx = (ca * du - sa * dv) / radius  # back to image frame
    ny = (sa * du + ca * dv) / radius
    norm = np.sqrt(nx**2 + ny**2 + nz**2)
    lambert = np.clip((nx * _LIGHT[0] + ny * _LIGHT[1] + nz * _LIGHT[2]) / norm, 0.0, 1.0)
    half = _LIGHT + np.array([0.0, 0.0, 1.0])
    half = half / np.linalg.norm(half)
    spec = np.clip((nx * half[0] + ny * half[1] + nz * half[2]) / norm, 0.0, 1.0) ** 40
    body = np.array([rng.uniform(222, 235), rng.uniform(218, 228), rng.uniform(205, 215)])
    grain = 1.0 + 0.025 * _fbm(rng, size, scale=2.0 * s, octaves=2)
    pill = body * (0.50 + 0.50 * lambert)[..., None] * grain[..., None] + 60.0 * spec[..., None]
    # red speckles (MVTec's pill is speckled); drawn in the pill's frame so they move with it
    n_speck = rng.integers(18, 32)
    sp_u = rng.uniform(-half_len - 0.6 * radius, half_len + 0.6 * radius, n_speck)
    sp_v = rng.uniform(-0.8 * radius, 0.8 * radius, n_speck)
    sp_r = rng.uniform(0.5, 1.1, n_speck) * s
    sp_x = cx + np.cos(angle) * sp_u - np.sin(angle) * sp_v  # back to image coordinates
    sp_y = cy + np.sin(angle) * sp_u + np.cos(angle) * sp_v
    speck = np.zeros((size, size))
    for px, py, sr in zip(sp_x, sp_y, sp_r):  # a few dozen discs, each on its own small window
        x0, y0 = max(0, int(px - sr - 2)), max(0, int(py - sr - 2))
        x1, y1 = min(size, int(px + sr + 3)), min(size, int(py + sr + 3))
        if x1 > x0 and y1 > y0:
            d = np.hypot(x[y0:y1, x0:x1] - px, y[y0:y1, x0:x1] - py)
            speck[y0:y1, x0:x1] = np.maximum(speck[y0:y1, x0:x1], np.clip(sr + 0.5 - d, 0.0, 1.0))
    pill = _lerp(pill, np.array([185.0, 70.0, 60.0]) * (0.6 + 0.4 * lambert)[..., None], 0.85 * speck[..., None])
    # a darker, slightly bluish tray with a soft contact shadow
    shadow = ndimage.gaussian_filter(cover, 4.0 * s)
    shadow = ndimage.shift(shadow, (3.0 * s, 2.0 * s), order=1, mode="nearest")
    tray = 38 + 6 * _fbm(rng, size, scale=30 * s, octaves=3) + 3 * _fbm(rng, size, scale=1.5 * s, octaves=1)
    tray = tray * (1.0 - 0.5 * shadow)
    ground = tray[..., None] * np.array([0.95, 1.0, 1.08])
    img = _lerp(ground, pill, cover[..., None])
    region = (radius - 2.5 * s - r) > 0  # the pill face, minus its very edge
    return img, region


_NORMAL = {"carpet_like": _carpet, "wood": _wood, "grid": _wire_grid, "pill": _pill}

# --------------------------------------------------------------------------------------------
# Defects: each returns (alpha HxW in [0, 1], layer HxWx3); composite = bg*(1-a) + layer*a
# --------------------------------------------------------------------------------------------


def _pick_center(rng: np.random.Generator, region: np.ndarray, margin: float) -> tuple[float, float]:
    """A defect centre inside `region`, at least `margin` px from the image border."""
    size = region.shape[0]
    m = int(np.ceil(margin))
    inner = np.zeros_like(region)
    inner[m : size - m, m : size - m] = region[m : size - m, m : size - m]
    ys, xs = np.nonzero(inner if inner.any() else region)
    k = rng.integers(len(xs))
    return float(xs[k]) + rng.random(), float(ys[k]) + rng.random()


def _polyline_alpha(
    size: int, points: np.ndarray, widths: np.ndarray, softness: float = 0.5
) -> np.ndarray:
    """Anti-aliased coverage of a polyline whose width varies per vertex: max over segments of
    clip(w/2 + softness - distance, 0, 1) (a 1-px box filter on the exact distance field).
    Each segment is evaluated only inside its bounding box."""
    alpha = np.zeros((size, size))
    for (p0, p1), (w0, w1) in zip(zip(points[:-1], points[1:]), zip(widths[:-1], widths[1:])):
        pad = max(w0, w1) / 2 + 2
        x0 = int(max(0, np.floor(min(p0[0], p1[0]) - pad)))
        x1 = int(min(size, np.ceil(max(p0[0], p1[0]) + pad)))
        y0 = int(max(0, np.floor(min(p0[1], p1[1]) - pad)))
        y1 = int(min(size, np.ceil(max(p0[1], p1[1]) + pad)))
        if x1 <= x0 or y1 <= y0:
            continue
        xs = np.arange(x0, x1) + 0.5
        ys = np.arange(y0, y1) + 0.5
        px, py = np.meshgrid(xs, ys)
        d = p1 - p0
        length2 = float(d @ d) or 1e-12
        t = np.clip(((px - p0[0]) * d[0] + (py - p0[1]) * d[1]) / length2, 0.0, 1.0)
        dist = np.hypot(px - p0[0] - t * d[0], py - p0[1] - t * d[1])
        w = w0 + (w1 - w0) * t
        a = np.clip(w / 2 + softness - dist, 0.0, 1.0)
        alpha[y0:y1, x0:x1] = np.maximum(alpha[y0:y1, x0:x1], a)
    return alpha


def _curve(rng, start, heading, length, step, turn_sd, drift=0.0) -> np.ndarray:
    """A smooth random curve: a walk whose heading changes by a correlated random amount."""
    n = max(3, int(np.ceil(length / step)) + 1)
    turns = np.cumsum(rng.normal(drift, turn_sd, n - 1))
    turns = ndimage.uniform_filter1d(turns, 3, mode="nearest")
    headings = heading + turns
    steps = np.stack([np.cos(headings), np.sin(headings)], axis=1) * step
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def _main_blob(alpha: np.ndarray) -> np.ndarray:
    """Keep the connected piece of a blob that carries most of its alpha: noisy outlines
    otherwise throw off islands far from the defect."""
    labels, n = ndimage.label(alpha > 0.02)
    if n <= 1:
        return alpha
    weight = ndimage.sum(alpha, labels, index=np.arange(1, n + 1))
    return np.where(labels == 1 + int(np.argmax(weight)), alpha, 0.0)


def _scratch(rng, bg, region, category):
    size = bg.shape[0]
    s = size / 128.0
    length = rng.uniform(0.25, 0.55) * size
    cx, cy = _pick_center(rng, region, 0.12 * size)
    heading = rng.uniform(0, 2 * np.pi)
    curvature = rng.uniform(-0.06, 0.06)  # radians per step: a gentle arc
    pts = _curve(rng, np.zeros(2), heading, length, 2.0 * s, 0.03, drift=curvature)
    pts = pts - pts.mean(axis=0) + np.array([cx, cy])
    n = len(pts)
    t = np.linspace(0.0, 1.0, n)
    width = rng.uniform(1.7, 2.6) * s
    widths = width * (0.55 + 0.45 * np.sin(np.pi * t) ** 0.5)  # thins towards both ends
    alpha = _polyline_alpha(size, pts, widths)
    # pressure varies along the stroke
    alpha = alpha * np.clip(0.9 + 0.15 * _fbm(rng, size, scale=12 * s, octaves=2), 0.6, 1.0)
    bright = rng.random() < {"wood": 0.7, "pill": 0.0}.get(category, 0.5)  # white on a white pill hides
    lum = _luma(bg)[..., None]
    if bright:  # scratched-off surface, lighter than what is around
        color = np.array([248.0, 240.0, 225.0]) if category != "grid" else np.array([235.0] * 3)
        layer = _lerp(color, lum * np.array([1.1, 1.05, 1.0]), 0.25)
    else:  # a groove in shadow
        layer = bg * 0.35
    return alpha, layer


def _hole(rng, bg, region, category):
    size = bg.shape[0]
    s = size / 128.0
    a = rng.uniform(0.05, 0.11) * size
    b = a * rng.uniform(0.6, 1.0)
    cx, cy = _pick_center(rng, region, a + 6 * s)
    x, y = _grid(size)
    u, v = _rotate(x, y, rng.uniform(0, np.pi), cx, cy)
    rho = np.hypot(u / a, v / b)
    rho = rho * (1.0 + 0.12 * np.tanh(0.8 * _fbm(rng, size, scale=0.8 * a, octaves=3, gain=0.4)))
    edge_px = (1.0 - rho) * b  # approximately signed distance to the edge, in pixels
    alpha = _main_blob(np.clip(edge_px + 0.5, 0.0, 1.0))
    # inner wall: the side away from the light is lit (we look into the hole), the other is dark
    nx, ny = u / (a * a), v / (b * b)
    nn = np.hypot(nx, ny) + 1e-9
    facing = -(nx * _LIGHT[0] + ny * _LIGHT[1]) / nn  # +1 on the far wall
    wall = _smoothstep(0.55, 0.95, rho)
    depth_dark = np.array([22.0, 19.0, 17.0]) if category != "wood" else np.array([38.0, 24.0, 14.0])
    lum = _luma(bg)[..., None] / 255.0
    fibres = 1.0 + 0.25 * _fbm(rng, size, scale=1.5 * s, octaves=2)[..., None]
    bottom = depth_dark * fibres
    wall_color = bg * (0.25 + 0.35 * np.clip(facing, 0.0, 1.0))[..., None] * (0.7 + 0.3 * lum)
    layer = _lerp(bottom, wall_color, wall[..., None])
    # raised, darkened rim just outside the hole: visible but below the mask threshold
    rim = np.clip(1.0 - np.abs(edge_px + 1.5 * s) / (2.0 * s), 0.0, 1.0) * (edge_px < 0)
    rim_alpha = 0.35 * rim
    alpha_total = np.maximum(alpha, rim_alpha)
    layer = np.where((alpha >= rim_alpha)[..., None], layer, bg * 0.55)
    return alpha_total, layer


def _stain(rng, bg, region, category):
    size = bg.shape[0]
    s = size / 128.0
    radius = rng.uniform(0.07, 0.14) * size
    cx, cy = _pick_center(rng, region, radius * 0.8)
    x, y = _grid(size)
    u, v = _rotate(x, y, rng.uniform(0, np.pi), cx, cy)
    aspect = rng.uniform(0.6, 1.0)
    rho = np.hypot(u / radius, v / (radius * aspect))
    rho = rho * (1.0 + 0.2 * np.tanh(0.8 * _fbm(rng, size, scale=1.2 * radius, octaves=3, gain=0.35)))
    peak = rng.uniform(0.72, 0.92)
    soft = _smoothstep(1.05, 0.75, rho)  # soft edge, decreasing with rho
    alpha = peak * soft * np.clip(1.0 + 0.08 * _fbm(rng, size, scale=3 * s, octaves=2), 0.0, 1.1)
    alpha = _main_blob(np.clip(alpha, 0.0, 1.0))
    palettes = {
        "carpet_like": [(95, 60, 35), (60, 70, 110), (120, 40, 45)],  # coffee, ink, wine
        "wood": [(80, 45, 20), (55, 45, 40), (120, 85, 55)],  # tea, oil, water soaked in
        "grid": [(200, 200, 200), (125, 125, 125)],  # glue, grime film (grayscale category)
        "pill": [(150, 110, 60), (90, 90, 90), (170, 60, 50)],  # contamination, smudge, colour
    }
    options = palettes[category]
    color = np.array(options[rng.integers(len(options))], dtype=np.float64)
    lum = _luma(bg)[..., None]
    texture = np.clip(lum / max(float(lum.mean()), 1.0), 0.4, 1.8)
    # liquids dry with a darker ring at the edge (coffee-ring effect)
    ring = 1.0 - 0.3 * _smoothstep(0.55, 0.85, rho) * _smoothstep(1.05, 0.85, rho)
    # a film over the mesh flattens it; a liquid soaked into cloth or wood keeps its texture
    show_through = 0.2 if category == "grid" else 0.45
    layer = color * (1.0 - show_through + show_through * texture) * ring[..., None]
    return alpha, layer


def _crack(rng, bg, region, category):
    size = bg.shape[0]
    s = size / 128.0
    length = rng.uniform(0.3, 0.5) * size
    if category == "pill":
        length *= 0.8
    cx, cy = _pick_center(rng, region, 0.1 * size)
    heading = rng.uniform(0, 2 * np.pi)
    main = _curve(rng, np.zeros(2), heading, length, 2.5 * s, 0.35)
    main = main - main.mean(axis=0) + np.array([cx, cy])
    n = len(main)
    t = np.linspace(0.0, 1.0, n)
    w_max = rng.uniform(2.0, 3.2) * s
    alpha = _polyline_alpha(size, main, w_max * (0.35 + 0.65 * np.sin(np.pi * t) ** 0.7))
    for _ in range(rng.integers(1, 4)):  # branches fork off the main crack and thin out
        k = rng.integers(n // 5, max(n // 5 + 1, 4 * n // 5))
        seg = main[min(k + 1, n - 1)] - main[max(k - 1, 0)]
        base_heading = np.arctan2(seg[1], seg[0])
        branch_heading = base_heading + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.0)
        branch = _curve(rng, main[k], branch_heading, length * rng.uniform(0.2, 0.45), 2.5 * s, 0.4)
        tb = np.linspace(0.0, 1.0, len(branch))
        w0 = w_max * (0.35 + 0.65 * np.sin(np.pi * t[k]) ** 0.7) * 0.8
        alpha = np.maximum(alpha, _polyline_alpha(size, branch, w0 * (1.0 - 0.75 * tb)))
    # the fracture's edges chip: a faint dark halo (below the mask threshold) around the crack
    halo = 0.3 * ndimage.gaussian_filter(alpha, 1.2 * s) / max(float(alpha.max()), 1e-9)
    alpha_total = np.maximum(alpha, np.minimum(halo, 0.3))
    depth = 0.12 if category != "grid" else 0.2
    layer = bg * depth + 8.0
    return alpha_total, layer


_DEFECTS = {"scratch": _scratch, "hole": _hole, "stain": _stain, "crack": _crack}

# --------------------------------------------------------------------------------------------
# Rendering one image
# --------------------------------------------------------------------------------------------


def _stable_id(text: str) -> int:
    """A process-independent integer for a name (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


def _image_rng(seed: int, category: str, kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([seed, _stable_id(category), _stable_id(kind), index])
    )


def _camera(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Uneven illumination and sensor noise, applied after the defect (it is part of the scene)."""
    size = img.shape[0]
    x, y = _grid(size)
    gx, gy = rng.uniform(-0.06, 0.06, 2)
    light = 1.0 + gx * (x / size - 0.5) * 2 + gy * (y / size - 0.5) * 2
    noise = rng.normal(0.0, 1.8, img.shape)
    return img * light[..., None] + noise


def _quantize(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_demo_image(
    category: str, defect: str, seed: int, index: int, size: int = DEFAULT_SIZE, split: str = "test"
) -> DemoImage:
    """Render one image of the demo dataset in memory (what `write_demo_dataset` writes as
    `<category>/<split>/<defect>/<index>.png`). `defect` is "good" or one of the category's types."""
    if category not in CATEGORIES:
        raise BenchError(f"demo dataset has no category {category!r}; known: {sorted(CATEGORIES)}")
    if defect != "good" and defect not in CATEGORIES[category]:
        raise BenchError(
            f"demo category {category!r} has no defect type {defect!r}; "
            f"known: {list(CATEGORIES[category])}"
        )
    if split not in ("train", "test") or (split == "train" and defect != "good"):
        raise BenchError(f"demo split must be 'train' (good only) or 'test', got {split!r}/{defect!r}")
    rng = _image_rng(seed, category, f"{split}/{defect}", index)
    clean, region = _NORMAL[category](rng, size)
    alpha = np.zeros((size, size))
    img = clean
    if defect != "good":
        min_pixels = max(4, int(_MIN_MASK_PIXELS_AT_128 * (size / 128.0) ** 2))
        for _ in range(20):  # redraw a defect that came out (almost) invisible
            alpha, layer = _DEFECTS[defect](rng, clean, region, category)
            if category in OBJECT_CATEGORIES:  # defects live on the object, not on the tray
                alpha = alpha * ndimage.gaussian_filter(region.astype(np.float64), 0.7)
            if int((alpha >= 0.5).sum()) >= min_pixels:
                break
        img = clean * (1.0 - alpha[..., None]) + layer * alpha[..., None]
    cam_rng = np.random.default_rng(rng.integers(2**63))
    # the same camera draw for the clean twin, so image - clean is exactly the defect
    state = cam_rng.bit_generator.state
    image = _quantize(_camera(cam_rng, img))
    if defect == "good":
        clean_out = image
    else:
        cam_rng.bit_generator.state = state
        clean_out = _quantize(_camera(cam_rng, clean))
    mask = np.where(alpha >= 0.5, 255, 0).astype(np.uint8)
    return DemoImage(image=image, mask=mask, clean=clean_out, region=region)


# --------------------------------------------------------------------------------------------
# Writing the dataset
# --------------------------------------------------------------------------------------------


def _save_png(array: np.ndarray, path: Path) -> None:
    mode = "L" if array.ndim == 2 else "RGB"
    # PIL writes no timestamp into PNGs, so equal pixels give equal bytes
    Image.fromarray(array, mode=mode).save(path, format="PNG", compress_level=1)


def _manifest(seed: int, size: int, n_train: int, n_test_good: int, n_defect: int) -> dict:
    return {
        "name": "sias-bench-demo",
        "generator": "benchmark.data.demo",
        "version": DEMO_VERSION,
        "seed": seed,
        "size": size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_defect_per_type": n_defect,
        "layout": "mvtec",
        "categories": {c: list(t) for c, t in CATEGORIES.items()},
        "note": "procedural data for pipeline runs; not a substitute for MVTec AD numbers",
    }


def write_demo_dataset(
    output: Path,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    n_train: int = DEFAULT_N_TRAIN,
    n_test_good: int = DEFAULT_N_TEST_GOOD,
    n_defect_per_type: int = DEFAULT_N_DEFECT_PER_TYPE,
) -> Path:
    """Write the demo dataset to `output` in MVTec AD layout and return `output`:
    `<cat>/train/good/000.png`, `<cat>/test/good/000.png`, `<cat>/test/<type>/000.png`,
    `<cat>/ground_truth/<type>/000_mask.png` (0/255), and `demo.json` at the root.

    `output` must be empty, missing, or a previous demo dataset (which is replaced)."""
    output = Path(output)
    for name, value, low in (
        ("seed", seed, 0), ("size", size, 32), ("n_train", n_train, 0),
        ("n_test_good", n_test_good, 0), ("n_defect_per_type", n_defect_per_type, 1),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise BenchError(f"write_demo_dataset: {name} must be an integer >= {low}, got {value!r}")
    if output.exists() and any(output.iterdir()):
        if not (output / MANIFEST).is_file():
            raise BenchError(
                f"{output} is not empty and holds no {MANIFEST}: refusing to write the demo "
                "dataset into it; give an empty or new folder"
            )
        (output / MANIFEST).unlink()
        for category in CATEGORIES:
            shutil.rmtree(output / category, ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)

    def stem(i: int, n: int) -> str:
        return f"{i:0{max(3, len(str(n - 1)))}d}"

    for category, defect_types in CATEGORIES.items():
        root = output / category
        jobs = [("train", "good", n_train), ("test", "good", n_test_good)]
        jobs += [("test", t, n_defect_per_type) for t in defect_types]
        for split, defect, count in jobs:
            folder = root / split / defect
            folder.mkdir(parents=True, exist_ok=True)
            if defect != "good":
                (root / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                sample = render_demo_image(category, defect, seed, i, size, split)
                _save_png(sample.image, folder / f"{stem(i, count)}.png")
                if defect != "good":
                    _save_png(sample.mask, root / "ground_truth" / defect / f"{stem(i, count)}_mask.png")
    manifest = _manifest(seed, size, n_train, n_test_good, n_defect_per_type)
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return output


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """`$SIAS_BENCH_CACHE`, else `~/.cache/sias-bench`."""
    env = os.environ.get("SIAS_BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sias-bench"


def _is_current(folder: Path, seed: int, size: int) -> bool:
    try:
        found = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    expected = _manifest(seed, size, DEFAULT_N_TRAIN, DEFAULT_N_TEST_GOOD, DEFAULT_N_DEFECT_PER_TYPE)
    return found == expected and all((folder / c).is_dir() for c in CATEGORIES)


def demo_dataset_path(cache_dir: Path | None = None, seed: int = 0, *, size: int = DEFAULT_SIZE) -> Path:
    """The cached demo dataset for `seed` (default sizes), written first if missing or stale.

    Lives in `<cache_dir or default_cache_dir()>/demo-v<DEMO_VERSION>-seed<seed>` (with a
    `-<size>px` suffix for a non-default size). It is written into a temporary sibling folder
    and renamed into place, so a crash never leaves half a dataset, and concurrent callers
    (several DDP ranks) each end with the same complete folder."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = f"demo-v{DEMO_VERSION}-seed{seed}" + ("" if size == DEFAULT_SIZE else f"-{size}px")
    final = base / name
    if _is_current(final, seed, size):
        return final
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=base))
    try:
        write_demo_dataset(tmp, seed=seed, size=size, n_train=DEFAULT_N_TRAIN,
                           n_test_good=DEFAULT_N_TEST_GOOD, n_defect_per_type=DEFAULT_N_DEFECT_PER_TYPE)
        if final.exists() and not _is_current(final, seed, size):  # stale: move it aside first
            trash = base / f".{name}.stale-{uuid.uuid4().hex}"
            try:
                os.rename(final, trash)
            except FileNotFoundError:
                pass  # another process moved it already
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_current(final, seed, size):  # not a concurrent writer that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


__all__ = [
    "CATEGORIES",
    "DEMO_VERSION",
    "DemoImage",
    "default_cache_dir",
    "demo_dataset_path",
    "render_demo_image",
    "write_demo_dataset",
]
