"""`bench predict`: apply a finished run's trained segmenter to new images.

    bench predict --run runs/x --images new_images/ --out predicted/ [--category wood] [--threshold 0.5]

Writes, per image `<rel>/<stem>.<ext>` under --images: `maps/<rel>/<stem>.npy` (float32 anomaly
probabilities at the run's image size), `masks/<rel>/<stem>.png` (map >= threshold, 0/255) and
`overlays/<rel>/<stem>.png` (the map as a red tint, the predicted mask outlined). Images are
prepared as in the run's evaluation (RGB, resized to data.image_size, scaled to [0, 1]).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmark.errors import BenchError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="a finished run folder (holds segmenter/*.pt)")
    parser.add_argument("--images", required=True, type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--out", required=True, type=Path, help="where maps/, masks/ and overlays/ go")
    parser.add_argument("--category", default=None,
                        help="which model of a --training per-category run (default: the unified model)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="probability for the masks (default: the run's metrics.iou_threshold if a number, else 0.5)")
    parser.add_argument("--batch-size", type=int, default=8)


def run(args: argparse.Namespace) -> int:
    config, weights, threshold = check_inputs(args)
    images = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise BenchError(f"{args.images}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    model = load_segmenter(config, weights)
    written = predict_folder(model, images, args.images, args.out, config["data"]["image_size"], threshold,
                             args.batch_size)
    if not getattr(args, "quiet", False):
        print(f"{written} image(s): maps, masks (>= {threshold}) and overlays in {args.out}")
    return 0


def check_inputs(args) -> tuple[dict, Path, float]:
    """The run's configuration, the weights file and the threshold, checked before torch loads."""
    config_path = args.run / "config.json"
    if not config_path.is_file():
        raise BenchError(f"{args.run}: not a run folder (no config.json)")
    if not args.images.is_dir():
        raise BenchError(f"{args.images}: --images is not a folder")
    config = json.loads(config_path.read_text())
    tag = args.category or "unified"
    weights = args.run / "segmenter" / f"{tag}.pt"
    if not weights.is_file():
        found = sorted(p.stem for p in (args.run / "segmenter").glob("*.pt"))
        raise BenchError(f"{weights}: no trained segmenter '{tag}' in the run{_segmenters_hint(found, args.category)}")
    threshold = args.threshold
    if threshold is None:
        stored = config.get("metrics", {}).get("iou_threshold", 0.5)
        threshold = stored if isinstance(stored, (int, float)) else 0.5
    if not 0 <= threshold <= 1:
        raise BenchError(f"--threshold {threshold}: should be a probability in [0, 1]")
    return config, weights, float(threshold)


def _segmenters_hint(found: list[str], category: str | None) -> str:
    """What to pass instead, from the segmenters the run has (`unified` or one per category)."""
    if not found:
        return "; finish the run first"
    if category and found == ["unified"]:
        return "; it trained one unified segmenter for all categories: omit --category"
    return f"; it has: {', '.join(found)} (pass one of them as --category)"


def load_segmenter(config: dict, weights: Path):
    from benchmark.registry import SEGMENTERS
    from benchmark.storage import load_weights

    cls = SEGMENTERS.load(config["segmenter"]["name"])
    model = cls(cls.Options.model_validate(config["segmenter"]["options"]))
    model.load_state_dict(load_weights(weights))
    return model.eval()


def predict_folder(model, images: list[Path], root: Path, out: Path, size: int, threshold: float,
                   batch_size: int = 8) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from benchmark.data.images import load_image
    from benchmark.predictions import prediction_overlay

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pixels = [load_image(p, size) for p in chunk]
        batch = torch.stack([torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).float() / 255 for x in pixels])
        with torch.no_grad():
            prob = model.class_logits(batch.to(device)).softmax(1)[:, 1].float().cpu().numpy()
        for path, image, p in zip(chunk, pixels, prob):
            rel = path.relative_to(root).with_suffix("")
            mask = p >= threshold
            for sub in ("maps", "masks", "overlays"):
                (out / sub / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(out / "maps" / rel.with_suffix(".npy"), p.astype(np.float32))
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / rel.with_suffix(".png"))
            Image.fromarray(prediction_overlay(image, p, mask)).save(out / "overlays" / rel.with_suffix(".png"))
    return len(images)
