"""The leaf of the leaderboard package: `Row`, the canonical ids rows are keyed by, display names.

Every other module of the package imports from here; this one imports nothing of the package, so
the arrows point one way: rows <- protocol, reproduced, reported, quality <- layout <- render <- command.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

METRIC_NAMES = {  # display order
    "pixel.auroc": "pixel AUROC", "pixel.ap": "pixel AP", "pixel.f1_max": "pixel F1-max",
    "pixel.pro": "pixel PRO", "pixel.iou": "pixel IoU", "pixel.iou_best_per_image": "pixel IoU (best per image)",
    "pixel.f1": "pixel F1 (fixed threshold)", "miou": "mIoU", "acc": "Acc", "acc_anomaly": "Acc (anomaly class)",
    "image.auroc": "image AUROC", "image.ap": "image AP", "image.f1_max": "image F1-max",
}
# Numbers in a results.json that describe how the scores were computed, not how good they are:
# never ranked, bolded or regression-checked (the binarisation threshold behind IoU/mIoU/Acc).
SETTINGS = ("threshold",)
DATASET_NAMES = {"mvtec_ad": "MVTec AD", "visa": "VisA", "btad": "BTAD", "mvtec_loco": "MVTec LOCO AD",
                 "mvtec_3d_ad": "MVTec 3D-AD", "ksdd2": "KolektorSDD2", "demo": "demo"}
DATASET_ALIASES = {"mvtec": "mvtec_ad", "mvtecad": "mvtec_ad", "mvtecanomalydetection": "mvtec_ad",
                   "mvtecloco": "mvtec_loco", "mvteclocoad": "mvtec_loco", "loco": "mvtec_loco",
                   "mvtec3d": "mvtec_3d_ad", "mvtec3dad": "mvtec_3d_ad", "kolektorsdd2": "ksdd2"}
SEGMENTER_NAMES = {"unet": "U-Net", "bisenetv2": "BiSeNet V2", "upernet": "UPerNet", "lfd": "LFD",
                   "segformer": "SegFormer", "stdc": "STDC"}
KINDS = {"generator": "", "unsupervised": " (unsupervised AD, no synthesis)", "real_only": " (real data only)"}


def canonical_name(name: str) -> str:
    """'BiSeNet V2' -> 'bisenetv2', 'real-only' -> 'realonly': ids that survive spelling variants."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def canonical_dataset(name: str) -> str:
    """Dataset id: 'MVTec AD' -> 'mvtec_ad'; the runner's 'layout:folder' names map by layout, or
    by folder for the MVTec layout (which also serves custom folders, kept as 'mvtec:<folder>')."""
    text = str(name).lower()
    layout, _, folder = text.partition(":")
    if folder:
        if canonical_name(folder) in DATASET_ALIASES:
            return DATASET_ALIASES[canonical_name(folder)]
        if canonical_name(layout) not in {"mvtec", "custom", "folder"}:
            return canonical_dataset(layout)
        return f"{layout}:{folder}"
    slug = re.sub(r"[^a-z0-9]+", "_", text).strip("_")
    return DATASET_ALIASES.get(canonical_name(text), slug)


def canonical_metric(name: str) -> str:
    """'pixel_ap', 'pixel/ap' and 'pixel.ap' all name the results.json path pixel.ap."""
    name = name.strip().replace("/", ".")
    for level in ("image_", "pixel_"):
        if name.startswith(level):
            return level[:-1] + "." + name[len(level):]
    return name


def metric_order(metric: str):
    names = list(METRIC_NAMES)
    return (names.index(metric), "") if metric in names else (len(names), metric)


def dataset_order(dataset: str):
    names = list(DATASET_NAMES)
    return (names.index(dataset), "") if dataset in names else (len(names), dataset)


def protocol_key(protocol: dict) -> str:
    """Stable 12-hex id of a protocol: equal protocols, equal keys, whatever the key order."""
    text = json.dumps(protocol, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Row:
    """One generator under one protocol: values[metric][category or 'mean'] = fraction."""

    generator: str
    label: str
    origin: str  # "reported" | "reproduced"
    protocol: dict
    kind: str = "generator"
    proposed: bool = False
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)  # metric -> paper tables
    notes: dict[tuple[str, str | None], str] = field(default_factory=dict)  # (table, metric or None) -> note
    run: dict | None = None  # reproduced: id, time, config_hash, versions, where (path or url)
    mean_over: tuple[str, ...] | None = None  # reproduced: categories behind "mean"
    settings: dict[str, dict[str, float]] = field(default_factory=dict)  # reproduced: SETTINGS per cell
    accepted: bool = False  # reproduced: a committed run of the package data (not --results / --wandb)
    follows: str = "paper"  # reproduced: whose choices the generator followed (STAGE: "authors-code"); its own row

    def labelled(self, name: str) -> str:
        """The method's name, with whose choices it followed when not the paper's."""
        return name if self.follows == "paper" else f"{name} ({self.follows})"

    @property
    def key(self) -> str:
        return protocol_key(self.protocol)

    @property
    def dataset(self) -> str:
        return self.protocol["dataset"]

    @property
    def segmenter(self) -> str:
        return self.protocol["segmenter"]
