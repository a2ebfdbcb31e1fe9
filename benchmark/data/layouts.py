"""Readers for the real dataset layouts, exactly as the datasets ship.

Each reader returns the contract of `benchmark.data.dataset` (normal train images, normal test
images, defect images with their mask files grouped by defect type), sorted by file id in natural
order ("2" < "10"). `<cat>` is a category folder, `<type>` a defect type, `<id>` a file stem.

mvtec    MVTec AD
             <cat>/train/good/<id>.png                 normal, train
             <cat>/test/good/<id>.png                  normal, test
             <cat>/test/<type>/<id>.png                defect
             <cat>/ground_truth/<type>/<id>_mask.png   its mask (0/255)
mvtec3d  MVTec 3D-AD, RGB only (the `xyz/*.tiff` point clouds are ignored)
             <cat>/train/good/rgb/<id>.png, <cat>/test/good/rgb/<id>.png
             <cat>/test/<type>/rgb/<id>.png            defect
             <cat>/test/<type>/gt/<id>.png             its mask (test/good/gt is all zero: unused)
loco     MVTec LOCO AD
             <cat>/train/good/<id>.png, <cat>/test/good/<id>.png
             <cat>/test/{logical_anomalies,structural_anomalies}/<id>.png
             <cat>/ground_truth/<type>/<id>/000.png, 001.png, ...   one file per defect region, OR-ed
visa     VisA as downloaded (VisA_20220922), read through its split file
             split_csv/1cls.csv    columns object,split,label,image,mask; paths relative to the root
             <cat>/Data/Images/{Normal,Anomaly}/<id>.JPG, <cat>/Data/Masks/Anomaly/<id>.png
             label normal -> train or test by `split`; label anomaly -> defect type "anomaly"
btad     BTAD (anomalib's "BTech") as downloaded; each category mixes extensions
             <cat>/train/ok/<id>.{bmp,png}, <cat>/test/ok/<id>.{bmp,png}, <cat>/test/ko/<id>.{bmp,png}
             <cat>/ground_truth/ko/<id>.{png,bmp}      mask of test/ko/<id>
             "ok" is normal; "ko" is the one defect type
folder   a custom dataset in the MVTec AD layout, any of .png .jpg .jpeg .bmp .tif .tiff (any case);
         masks <cat>/ground_truth/<type>/<id>_mask.<ext> or <id>.<ext>. This also reads the
         MVTec-style copy of VisA made by spot-diff's `prepare_data.py` (`<id>.JPG` + `<id>.png`).

Decisions on details the datasets leave open (sources: anomalib `src/anomalib/data/datasets/`,
spot-diff `utils/prepare_data.py` and `utils/id2class.py`):
- `validation/good` (MVTec 3D-AD, LOCO) is not read. The datasets reserve it for model selection;
  anomalib never puts it in the train split (3D-AD: its "validation" split is dropped by both
  train and test selection; LOCO: it becomes the val split). Merging it into train would also
  give two train images the same `Sample.id` (`good/000` exists in both folders).
- VisA's `1cls.csv` names no defect types, so its anomalies form one type, "anomaly". Its masks
  are class-id maps (0 = background, k = class k of `id2class.py`), not 0/255: any non-zero
  value is defect, and the validator accepts several small levels for this layout only.
  Anomaly rows are read whatever their `split` (in 1cls they are all "test"): the benchmark makes
  its own few-shot split.
- BTAD ships `.bmp` and `.png` mixed per category (e.g. 01: bmp images, png masks; 03: bmp and
  bmp); anomalib converts every `.bmp` to `.png` after download, so its reader only sees png.
  Here images and masks are paired by stem, whatever the extension.
- Files whose name starts with "." (macOS `._*` resource forks, temp files) are skipped.

`read_dataset` checks structure only and opens no file, so it is instant on full datasets;
`benchmark.data.check.check_dataset` also decodes every file.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from benchmark.data.dataset import GOOD, CategoryData, Problem, Sample
from benchmark.data.split import natural_key
from benchmark.errors import BenchError, did_you_mean

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LOCO_DEFECT_TYPES = ("logical_anomalies", "structural_anomalies")
VISA_SPLIT_FILE = Path("split_csv") / "1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_DEFECT = "anomaly"
# How error messages name the CLI (benchmark/cli.py): its dataset-root flag and validator command.
ROOT_FLAG = "--data-root"
VALIDATOR_COMMAND = "bench data check"
PROBLEMS_SHOWN = 3


@dataclass
class LayoutScan:
    """What a reader found under a dataset root: the categories and every structural problem.

    `errors` make a category unusable (a defect image without mask, no train images, no defect
    images, a listed file that is missing); `warnings` are worth fixing but do not stop reading
    (a mask without image)."""

    root: Path
    layout: str
    categories: dict[str, CategoryData] = field(default_factory=dict)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def error(self, path: Path, message: str) -> None:
        self.errors.append(Problem(path, message))

    def warn(self, path: Path, message: str) -> None:
        self.warnings.append(Problem(path, message))

    @property
    def problems(self) -> list[Problem]:
        return self.errors + self.warnings


class Layout(Protocol):
    name: str
    expected: str  # the structure in one line, for error messages
    mask_encoding: str  # "binary" (0 + one positive level) or "class_ids" (VisA)

    def matches(self, root: Path) -> bool:
        """Does `root` hold at least one category in this layout?"""

    def is_category(self, folder: Path) -> bool:
        """Does `folder` itself look like one category in this layout?"""

    def discover(self, root: Path) -> list[str]:
        """Category names under `root`, natural-sorted."""

    def read(self, root: Path, names: Sequence[str], scan: LayoutScan) -> None:
        """Fill `scan.categories[name]` for each name, recording problems in `scan`."""


# -- file listing ----------------------------------------------------------------------------


def file_order(path: Path) -> tuple:
    """Natural order of file ids ("2" < "10"), the full name breaking ties."""
    return (natural_key(path.stem), path.name)


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return [e for e in it if not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []


def list_files(folder: Path, extensions: Iterable[str]) -> list[Path]:
    """Files directly in `folder` whose extension (any case) is one of `extensions`."""
    exts = {e.lower() for e in extensions}
    found = [Path(e.path) for e in _entries(folder) if e.is_file() and os.path.splitext(e.name)[1].lower() in exts]
    return sorted(found, key=file_order)


def list_folders(folder: Path) -> list[Path]:
    return sorted((Path(e.path) for e in _entries(folder) if e.is_dir()), key=file_order)


def _has_file(folder: Path, extensions: Iterable[str]) -> bool:
    exts = {e.lower() for e in extensions}
    return any(e.is_file() and os.path.splitext(e.name)[1].lower() in exts for e in _entries(folder))


# -- layouts organised in <cat>/<split>/<type>/ folders ----------------------------------------


@dataclass(frozen=True)
class SplitFolderLayout:
    """MVTec AD and its relatives: split folders, one folder per defect type, masks by name."""

    name: str
    expected: str
    normal: str = GOOD  # folder name of normal images ("ok" in BTAD)
    image_subdir: str = ""  # MVTec 3D-AD keeps RGB images in <type>/rgb/
    image_extensions: tuple[str, ...] = (".png",)
    mask_extensions: tuple[str, ...] = (".png",)
    mask_suffixes: tuple[str, ...] = ("_mask",)  # mask file name: <id><suffix><ext>
    masks_in_test_folder: bool = False  # MVTec 3D-AD: test/<type>/gt/ instead of ground_truth/<type>/
    masks_per_region: bool = False  # MVTec LOCO: ground_truth/<type>/<id>/<nnn>.png
    mask_encoding: str = "binary"

    # Structure

    def image_folder(self, category: Path, split: str, folder: str) -> Path:
        path = category / split / folder
        return path / self.image_subdir if self.image_subdir else path

    def mask_folder(self, category: Path, defect: str) -> Path:
        if self.masks_in_test_folder:
            return category / "test" / defect / "gt"
        return category / "ground_truth" / defect

    def is_category(self, folder: Path) -> bool:
        is_loco = any((folder / "test" / t).is_dir() for t in LOCO_DEFECT_TYPES)
        if self.masks_per_region:
            return is_loco
        if is_loco:  # LOCO's train/good looks like MVTec AD's; its masks do not
            return False
        return _has_file(self.image_folder(folder, "train", self.normal), self.image_extensions)

    def matches(self, root: Path) -> bool:
        return any(self.is_category(folder) for folder in list_folders(root))

    def discover(self, root: Path) -> list[str]:
        # A `train` folder is enough, so a category whose images are missing is still found and
        # reported as empty instead of silently dropped.
        return [f.name for f in list_folders(root) if (f / "train").is_dir()]

    # Reading

    def read(self, root: Path, names: Sequence[str], scan: LayoutScan) -> None:
        for name in names:
            scan.categories[name] = self.read_category(root / name, name, scan)

    def _images(self, category: Path, split: str, folder: str) -> list[Path]:
        return list_files(self.image_folder(category, split, folder), self.image_extensions)

    def read_category(self, category: Path, name: str, scan: LayoutScan) -> CategoryData:
        data = CategoryData(name)
        data.train_good = [Sample(p, name) for p in self._images(category, "train", self.normal)]
        data.test_good = [Sample(p, name) for p in self._images(category, "test", self.normal)]
        defect_types = [f.name for f in list_folders(category / "test") if f.name != self.normal]
        for defect in defect_types:
            samples = self._read_defects(category, name, defect, scan)
            if samples:
                data.defects[defect] = samples
        # Mask folders of a type that has no test folder at all: every mask there is extra.
        if not self.masks_in_test_folder:
            for folder in list_folders(category / "ground_truth"):
                if folder.name not in defect_types and folder.name != self.normal:
                    self._read_defects(category, name, folder.name, scan)
        return data

    def _read_defects(self, category: Path, name: str, defect: str, scan: LayoutScan) -> list[Sample]:
        mask_folder = self.mask_folder(category, defect)
        if self.masks_per_region:
            mask_entries = list_folders(mask_folder)
        else:
            mask_entries = list_files(mask_folder, self.mask_extensions)
        by_name = {p.name.lower(): p for p in mask_entries}
        samples, claimed = [], set()
        for image in self._images(category, "test", defect):
            entry = self._mask_entry(image, by_name)
            if entry is None:
                expected = self._expected_mask(mask_folder, image)
                scan.error(image, f"defect image has no mask (expected {expected})")
                continue
            claimed.add(entry)
            masks = list_files(entry, self.mask_extensions) if self.masks_per_region else [entry]
            if not masks:
                scan.error(image, f"mask folder {entry} has no mask files")
                continue
            samples.append(Sample(image, name, defect, tuple(masks)))
        image_folder = self.image_folder(category, "test", defect)
        for entry in mask_entries:
            if entry not in claimed:
                scan.warn(entry, f"mask has no image in {image_folder}")
        return samples

    def _mask_entry(self, image: Path, by_name: dict[str, Path]) -> Path | None:
        """The mask file of a defect image, or its folder of region masks for LOCO."""
        if self.masks_per_region:
            return by_name.get(image.stem.lower())
        for suffix in self.mask_suffixes:
            for ext in self.mask_extensions:
                found = by_name.get(f"{image.stem}{suffix}{ext}".lower())
                if found is not None:
                    return found
        return None

    def _expected_mask(self, mask_folder: Path, image: Path) -> str:
        if self.masks_per_region:
            return f"a folder {mask_folder / image.stem} with 000.png, 001.png, ..."
        exts = [e.lstrip(".") for e in self.mask_extensions]
        ext = exts[0] if len(exts) == 1 else "<" + "|".join(exts) + ">"
        return " or ".join(str(mask_folder / f"{image.stem}{suffix}.{ext}") for suffix in self.mask_suffixes)


# -- VisA: a split file lists every image ------------------------------------------------------


@dataclass(frozen=True)
class VisaLayout:
    name: str = "visa"
    expected: str = (
        f"{VISA_SPLIT_FILE.as_posix()} with columns {','.join(VISA_COLUMNS)} and "
        "<cat>/Data/Images/{Normal,Anomaly}/*.JPG, <cat>/Data/Masks/Anomaly/*.png"
    )
    mask_encoding: str = "class_ids"

    def matches(self, root: Path) -> bool:
        return (root / VISA_SPLIT_FILE).is_file()

    def is_category(self, folder: Path) -> bool:
        return (folder / "Data" / "Images").is_dir()

    def rows(self, root: Path) -> list[dict[str, str]]:
        path = root / VISA_SPLIT_FILE
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                missing = [c for c in VISA_COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise BenchError(
                        f"{path}: missing columns {', '.join(missing)} (expected {','.join(VISA_COLUMNS)}); "
                        "fix: use the split file shipped with VisA"
                    )
                return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise BenchError(f"{path}: cannot read the VisA split file ({exc}); fix: re-extract VisA") from None

    def discover(self, root: Path) -> list[str]:
        return sorted({row["object"] for row in self.rows(root) if row["object"]}, key=natural_key)

    def read(self, root: Path, names: Sequence[str], scan: LayoutScan) -> None:
        wanted = set(names)
        categories = {name: CategoryData(name) for name in names}
        claimed_masks: set[Path] = set()
        split_file = root / VISA_SPLIT_FILE
        for line, row in enumerate(self.rows(root), start=2):
            name = row["object"]
            if name not in wanted:
                continue
            data = categories[name]
            image = root / row["image"]
            if not row["image"] or not image.is_file():
                scan.error(image, f"listed in {split_file} (line {line}) but missing")
                continue
            label, split = row["label"].lower(), row["split"].lower()
            if label == "normal":
                if split == "train":
                    data.train_good.append(Sample(image, name))
                elif split == "test":
                    data.test_good.append(Sample(image, name))
                else:
                    message = f"line {line}: unknown split '{row['split']}' (expected train or test); skipped"
                    scan.warn(split_file, message)
            elif label == "anomaly":
                mask = root / row["mask"]
                if not row["mask"] or not mask.is_file():
                    expected = mask if row["mask"] else f"a mask path in {split_file} line {line}"
                    scan.error(image, f"defect image has no mask (expected {expected})")
                    continue
                claimed_masks.add(mask)
                data.defects.setdefault(VISA_DEFECT, []).append(Sample(image, name, VISA_DEFECT, (mask,)))
            else:
                scan.error(split_file, f"line {line}: unknown label '{row['label']}' (expected normal or anomaly)")
        for name, data in categories.items():
            data.train_good.sort(key=lambda s: file_order(s.image))
            data.test_good.sort(key=lambda s: file_order(s.image))
            for samples in data.defects.values():
                samples.sort(key=lambda s: file_order(s.image))
            for mask in list_files(root / name / "Data" / "Masks" / "Anomaly", IMAGE_EXTENSIONS):
                if mask not in claimed_masks:
                    scan.warn(mask, f"mask is not listed in {split_file}")
            scan.categories[name] = data


# -- the registry ------------------------------------------------------------------------------

LAYOUTS: dict[str, Layout] = {
    "mvtec": SplitFolderLayout(
        "mvtec",
        "<cat>/train/good/*.png, <cat>/test/<type>/*.png, <cat>/ground_truth/<type>/<id>_mask.png",
    ),
    "mvtec3d": SplitFolderLayout(
        "mvtec3d",
        "<cat>/train/good/rgb/*.png, <cat>/test/<type>/rgb/*.png, <cat>/test/<type>/gt/<id>.png",
        image_subdir="rgb",
        mask_suffixes=("",),
        masks_in_test_folder=True,
    ),
    "loco": SplitFolderLayout(
        "loco",
        "<cat>/train/good/*.png, <cat>/test/{logical,structural}_anomalies/*.png, "
        "<cat>/ground_truth/<type>/<id>/000.png",
        masks_per_region=True,
    ),
    "visa": VisaLayout(),
    "btad": SplitFolderLayout(
        "btad",
        "<cat>/train/ok/*.bmp|png, <cat>/test/{ok,ko}/*.bmp|png, <cat>/ground_truth/ko/<id>.png|bmp",
        normal="ok",
        image_extensions=(".bmp", ".png"),
        mask_extensions=(".png", ".bmp"),
        mask_suffixes=("",),
    ),
    "folder": SplitFolderLayout(
        "folder",
        "<cat>/train/good/*.<png|jpg|bmp|tif>, <cat>/test/<type>/*, "
        "<cat>/ground_truth/<type>/<id>_mask.<ext> or <id>.<ext>",
        image_extensions=IMAGE_EXTENSIONS,
        mask_extensions=IMAGE_EXTENSIONS,
        mask_suffixes=("_mask", ""),
    ),
}
# Most specific first: a MVTec AD root also matches `folder`, so `mvtec` must be tried before it.
DETECTION_ORDER = ("visa", "btad", "mvtec3d", "loco", "mvtec", "folder")


def get_layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise BenchError(f"unknown dataset layout '{name}'; choose one of: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def detect_layout(root: Path | str) -> str | None:
    """The layout `root` is in, or None when none matches."""
    root = Path(root)
    return next((name for name in DETECTION_ORDER if LAYOUTS[name].matches(root)), None)


def _wrong_layout_message(root: Path, layout: Layout) -> str:
    message = f"{root} is not a {layout.name} dataset: expected {layout.expected}."
    guess = detect_layout(root)
    if guess is not None and guess != layout.name:
        return f"{message} It looks like the {guess} layout: use --layout {guess}."
    if any(other.is_category(root) for other in LAYOUTS.values()) or (root / "train").is_dir():
        return (
            f"{message} It looks like a single category folder: use {ROOT_FLAG} {root.parent} "
            f"--categories {root.name}."
        )
    return f"{message} Fix: {ROOT_FLAG} must be the folder that holds the category folders."


def _requested(categories: Sequence[str] | str, available: list[str], root: Path, layout: str) -> list[str]:
    if isinstance(categories, str):
        categories = [categories]
    names = list(dict.fromkeys(categories))
    unknown = [n for n in names if n not in available]
    if unknown:
        raise BenchError(
            f"{root}: unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}"
            f"{did_you_mean(unknown[0], available)} for layout {layout}; available: {', '.join(available) or 'none'}"
        )
    return names


def requested_categories(root: Path | str, layout: str, categories: Sequence[str] | None = None) -> list[str]:
    """The category names a run asks for, checked against the folder names only (no file is read,
    so a misspelt category or layout answers before anything heavy runs). Raises BenchError for an
    unknown layout, a missing root, a root in another layout, or unknown categories."""
    reader = get_layout(layout)
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise BenchError(
            f"dataset root {root} does not exist or is not a folder; fix: {ROOT_FLAG} must be the "
            f"folder that holds the category folders ({reader.expected})"
        )
    if not reader.matches(root):
        raise BenchError(_wrong_layout_message(root, reader))
    available = reader.discover(root)
    return available if not categories else _requested(categories, available, root, layout)


def scan_dataset(root: Path | str, layout: str, categories: Sequence[str] | None = None) -> LayoutScan:
    """Read a dataset folder tolerantly: every structural problem is collected, none raised.

    Raises BenchError only when there is nothing to scan: unknown layout, missing root, a root
    in another layout, or unknown requested categories."""
    reader = get_layout(layout)
    root = Path(root).expanduser().absolute()
    names = requested_categories(root, layout, categories)
    scan = LayoutScan(root, layout)
    reader.read(root, names, scan)
    for name, data in scan.categories.items():
        if not data.train_good:
            scan.error(root / name, "category has no normal train images")
        if not data.defects:
            scan.error(root / name, "category has no defect images")
    return scan


def read_dataset(
    root: Path | str, layout: str, categories: Sequence[str] | None = None
) -> dict[str, CategoryData]:
    """The categories of a dataset folder (all when `categories` is None), in `layout`.

    Raises BenchError naming the first problems when the structure is unusable (missing masks,
    missing listed files, empty categories); extra masks are tolerated. Files are not opened:
    see `benchmark.data.check.check_dataset` for the full validation."""
    scan = scan_dataset(root, layout, categories)
    if scan.errors:
        shown = "; ".join(str(p) for p in scan.errors[:PROBLEMS_SHOWN])
        more = len(scan.errors) - PROBLEMS_SHOWN
        raise BenchError(
            f"{scan.root}: {len(scan.errors)} problem(s) in this {layout} dataset: {shown}"
            + (f"; and {more} more" if more > 0 else "")
            + f". Fix them or leave those categories out with --categories; "
            f"`{VALIDATOR_COMMAND} {ROOT_FLAG} {scan.root} --layout {layout}` lists every problem."
        )
    return scan.categories
