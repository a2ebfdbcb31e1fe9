"""The options of the training-free baselines (a leaf: pydantic only, so the command line checks
`generator.options.*` before torch is imported; cutpaste.py and draem.py import them from here)."""

from __future__ import annotations

from typing import Literal, Optional

from generators.options import GeneratorOptions


class CutPasteOptions(GeneratorOptions):
    """`cutpaste` (generators/baselines/cutpaste.py)."""

    variant: Literal["scar", "normal", "union"] = "scar"
    scar_width: tuple[float, float] = (2, 16)  # px at `reference_size`
    scar_height: tuple[float, float] = (10, 25)  # px at `reference_size`
    rotation: tuple[float, float] = (-45.0, 45.0)  # degrees, scars only
    area_ratio: tuple[float, float] = (0.02, 0.15)  # of the image area, `normal` patches
    aspect_ratio: float = 0.3  # `normal` patches: width/height log-uniform in [r, 1/r]
    jitter: float = 0.1  # ColorJitter brightness = contrast = saturation = hue
    reference_size: int = 256  # the image size the scar sizes are given for
    patches: tuple[int, int] = (1, 1)  # patches per image, U{lo..hi}; CutPaste pastes one


class DraemOptions(GeneratorOptions):
    """`draem` (generators/baselines/draem.py)."""

    source_dir: Optional[str] = None  # anomaly-source textures (DTD's images/ in DRAEM)
    perlin_scale: tuple[int, int] = (0, 6)  # lattice 2**U{lo..hi-1} per axis (data_loader.py)
    perlin_rotation: tuple[float, float] = (-90.0, 90.0)  # degrees, iaa.Affine on the noise
    threshold: float = 0.5
    beta: tuple[float, float] = (0.0, 0.8)  # opacity of the normal image inside the mask
    augmentations_per_source: int = 3  # drawn without replacement from the 10
    min_area: float = 0.0  # redraw masks covering <= this fraction (0: only empty masks)
