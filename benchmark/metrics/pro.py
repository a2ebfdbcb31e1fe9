"""Ground-truth regions for PRO: 8-connected components of each mask, labelled once at update time.

Every anomalous pixel carries the area of its region; at compute time it weighs 1/area, so the
summed weight of the pixels above a threshold, divided by the number of regions, is the mean
per-region overlap (MVTec AD `compute_pro`, NOTES.md B.1). No region ids are kept, so regions of
different images, batches or DDP ranks can never collide. The area itself is `curves.pro_auc`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# 8-connectivity inside an image, no connection across the batch axis.
_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE[1] = True


def region_areas(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """masks: bool BxHxW. Returns (uint32 BxHxW: area of the pixel's region, 0 on normal pixels;
    number of regions)."""
    labels, n_regions = ndimage.label(masks, structure=_STRUCTURE)
    if n_regions == 0:
        return np.zeros(masks.shape, dtype=np.uint32), 0
    areas = np.bincount(labels.ravel()).astype(np.uint32)
    per_pixel = np.zeros(masks.shape, dtype=np.uint32)
    per_pixel[masks] = areas[labels[masks]]
    return per_pixel, int(n_regions)
