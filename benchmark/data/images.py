"""Pixels of a dataset: images as uint8 RGB, masks as bool, and atomic PNG writes.

Mask convention: a pixel is defective when its value is non-zero. That one rule reads every
encoding the supported datasets ship: 0/255 (MVTec AD, MVTec 3D-AD, BTAD), 0/1, the per-defect
grey level of each MVTec LOCO region file, and VisA's class-id maps (0 = background, k = defect
class k of spot-diff's `id2class.py`). Masks with anti-aliased grey edges therefore count their
edges as defect; the dataset validator (`benchmark.data.check`) flags such masks.

EXIF orientation is deliberately not applied: masks are drawn on the stored pixel grid, so the
image has to stay on that grid too.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.data.dataset import Sample
from benchmark.errors import BenchError

REPAIR_HINT = "re-extract or re-download the file, or delete it and its mask"
MISSING_HINT = "check --data-root and --layout, or re-extract the dataset"


class UnreadableFileError(BenchError):
    """An image or mask file that is missing or cannot be decoded; `reason` is the decoder's
    complaint, `path` the file."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        hint = MISSING_HINT if reason == "file not found" else REPAIR_HINT
        super().__init__(f"{self.path}: cannot read ({reason}); fix: {hint}")


def _open(path: Path | str) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise UnreadableFileError(path, "file not found") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableFileError(path, str(exc) or type(exc).__name__) from None


def _decoded(path: Path | str) -> Image.Image:
    img = _open(path)
    try:
        img.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnreadableFileError(path, str(exc) or type(exc).__name__) from None
    return img


def image_size(path: Path | str, verify: bool = False) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels.

    With `verify`, also detect truncated or corrupt files cheaply: PNG chunk checksums
    (PIL `verify`), the JPEG end-of-image marker, and a full decode for other formats (BMP and
    TIFF are mostly uncompressed, so decoding them costs little)."""
    with _open(path) as img:
        if not verify:
            return img.size
        try:
            if img.format == "PNG":
                img.verify()
            elif img.format == "JPEG":
                with open(path, "rb") as f:
                    f.seek(-2, os.SEEK_END)
                    if f.read(2) != b"\xff\xd9":
                        raise OSError("JPEG file is truncated (no end-of-image marker)")
            else:
                img.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise UnreadableFileError(path, str(exc) or type(exc).__name__) from None
        return img.size


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: keep the top 8 bits instead of PIL's clipping conversion.
        grey = (np.asarray(img).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_image(path: Path | str, size: int | None = None) -> np.ndarray:
    """The image as uint8 H x W x 3 RGB (grey and palette images are expanded, alpha dropped);
    resized bilinearly to size x size when `size` is given."""
    img = _decoded(path)
    if size is not None and img.size != (size, size):
        if img.mode not in ("RGB", "L"):
            img = Image.fromarray(_to_rgb_uint8(img))
        img = img.resize((size, size), Image.BILINEAR)
    return _to_rgb_uint8(img)


def read_mask_array(path: Path | str) -> np.ndarray:
    """A mask file's values as a 2-D integer array on the stored grid (non-zero = defect).

    Palette masks keep their palette indices (class ids); colour masks take the maximum over
    the colour channels; alpha channels are ignored."""
    img = _decoded(path)
    if img.mode == "1":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    if img.mode not in ("L", "P", "RGB", "I", "I;16", "I;16B", "I;16L"):
        img = img.convert("L")
    values = np.asarray(img)
    if values.ndim == 3:
        values = values.max(axis=2)
    return values


def _mask_paths(source: Sample | Sequence[Path | str] | Path | str) -> tuple[list[Path], Path | None]:
    """Mask files of `source` and, for a Sample, its image (used for the shape of normal images)."""
    if isinstance(source, Sample):
        return list(source.masks), source.image
    if isinstance(source, (str, os.PathLike)):
        return [Path(source)], None
    return [Path(p) for p in source], None


def _resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(shape):
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((shape[1], shape[0]), Image.NEAREST)) > 0


def load_mask(
    source: Sample | Sequence[Path | str] | Path | str,
    size: int | None = None,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """The defect mask as bool H x W: the OR of all mask files of `source` (a Sample, one path or
    several paths; MVTec LOCO has one file per defect region).

    The output is size x size when `size` is given, else `shape` (H, W) when given, else the mask
    files' own size. Masks are resized with nearest neighbour. A source without masks (a normal
    Sample, an empty list) gives all False at that shape; for a Sample without `size`/`shape`
    the shape is read from the image header."""
    paths, image = _mask_paths(source)
    target = (size, size) if size is not None else (tuple(shape) if shape is not None else None)
    if not paths:
        if target is None:
            if image is None:
                raise ValueError("load_mask: no mask files and no size/shape to build an empty mask")
            width, height = image_size(image)
            target = (height, width)
        return np.zeros(target, dtype=bool)

    union: np.ndarray | None = None
    for path in paths:
        mask = read_mask_array(path) > 0
        if union is None:
            union = mask
            continue
        if mask.shape != union.shape:
            if target is None:
                raise BenchError(
                    f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but {paths[0]} is "
                    f"{union.shape[1]}x{union.shape[0]}; fix: give all masks of an image its size"
                )
            union, mask = _resize_nearest(union, target), _resize_nearest(mask, target)
        union |= mask
    assert union is not None
    return union if target is None else _resize_nearest(union, target)


def save_png_atomic(array: np.ndarray, path: Path | str) -> None:
    """Write `array` (uint8 H x W or H x W x 3/4; bool is written as 0/255) as a PNG that
    readers only ever see complete: a temp file in the same folder, then `os.replace`."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise ValueError(f"save_png_atomic: expected uint8 or bool pixels, got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"save_png_atomic: expected H x W or H x W x 3/4, got shape {array.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden, unique temp name in the target folder: same file system (so the rename is atomic),
    # invisible to `*.png` globs, and safe when several ranks write into one folder. Not mkstemp:
    # its 0600 mode would survive the rename and hide the file from other users.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            Image.fromarray(np.ascontiguousarray(array)).save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
