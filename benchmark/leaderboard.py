"""`bench leaderboard`: reported (paper) and reproduced (results.json) rows, grouped by protocol.

A *protocol* is what must match for two numbers to be comparable: dataset, few-shot split,
segmenter (and unified vs per-category training), image size and metric options. Reproduced
rows get theirs from `protocol_of(results)`; reported rows carry the protocol their paper
describes (leaderboards/reported/*.yaml, schema at the top of each file) and so never share a
protocol with a reproduced row. A table is one (dataset, metric); its rows are grouped by
protocol, a Protocol column names the group (P1, P2, ... described under "Protocols"), and the
best value per column is bold within a group only, never across groups.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import io
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from benchmark.errors import BenchError

LEADERBOARD_DIR = Path(__file__).resolve().parents[1] / "leaderboards"

METRIC_NAMES = {  # display order
    "pixel.auroc": "pixel AUROC", "pixel.ap": "pixel AP", "pixel.f1_max": "pixel F1-max",
    "pixel.pro": "pixel PRO", "pixel.iou": "pixel IoU", "pixel.iou_best_per_image": "pixel IoU (best per image)",
    "pixel.f1": "pixel F1 (fixed threshold)", "miou": "mIoU", "acc": "Acc", "acc_anomaly": "Acc (anomaly class)",
    "image.auroc": "image AUROC", "image.ap": "image AP", "image.f1_max": "image F1-max",
}
DATASET_NAMES = {"mvtec_ad": "MVTec AD", "visa": "VisA", "btad": "BTAD", "mvtec_loco": "MVTec LOCO AD",
                 "mvtec_3d_ad": "MVTec 3D-AD", "ksdd2": "KolektorSDD2", "demo": "demo"}
DATASET_ALIASES = {"mvtec": "mvtec_ad", "mvtecad": "mvtec_ad", "mvtecanomalydetection": "mvtec_ad",
                   "mvtecloco": "mvtec_loco", "mvteclocoad": "mvtec_loco", "loco": "mvtec_loco",
                   "mvtec3d": "mvtec_3d_ad", "mvtec3dad": "mvtec_3d_ad", "kolektorsdd2": "ksdd2"}
SEGMENTER_NAMES = {"unet": "U-Net", "bisenetv2": "BiSeNet V2", "upernet": "UPerNet", "lfd": "LFD",
                   "segformer": "SegFormer", "stdc": "STDC"}
KINDS = {"generator": "", "unsupervised": " (unsupervised AD, no synthesis)", "real_only": " (real data only)"}
README_TITLE = "SIAS-Bench leaderboard"


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


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


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
    run: dict | None = None  # reproduced: id, time, config_hash, versions, path or url
    mean_over: tuple[str, ...] | None = None  # reproduced: categories behind "mean"

    @property
    def key(self) -> str:
        return protocol_key(self.protocol)

    @property
    def dataset(self) -> str:
        return self.protocol["dataset"]

    @property
    def segmenter(self) -> str:
        return self.protocol["segmenter"]


# ---------------------------------------------------------------- protocols and reproduced rows

def protocol_of(results: dict) -> dict:
    """What two results.json must share to be comparable (see the module docstring)."""
    config = results.get("config") or {}
    data, split = config.get("data") or {}, config.get("split") or {}
    segmenter = config.get("segmenter") or {}
    if not data.get("name") or not segmenter.get("name"):
        raise BenchError("results.json has no config.data.name or config.segmenter.name; "
                         "is it a SIAS-Bench results.json?")
    fraction = split.get("fraction")
    protocol = {
        "dataset": canonical_dataset(data["name"]),
        "split": {"fraction": None if fraction is None else round(float(fraction), 4),
                  "order": split.get("order")},
        "segmenter": canonical_name(segmenter["name"]),
        "image_size": data.get("image_size"),
        "metrics": dict(sorted((config.get("metrics") or {}).items())),
    }
    if config.get("training") is not None:  # unified vs per-category segmenter (SeaS Table 8)
        protocol["training"] = config["training"]
    return protocol


def protocol_key(protocol: dict) -> str:
    """Stable 12-hex id of a protocol: equal protocols, equal keys, whatever the key order."""
    text = json.dumps(protocol, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def describe_protocol(protocol: dict) -> tuple[str, list[tuple[str, str]]]:
    """A headline and (field, text) details for humans; reported protocols quote the YAML."""
    dataset = DATASET_NAMES.get(protocol["dataset"], protocol["dataset"])
    segmenter = SEGMENTER_NAMES.get(protocol["segmenter"], protocol["segmenter"])
    if "reported_by" in protocol:
        headline = f"reported by {protocol['paper']} ({protocol['tables']}) · {dataset} · {segmenter}"
        details = [(k.replace("_", " "), str(protocol[k])) for k in
                   ("variant", "segmenter_training", "split", "resolution", "synthetic_data", "notes") if protocol.get(k)]
        details += [(f'{k} (printed "{v["printed"]}")', v["definition"]) for k, v in protocol["metric_definitions"].items()]
        return headline, details
    split = protocol.get("split") or {}
    fraction = split.get("fraction")
    training = f" ({protocol['training']})" if protocol.get("training") else ""
    headline = f"reproduced · {dataset} · {segmenter}{training} · {protocol.get('image_size')} px"
    details = [("split", ("?" if fraction is None else f"{100 * fraction:.2f}% of the defects") + f", by {split.get('order')}"),
               ("metric options", ", ".join(f"{k}={v}" for k, v in (protocol.get("metrics") or {}).items()) or "none")]
    return headline, details


def short_protocol(protocol: dict) -> str:
    seg = SEGMENTER_NAMES.get(protocol["segmenter"], protocol["segmenter"])
    if "reported_by" in protocol:
        return f"{protocol['paper']}, {seg}" + (f", {protocol['variant']}" if protocol.get("variant") else "")
    return f"reproduced, {seg}, {protocol.get('image_size')} px"


def load_results(path: Path) -> dict:
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(results, dict) or not isinstance(results.get("categories"), dict):
        raise BenchError(f"{path}: no 'categories' table; is it a SIAS-Bench results.json?")
    return results


def flatten(entry: dict, prefix: str = "") -> dict[str, float]:
    """{"pixel": {"ap": x}, "miou": y} -> {"pixel.ap": x, "miou": y}; drops non-numbers and NaN."""
    out = {}
    for key, value in entry.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


def row_from_results(results: dict, where: str) -> Row:
    """A reproduced row; `where` is the link to the run (a file path or a W&B URL)."""
    generator = (results.get("config", {}).get("generator") or {}).get("name")
    if not generator:
        raise BenchError(f"{where}: results.json has no config.generator.name")
    row = Row(generator=canonical_name(generator), label=str(generator), origin="reproduced",
              protocol=protocol_of(results), mean_over=tuple(sorted(results["categories"])))
    blocks = {**results["categories"], "mean": results.get("mean") or {}}
    for cell, block in blocks.items():
        for metric, value in flatten(block).items():
            row.values.setdefault(metric, {})[str(cell)] = value
    run = results.get("run") or {}
    row.run = {"id": run.get("id"), "time": str(run.get("time") or ""), "where": where,
               "config_hash": str(run.get("config_hash") or ""), "versions": run.get("versions") or {}}
    return row


def load_reproduced(paths: list[Path]) -> list[Row]:
    """Rows from results.json files (folders are searched recursively for *.json); the newest run
    per (protocol, generator) wins."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(path.rglob("*.json"))
        elif path.exists():
            files.append(path)
        else:
            raise BenchError(f"{path}: no such results file or folder")
    rows = [row_from_results(load_results(f), str(f)) for f in files]
    return newest_per_generator(rows)


