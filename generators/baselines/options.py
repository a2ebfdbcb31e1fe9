"""The options of the training-free baselines (a leaf: pydantic only, so the command line checks
`generator.options.*` before torch is imported; cutpaste.py and draem.py import them from here).
Each option's bounds are where the method still does what its docstring says (docs/baselines.md
has the defaults' sources); a value outside them fails in one line naming the option."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from generators.options import GeneratorOptions, draw_range

DRAEM_AUGMENTATION_COUNT = 10  # the augmentations DRAEM's randAugmenter draws from (draem.py)
DegreeRange = draw_range(float, -180, 180)  # a rotation beyond a half turn repeats one inside it


class CutPasteOptions(GeneratorOptions):
    """`cutpaste` (generators/baselines/cutpaste.py). Defaults: the public re-implementations
    (Runinho/pytorch-cutpaste, LilitYolyan/CutPaste), docs/baselines.md."""

    variant: Literal["scar", "normal", "union"] = "scar"
    scar_width: draw_range(float, 0, above_lowest=True) = (2, 16)  # px at `reference_size`
    scar_height: draw_range(float, 0, above_lowest=True) = (10, 25)  # px at `reference_size`
    rotation: DegreeRange = (-45.0, 45.0)  # degrees, scars only
    area_ratio: draw_range(float, 0, 1, above_lowest=True) = (0.02, 0.15)  # of the image area, `normal` patches
    aspect_ratio: float = Field(0.3, gt=0, le=1)  # `normal` patches: width/height log-uniform in [r, 1/r]
    # ColorJitter brightness = contrast = saturation = hue; torchvision takes a hue of at most 0.5
    jitter: float = Field(0.1, ge=0, le=0.5)
    reference_size: int = Field(256, ge=1)  # the image size the scar sizes are given for
    patches: draw_range(int, 1) = (1, 1)  # patches per image, U{lo..hi}; CutPaste pastes one, 0 would leave no defect


class DraemOptions(GeneratorOptions):
    """`draem` (generators/baselines/draem.py). Defaults: the authors' data_loader.py, docs/baselines.md."""

    source_dir: Optional[str] = None  # anomaly-source textures (DTD's images/ in DRAEM)
    # lattice 2**U{lo..hi-1} per axis (data_loader.py: 0, 6); at most 2**10 cells a side (one per
    # pixel at 1024 px): the noise grid grows to the lattice, so more costs memory for sub-pixel noise
    perlin_scale: draw_range(int, 0, 11, low_below_high=True) = (0, 6)
    perlin_rotation: DegreeRange = (-90.0, 90.0)  # degrees, iaa.Affine on the noise
    # sqrt(2) x 2-D Perlin noise lies in [-1, 1]: from 1 no pixel is above it; below 0 the
    # zeros the rotation fills the corners with would be masked
    threshold: float = Field(0.5, ge=0, lt=1)
    beta: draw_range(float, 0, 1) = (0.0, 0.8)  # opacity of the normal image inside the mask
    augmentations_per_source: int = Field(3, ge=0, le=DRAEM_AUGMENTATION_COUNT)  # drawn without replacement
    min_area: float = Field(0.0, ge=0, lt=1)  # redraw masks covering <= this fraction (0: only empty masks)
