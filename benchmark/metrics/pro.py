"""Ground-truth regions for PRO: 8-connected components of each mask, labelled once at update time.

Every anomalous pixel carries the area of its region; at compute time it weighs 1/area, so the
summed weight of the pixels above a threshold, divided by the number of regions, is the mean
per-region overlap (MVTec AD `compute_pro`, NOTES.md B.1). No region ids are kept, so regions of
different images, batches or DDP ranks can never collide. The area itself is `curves.pro_auc`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class AnomalousPixels:
    """The anomalous pixels of a BxHxW batch: `index` into the flattened batch (ascending),
    `area` (uint32) of each one's region, `image_start[b]:image_start[b + 1]` the slice of image b,
    and the number of regions."""

    index: np.ndarray
    area: np.ndarray
    image_start: np.ndarray
    n_regions: int

    @staticmethod
    def of_parts(parts: "list[AnomalousPixels]", image_pixels: int) -> "AnomalousPixels":
        """The pixels of a batch from those of its consecutive slices of images (labelled apart,
        in threads), `image_pixels` per image."""
        if len(parts) == 1:
            return parts[0]
        images_before = np.cumsum([0] + [p.image_start.size - 1 for p in parts])
        starts_before = np.cumsum([0] + [int(p.image_start[-1]) for p in parts])
        return AnomalousPixels(
            np.concatenate([p.index + first * image_pixels for p, first in zip(parts, images_before)]),
            np.concatenate([p.area for p in parts]),
            np.concatenate([[0]] + [p.image_start[1:] + s for p, s in zip(parts, starts_before)]),
            sum(p.n_regions for p in parts),
        )


def anomalous_pixels(masks: np.ndarray) -> AnomalousPixels:
    """masks: bool BxHxW. Each anomalous image is labelled inside the bounding box of its mask
    (a component never leaves it), so normal images and the normal background cost one `any`.
    The anomalous pixels' indices come from one `flatnonzero` of the image, which also gives the
    bounding box; the labels are only read at those pixels."""
    n_images, height, width = masks.shape
    flat_masks = masks.reshape(n_images, -1)
    indices, areas, counts = [], [], np.zeros(n_images, dtype=np.int64)
    n_regions = 0
    for b in np.flatnonzero(flat_masks.any(axis=1)):
        index = np.flatnonzero(flat_masks[b])  # ascending, row-major
        y, x = np.divmod(index, width)
        top, bottom, left, right = y[0], y[-1] + 1, int(x.min()), int(x.max()) + 1
        labels, n = ndimage.label(masks[b, top:bottom, left:right], structure=_EIGHT_CONNECTED)
        region = labels[y - top, x - left]
        areas.append(np.bincount(region)[region].astype(np.uint32))
        indices.append(index + b * height * width)
        counts[b] = index.size
        n_regions += n
    image_start = np.concatenate(([0], np.cumsum(counts)))
    if not indices:
        return AnomalousPixels(np.zeros(0, np.int64), np.zeros(0, np.uint32), image_start, 0)
    return AnomalousPixels(np.concatenate(indices).astype(np.int64), np.concatenate(areas), image_start, n_regions)