def newest_per_generator(rows: list[Row]) -> list[Row]:
    newest: dict[tuple[str, str], Row] = {}
    for row in sorted(rows, key=lambda r: (r.run["time"], r.run["where"])):
        newest[(row.key, row.generator)] = row
    return list(newest.values())


def load_wandb(project: str) -> list[Row]:
    """Reproduced rows read back from a W&B project (what benchmark.tracking logs: the resolved
    config, summary["results"] = mean, summary["config_hash"], table results/per_category)."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in {"offline", "disabled", "dryrun"}:
        raise BenchError(f"cannot read W&B project {project!r}: WANDB_MODE={mode}; "
                         "unset it and log in with `wandb login`")
    import wandb

    try:
        api = wandb.Api(timeout=30)
        if not api.api_key:
            raise BenchError("no API key")
        runs = list(api.runs(project))
    except BenchError:
        raise BenchError(f"cannot read W&B project {project!r}: no W&B API key; "
                         "run `wandb login` or set WANDB_API_KEY") from None
    except Exception as exc:  # network, auth, unknown project: one line for the user
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BenchError(f"cannot read W&B project {project!r}: {reason}") from None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            try:
                results = _wandb_results(run, tmp)
            except Exception as exc:  # a half-logged run or a network error: one line, not a traceback
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise BenchError(f"cannot read W&B run {run.url}: {reason}") from None
            if results is not None:
                rows.append(row_from_results(results, run.url))
    return newest_per_generator(rows)


def _plain(value):
    """W&B summary sub-dicts are not dicts; make plain JSON-like values."""
    return {k: _plain(v) for k, v in value.items()} if hasattr(value, "items") else value


def _wandb_results(run, tmp: str) -> dict | None:
    summary = _plain(run.summary)
    if run.state != "finished" or not isinstance(summary.get("results"), dict):
        return None
    results = {"run": {"id": run.id, "time": str(run.created_at), "versions": {},
                       "config_hash": str(summary.get("config_hash", ""))},
               "config": _plain(run.config), "categories": {}, "mean": summary["results"]}
    table = summary.get("results/per_category")
    if isinstance(table, dict) and table.get("path"):
        handle = run.file(table["path"]).download(root=tmp, replace=True)  # an open file
        handle.close()
        table = json.loads(Path(handle.name).read_text())
        for values in table["data"]:
            entry = dict(zip(table["columns"], values))
            name = str(entry.pop("category"))
            if name != "mean":
                results["categories"][name] = unflatten({canonical_metric(k): v for k, v in entry.items()})
    return results


def unflatten(flat: dict[str, float]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        *levels, last = key.split(".")
        node = out
        for level in levels:
            node = node.setdefault(level, {})
        node[last] = value
    return out


# ----------------------------------------------------------------------------- reported rows

def _fail(where: str, message: str):
    raise BenchError(f"{where}: {message}")


def _paper_rows(doc: dict, path: Path) -> list[Row]:
    if not isinstance(doc, dict) or doc.get("schema") != 1 or doc.get("units") != "percent":
        _fail(path, "expected 'schema: 1' and 'units: percent' at the top level")
    paper, metrics, protocols = doc.get("paper") or {}, doc.get("metrics") or {}, doc.get("protocols") or {}
    if not paper.get("id"):
        _fail(path, "paper.id is missing")
    for pid, protocol in protocols.items():
        missing = {"dataset", "segmenter", "split", "resolution"} - set(protocol)
        if missing:
            _fail(path, f"protocol {pid!r} lacks {sorted(missing)}")
    rows = []
    for i, table in enumerate(doc.get("tables") or []):
        source = table.get("source") or {}
        where = f"{path}: tables[{i}] ({source.get('paper')} Table {source.get('table')})"
        if table.get("protocol") not in protocols:
            _fail(where, f"unknown protocol {table.get('protocol')!r}")
        columns = table.get("columns") or []
        unknown = [c for c in columns if c not in metrics]
        if unknown or not columns:
            _fail(where, f"columns {unknown or columns} are not defined under 'metrics'")
        text = dict(protocols[table["protocol"]])
        protocol = {"reported_by": paper["id"], "id": table["protocol"], **text,
                    "dataset": canonical_dataset(text["dataset"]), "segmenter": canonical_name(text["segmenter"])}
        tag = str(source.get("table"))
        for entry in table.get("rows") or []:
            if not entry.get("generator") or not entry.get("label"):
                _fail(where, "every row needs 'generator' and 'label'")
            kind = entry.get("kind", "generator")
            if kind not in KINDS:
                _fail(where, f"row {entry['label']}: kind {kind!r} is not one of {sorted(KINDS)}")
            row = Row(generator=canonical_name(entry["generator"]), label=str(entry["label"]), origin="reported",
                      protocol=protocol, kind=kind, proposed=bool(entry.get("proposed")))
            cells = {**(entry.get("categories") or {}), **({"mean": entry["mean"]} if "mean" in entry else {})}
            for cell, values in cells.items():
                if not isinstance(values, list) or len(values) != len(columns):
                    _fail(where, f"row {entry['label']}, {cell}: expected {len(columns)} values {columns}")
                for metric, value in zip(columns, values):
                    if value is None:
                        continue
                    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                        _fail(where, f"row {entry['label']}, {cell}, {metric}: {value!r} is not a percentage")
                    row.values.setdefault(metric, {})[str(cell)] = value / 100
                    row.sources.setdefault(metric, [])
                    if tag not in row.sources[metric]:
                        row.sources[metric].append(tag)
            note = entry.get("note")
            scoped = note if isinstance(note, dict) else {None: note} if note else {}
            for metric, text in scoped.items():
                if metric is not None and metric not in columns:
                    _fail(where, f"row {entry['label']}: note for {metric!r}, which is not a column")
                row.notes[(tag, metric)] = str(text)
            rows.append(row)
    by_protocol: dict[str, list[Row]] = {}
    for row in rows:
        by_protocol.setdefault(row.protocol["id"], []).append(row)
    for group in by_protocol.values():  # what the protocol legend quotes, same for all its rows
        used = sorted({m for r in group for m in r.values}, key=metric_order)
        tables = sorted({t for r in group for ts in r.sources.values() for t in ts}, key=lambda t: (len(t), t))
        extra = {"paper": (doc["tables"][0].get("source") or {}).get("paper", paper["id"]),
                 "tables": ("Table " if len(tables) == 1 else "Tables ") + ", ".join(tables),
                 "metric_definitions": {m: {"printed": str(metrics[m].get("printed", m)),
                                            "definition": str(metrics[m].get("definition", "not stated"))}
                                        for m in used}}
        for row in group:
            row.protocol = {**row.protocol, **extra}
    return rows


def merge_rows(rows: list[Row]) -> list[Row]:
    """One row per (protocol, generator): a paper's tables that share a protocol become one row."""
    merged: dict[tuple[str, str], Row] = {}
    for row in rows:
        into = merged.setdefault((row.key, row.generator), row)
        if into is row:
            continue
        for metric, cells in row.values.items():
            for cell, value in cells.items():
                old = into.values.setdefault(metric, {}).setdefault(cell, value)
                if abs(old - value) > 1e-9:
                    raise BenchError(f"{row.protocol['reported_by']}: {row.label} {cell} {metric} is "
                                     f"{100 * old:g} in one table and {100 * value:g} in another")
            for tag in row.sources.get(metric, []):
                if tag not in into.sources.setdefault(metric, []):
                    into.sources[metric].append(tag)
        into.notes.update(row.notes)
        into.proposed |= row.proposed
    return list(merged.values())


