"""Per-image outputs of the evaluation: the anomaly map of every evaluated image, its ground-truth
mask at the map's size, and an overlay for people, under `<run>/predictions/`.

    maps/<category>/<defect>/<stem>.npy        float32 H x W probabilities, exactly what was scored
    masks/<category>/<defect>/<stem>_mask.png  ground truth (0/255) at the map's size; none for normals
    overlays/<category>/<defect>/<stem>.png    the image with the map as a red tint, the mask outlined

so `bench score --maps <run>/predictions/maps/<category> --masks <run>/predictions/masks/<category>`
gives the category's numbers of the run (same metric options). Maps are .npy, not 16-bit PNG:
quantising them would change tied scores and so the curves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    def __init__(self, root: Path):
        super().__init__(write_interval="batch")
        self.root = Path(root)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        prob = prediction["prob"].detach().float().cpu().numpy()
        masks = prediction["mask"].cpu().numpy().astype(bool)
        images = batch["image"].detach().float().cpu()
        for i, (category, item_id) in enumerate(zip(batch["category"], batch["id"])):
            write_prediction(self.root, category, item_id, _as_2d(prob[i]), _as_2d(masks[i]),
                             (images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _as_2d(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[-2:])


def write_prediction(root: Path, category: str, item_id: str, prob: np.ndarray, mask: np.ndarray,
                     image: np.ndarray) -> None:
    from PIL import Image

    stem = Path(category) / item_id
    for sub in ("maps", "overlays"):
        (root / sub / stem).parent.mkdir(parents=True, exist_ok=True)
    np.save(root / "maps" / stem.with_suffix(".npy"), prob.astype(np.float32))
    if mask.any():
        path = root / "masks" / stem.parent / f"{stem.name}_mask.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    Image.fromarray(prediction_overlay(image, prob, mask)).save(root / "overlays" / stem.with_suffix(".png"))


def prediction_overlay(image: np.ndarray, prob: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image (resized to the map if needed) tinted red by the map, the true mask's edge in yellow."""
    from PIL import Image
    from scipy import ndimage

    if image.shape[:2] != prob.shape:
        image = np.asarray(Image.fromarray(image).resize(prob.shape[::-1], Image.BILINEAR))
    alpha = 0.6 * np.clip(prob, 0, 1)[..., None]
    out = (1 - alpha) * image.astype(np.float32) + alpha * np.array([255.0, 0, 0])
    edge = mask & ~ndimage.binary_erosion(mask)
    out[edge] = [255, 255, 0]
    return out.round().astype(np.uint8)