def load_reported(directory: Path) -> list[Row]:
    """Rows from every leaderboards/reported/*.yaml (values converted from percent to fractions)."""
    rows = []
    for path in sorted(Path(directory).glob("*.yaml")):
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise BenchError(f"{path}: not valid YAML ({exc})") from None
        rows += _paper_rows(doc, path)
    return merge_rows(rows)


# ------------------------------------------------------------------------------- the tables

def metric_order(metric: str):
    names = list(METRIC_NAMES)
    return (names.index(metric), "") if metric in names else (len(names), metric)


def dataset_order(dataset: str):
    names = list(DATASET_NAMES)
    return (names.index(dataset), "") if dataset in names else (len(names), dataset)


@dataclass
class Section:
    """One table: a dataset and a metric; rows grouped by protocol key, best values per group."""

    dataset: str
    metric: str
    categories: list[str]
    groups: list[tuple[str, list[Row]]]
    best: dict[tuple[str, str], float]  # (protocol key, cell) -> best value of the group
    uneven_mean: set[int]  # ids of rows whose mean covers other categories than its group's

    @property
    def title(self) -> str:
        return f"{DATASET_NAMES.get(self.dataset, self.dataset)} · {METRIC_NAMES.get(self.metric, self.metric)}"


@dataclass
class Leaderboard:
    sections: list[Section]
    protocol_ids: dict[str, str]  # protocol key -> "P1"
    protocols: dict[str, dict]


def build(rows: list[Row], dataset: str | None = None, segmenter: str | None = None,
          metrics: list[str] | None = None) -> Leaderboard:
    """Filter rows and lay them out as one section per (dataset, metric)."""
    if dataset:
        rows = [r for r in rows if r.dataset == canonical_dataset(dataset)]
    if segmenter:
        rows = [r for r in rows if r.segmenter == canonical_name(segmenter)]
    wanted = {canonical_metric(m) for m in metrics} if metrics else None
    protocols: dict[str, dict] = {}  # reproduced first (by dataset, then description), reported in file order
    reproduced = sorted((r for r in rows if r.origin == "reproduced"),
                        key=lambda r: (dataset_order(r.dataset), describe_protocol(r.protocol), r.key))
    for row in [*reproduced, *(r for r in rows if r.origin == "reported")]:
        protocols.setdefault(row.key, row.protocol)
    ids = {key: f"P{i + 1}" for i, key in enumerate(protocols)}
    pairs = sorted({(r.dataset, m) for r in rows for m in r.values if wanted is None or m in wanted},
                   key=lambda p: (dataset_order(p[0]), metric_order(p[1])))
    sections = []
    for ds, metric in pairs:
        members = [r for r in rows if r.dataset == ds and r.values.get(metric)]
        groups = []
        for key in ids:
            group = [r for r in members if r.key == key]
            if group:
                group.sort(key=lambda r: (-r.values[metric].get("mean", -1.0), r.label))
                groups.append((key, group))
        categories = sorted({c for r in members for c in r.values[metric]} - {"mean"})
        best, uneven = {}, set()
        for key, group in groups:
            for cell in [*categories, "mean"]:
                values = [round(100 * r.values[metric][cell], 2) for r in group if cell in r.values[metric]]
                if len(values) >= 2:
                    best[(key, cell)] = max(values)
            spans = {r.mean_over for r in group if r.mean_over and "mean" in r.values[metric]}
            if len(spans) > 1:
                uneven |= {id(r) for r in group if r.mean_over and "mean" in r.values[metric]}
        sections.append(Section(ds, metric, categories, groups, best, uneven))
    used = {key for s in sections for key, _ in s.groups}
    return Leaderboard(sections, {k: v for k, v in ids.items() if k in used},
                       {k: v for k, v in protocols.items() if k in used})


@dataclass
class Cell:
    text: str
    bold: bool = False
    href: str | None = None
    after: str = ""  # plain text after the (linked) text


def table_cells(board: Leaderboard, section: Section, link_dir: Path | None) -> list[list[Cell]]:
    """The rendered rows of one section: Generator, Source, Protocol, categories..., Mean."""
    out = []
    for key, group in section.groups:
        pid = board.protocol_ids[key]
        for row in group:
            label = row.label + KINDS[row.kind]
            if row.origin == "reported":
                tables = row.sources.get(section.metric, [])
                paper = row.protocol["paper"]
                source = Cell(f"reported: {paper} " + ("Table " if len(tables) == 1 else "Tables ") + ", ".join(tables)
                              + (" (own method)" if row.proposed else ""))
            else:
                run = row.run
                where = run["where"]
                if link_dir is not None and not where.startswith(("http://", "https://")):
                    where = os.path.relpath(Path(where).resolve(), Path(link_dir).resolve())
                versions = ", ".join(f"{k} {v}" for k, v in sorted(run["versions"].items(), key=lambda kv: kv[0] != "sias_bench"))
                source = Cell(f"reproduced: run {run['config_hash'][:8] or run['id']}", href=where.replace(os.sep, "/"),
                              after=f" · {run['time'][:10]}" + (f" · {versions}" if versions else ""))
            cells = [Cell(label), source, Cell(pid, href=f"#{pid.lower()}")]
            for cell in [*section.categories, "mean"]:
                value = row.values[section.metric].get(cell)
                text = percent(value)
                bold = value is not None and section.best.get((key, cell)) == round(100 * value, 2)
                if cell == "mean" and id(row) in section.uneven_mean:
                    text += "‡"
                cells.append(Cell(text, bold=bold))
            out.append(cells)
    return out


def section_notes(board: Leaderboard, section: Section) -> list[str]:
    notes = []
    for key, group in section.groups:
        for row in group:
            for tag in row.sources.get(section.metric, []):
                note = row.notes.get((tag, section.metric)) or row.notes.get((tag, None))
                if note:
                    notes.append(f"{row.label} ({row.protocol['paper']} Table {tag}): {note}")
            if id(row) in section.uneven_mean:
                notes.append(f"‡ {row.label} [{board.protocol_ids[key]}]: mean over {', '.join(row.mean_over)}, "
                             "a different category set than other runs of its protocol")
    return notes


# ------------------------------------------------------------------------------- renderers

INTRO = ("Values are percentages. Rows are comparable only within one protocol: each table groups its rows "
         "by protocol (column *Protocol*, described under [Protocols](#protocols)) and **bold** marks the "
         "best value of a column within its protocol group. *Reported* rows are the numbers the papers "
         "published (leaderboards/reported/*.yaml, transcribed from the papers' tables), each under the protocol "
         "its paper describes; *reproduced* rows are runs of this benchmark (leaderboards/results/). "
         "A paper's Average row is its mean over all categories of the dataset; category columns show "
         "only the categories a source gives.")


def _md_cell(cell: Cell) -> str:
    text = cell.text.replace("|", "\\|")
    text = f"[{text}]({cell.href})" if cell.href else text
    text = f"**{text}**" if cell.bold else text
    return text + cell.after.replace("|", "\\|")


def render_markdown(board: Leaderboard, link_dir: Path | None = None, title: str = README_TITLE,
                    preamble: str = "") -> str:
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble, ""]
    lines += [INTRO, ""]
    dataset = None
    for section in board.sections:
        if section.dataset != dataset:
            dataset = section.dataset
            lines += [f"## {DATASET_NAMES.get(dataset, dataset)}", ""]
        lines += [f"### {section.title}", ""]
        header = ["Generator", "Source", "Protocol", *section.categories, "Mean"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join([":--"] * 3 + ["--:"] * (len(header) - 3)) + "|")
        for cells in table_cells(board, section, link_dir):
            lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        lines.append("")
        legend = [f"{board.protocol_ids[key]}: {short_protocol(board.protocols[key])}" for key, _ in section.groups]
        lines += ["Protocols: " + "; ".join(legend) + ".", ""]
        lines += [f"- {note}" for note in section_notes(board, section)]
        if section_notes(board, section):
            lines.append("")
    lines += ["## Protocols", ""]
    for key, pid in board.protocol_ids.items():
        headline, details = describe_protocol(board.protocols[key])
        lines += [f'<a id="{pid.lower()}"></a>**{pid}** {headline} (key `{key}`)', ""]
        lines += [f"- {name}: {text}" for name, text in details] + [""]
    return "\n".join(lines).rstrip() + "\n"


def bar_chart(board: Leaderboard, section: Section) -> str | None:
    """Mean per row as a horizontal bar chart, one colour per protocol, reported rows hatched;
    a base64 PNG (Agg canvas, no pyplot state), or None when no row has a mean."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    bars = [(f"{row.label} [{board.protocol_ids[key]}]", 100 * row.values[section.metric]["mean"], key, row.origin)
            for key, group in section.groups for row in group if "mean" in row.values[section.metric]]
    if not bars:
        return None
    keys = list(board.protocol_ids)
    fig = Figure(figsize=(7, 0.32 * len(bars) + 1.2), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = [f"C{keys.index(key) % 10}" for _, _, key, _ in bars]
    positions = list(range(len(bars)))[::-1]
    ax.barh(positions, [b[1] for b in bars], color=colours, edgecolor="black", linewidth=0.5)
    for pos, (_, value, _, origin), patch in zip(positions, bars, ax.patches):
        if origin == "reported":
            patch.set_hatch("//")
        ax.text(value + 0.5, pos, f"{value:.2f}", va="center", fontsize=7)
    ax.set_yticks(positions, [b[0] for b in bars], fontsize=7)
    ax.set_xlim(0, 105)
    ax.set_xlabel(f"{METRIC_NAMES.get(section.metric, section.metric)}, mean (%)", fontsize=8)
    ax.set_title(section.title, fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(handles=[Patch(facecolor="white", edgecolor="black", label="reproduced"),
                       Patch(facecolor="white", edgecolor="black", hatch="//", label="reported")],
              fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode()


def _html_cell(cell: Cell, tag: str = "td") -> str:
    text = html.escape(cell.text)
    text = f'<a href="{html.escape(cell.href)}">{text}</a>' if cell.href else text
    text = f"<b>{text}</b>" if cell.bold else text
    return f"<{tag}>{text}{html.escape(cell.after)}</{tag}>"


def render_html(board: Leaderboard, link_dir: Path | None = None, title: str = README_TITLE) -> str:
    style = ("body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}td:nth-child(n+4){text-align:right}"
             "th{background:#f3f3f3}p.small,li{font-size:12px}")
    out = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
           f"<style>{style}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
           "<p>" + html.escape(INTRO).replace("**bold**", "<b>bold</b>") + "</p>"]
    for section in board.sections:
        out.append(f"<h2>{html.escape(section.title)}</h2><table>")
        header = ["Generator", "Source", "Protocol", *section.categories, "Mean"]
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        for cells in table_cells(board, section, link_dir):
            out.append("<tr>" + "".join(_html_cell(c) for c in cells) + "</tr>")
        out.append("</table>")
        notes = section_notes(board, section)
        if notes:
            out.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
        chart = bar_chart(board, section)
        if chart:
            out.append(f'<img alt="{html.escape(section.title)}" src="data:image/png;base64,{chart}">')
    out.append('<h2 id="protocols">Protocols</h2><dl>')
    for key, pid in board.protocol_ids.items():
        headline, details = describe_protocol(board.protocols[key])
        out.append(f'<dt id="{pid.lower()}"><b>{pid}</b> {html.escape(headline)} <code>{key}</code></dt><dd><ul>'
                   + "".join(f"<li>{html.escape(n)}: {html.escape(t)}</li>" for n, t in details) + "</ul></dd>")
    out.append("</dl></body></html>")
    return "\n".join(out) + "\n"


def print_rich(board: Leaderboard, console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    for section in board.sections:
        table = Table(title=section.title, title_justify="left")
        for name in ["Generator", "Source", "Protocol", *section.categories, "Mean"]:
            table.add_column(name, justify="right" if name not in ("Generator", "Source", "Protocol") else "left")
        for cells in table_cells(board, section, None):
            table.add_row(*[Text(c.text + c.after, style="bold" if c.bold else "") for c in cells])
        console.print(table)
    for key, pid in board.protocol_ids.items():
        headline, details = describe_protocol(board.protocols[key])
        console.print(Text(f"{pid}: {headline}", style="bold"))
        for name, text in details:
            console.print(Text(f"    {name}: {text}"), highlight=False)


def write_if_changed(path: Path, text: str) -> bool:
    path = Path(path)
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


# -------------------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="only this dataset (e.g. mvtec_ad, visa, btad, demo)")
    parser.add_argument("--segmenter", help="only this segmenter (e.g. unet, bisenetv2, segformer)")
    parser.add_argument("--metric", action="append", metavar="M",
                        help="only this metric, a results.json path such as pixel.ap or miou (repeatable)")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="write markdown to FILE (an HTML page instead if FILE ends in .html)")
    parser.add_argument("--html", type=Path, metavar="FILE", help="also write the HTML page with bar charts")
    parser.add_argument("--readme", action="store_true",
                        help="regenerate <dir>/README.md from all reported and accepted rows")
    parser.add_argument("--dir", type=Path, default=LEADERBOARD_DIR,
                        help="leaderboards folder holding reported/ and results/ (default: %(default)s)")
    parser.add_argument("--results", type=Path, action="append", default=[], metavar="PATH",
                        help="extra results.json files or run folders to include (repeatable)")
    parser.add_argument("--no-reported", action="store_true", help="leave out the papers' reported rows")
    parser.add_argument("--wandb", metavar="PROJECT", help="also read runs from this W&B project (online only)")


def load_rows(args) -> list[Row]:
    accepted = args.dir / "results"
    reproduced = load_reproduced([*([accepted] if accepted.is_dir() else []), *args.results])
    if args.wandb:
        reproduced += load_wandb(args.wandb)
    reported = load_reported(args.dir / "reported")
    names = {r.generator: (r.label, r.kind) for r in reported}  # the papers' spelling of a method
    for row in reproduced:
        row.label, row.kind = names.get(row.generator, (row.label, "real_only" if row.generator == "realonly" else "generator"))
    return newest_per_generator(reproduced) + ([] if args.no_reported else reported)


def readme_text(board: Leaderboard, directory: Path) -> str:
    """leaderboards/README.md: a pure function of the data, so re-running it changes nothing."""
    preamble = ("Generated by `bench leaderboard --readme` from `reported/*.yaml` (numbers the papers "
                "published) and `results/` (accepted runs); do not edit by hand.")
    return render_markdown(board, link_dir=directory, preamble=preamble)


def run(args) -> int:
    if args.readme and (args.dataset or args.segmenter or args.metric or args.no_reported or args.results or args.wandb):
        raise BenchError("--readme renders the whole committed leaderboard; drop the filters and extra sources")
    board = build(load_rows(args), args.dataset, args.segmenter, args.metric)
    if not board.sections:
        raise BenchError("no leaderboard rows match the filters "
                         f"(dataset={args.dataset}, segmenter={args.segmenter}, metric={args.metric})")
    if args.readme:
        path = args.dir / "README.md"
        changed = write_if_changed(path, readme_text(board, args.dir))
        print(f"{path}: {'updated' if changed else 'unchanged'}")
        return 0
    written = False
    for target, as_html in ((args.out, args.out and args.out.suffix == ".html"), (args.html, True)):
        if target:
            text = render_html(board, target.parent) if as_html else render_markdown(board, target.parent)
            write_if_changed(target, text)
            print(f"wrote {target}")
            written = True
    if not written:
        print_rich(board)
    return 0
