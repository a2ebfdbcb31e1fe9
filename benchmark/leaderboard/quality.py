"""The generation-quality part of the leaderboard: IS and IC-LPIPS the papers reported
(data/quality/*.yaml) beside the numbers runs reproduced (results.json `quality`, written by
`bench run --set quality.enabled=true`; docs/quality.md).

Quality rows stand apart from the segmentation sections: they do not depend on the segmenter,
so they are grouped by dataset only, and they are not percentages (IS is a score >= 1, IC-LPIPS
a mean LPIPS distance). A reproduced row computed with random-test features says NOT COMPARABLE
in every cell that shows it.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from benchmark.errors import BenchError
from benchmark.leaderboard.rows import DATASET_NAMES, canonical_dataset, canonical_name, dataset_order
from benchmark.quality.options import METRICS

COLUMNS = {"is": "IS ↑", "ic_lpips": "IC-LPIPS ↑", "ic_lpips_anomaly": "IC-LPIPS(a) ↑"}  # shown, in order
NOT_COMPARABLE = "NOT COMPARABLE (random-test features)"
TITLE = "Generation quality"
INTRO = ("IS and IC-LPIPS of the synthetic sets (higher is better for both; docs/quality.md). Reported rows "
         "are the papers' Average rows; reproduced rows are runs made with `--set quality.enabled=true`, "
         "their mean over the categories they ran. Rows of different datasets or protocols are not comparable.")

Value = Annotated[float, Field(strict=True, ge=0)]  # strict: YAML `true` or "1.5" is not a number


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Paper(_Strict):
    id: str = Field(min_length=1)
    title: str


class _Metric(_Strict):
    printed: str
    definition: str


class _Source(_Strict):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
    paper: str
    table: str


class _Row(_Strict):
    generator: str = Field(min_length=1)
    label: str = Field(min_length=1)
    proposed: bool = False
    mean: list[Value | None] | None = None
    categories: dict[str, list[Value | None]] = Field(default_factory=dict)
    note: str | None = None


class _Table(_Strict):
    source: _Source
    dataset: str
    columns: list[str] = Field(min_length=1)
    note: str | None = None
    rows: list[_Row]

    @model_validator(mode="after")
    def _rows_fit_the_columns(self):
        for i, row in enumerate(self.rows):
            for cell, values in {**({"mean": row.mean} if row.mean is not None else {}), **row.categories}.items():
                if len(values) != len(self.columns):
                    raise ValueError(f"rows[{i}] ({row.label}), {cell}: expected {len(self.columns)} values "
                                     f"{self.columns}, got {len(values)}; use null for a value not given")
        return self


class _File(_Strict):
    schema_version: Literal[1] = Field(alias="schema")
    paper: _Paper
    metrics: dict[str, _Metric]
    protocol: str
    tables: list[_Table] = Field(min_length=1)

    @model_validator(mode="after")
    def _known_metrics(self):
        for key in self.metrics:
            if key not in METRICS:
                raise ValueError(f"metrics.{key} is not a metric of `bench quality` (known: {', '.join(METRICS)})")
        for i, table in enumerate(self.tables):
            unknown = [c for c in table.columns if c not in self.metrics]
            if unknown:
                raise ValueError(f"tables[{i}] ({table.source.paper} Table {table.source.table}): columns "
                                 f"{unknown} are not defined under 'metrics'")
        return self


@dataclass
class QualityRow:
    """One generator's quality numbers on one dataset: values[metric][category or 'mean']."""

    generator: str
    label: str
    origin: str  # "reported" | "reproduced"
    dataset: str
    source: str  # "SeaS Table 19", or the run's results.json
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    proposed: bool = False
    comparable: bool = True  # False: random-test features
    protocol: str = ""
    notes: list[str] = field(default_factory=list)  # about this row
    table_notes: list[str] = field(default_factory=list)  # about its paper table, shown under the table
    mean_over: tuple[str, ...] = ()  # reproduced: the categories behind the mean


def load_reported_quality(directory: Path) -> list[QualityRow]:
    """Rows from every *.yaml of `directory` (none when it does not exist); a file that does not
    fit the schema fails with one line naming the file and the field."""
    rows = []
    for path in sorted(Path(directory).glob("*.yaml")):
        try:
            parsed = _File.model_validate(yaml.safe_load(path.read_text()))
        except yaml.YAMLError as exc:
            raise BenchError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise BenchError(f"{path}: {where + ': ' if where else ''}{first['msg'].removeprefix('Value error, ')}"
                             " (the schema is in the file's header)") from None
        for table in parsed.tables:
            for entry in table.rows:
                row = QualityRow(canonical_name(entry.generator), entry.label, "reported",
                                 canonical_dataset(table.dataset), f"{table.source.paper} Table {table.source.table}",
                                 proposed=entry.proposed, protocol=parsed.protocol,
                                 notes=[entry.note] if entry.note else [],
                                 table_notes=[f"{table.source.paper} Table {table.source.table}: {table.note}"]
                                 if table.note else [])
                cells = {**entry.categories, **({"mean": entry.mean} if entry.mean is not None else {})}
                for cell, values in cells.items():
                    for metric, value in zip(table.columns, values):
                        if value is not None:
                            row.values.setdefault(metric, {})[str(cell)] = float(value)
                rows.append(row)
    return rows


def row_from_results(results: dict, where: str) -> QualityRow | None:
    """The reproduced quality row of a results.json, or None when the run computed none."""
    quality = results.get("quality")
    if not isinstance(quality, dict) or not isinstance(quality.get("categories"), dict):
        return None
    config = results.get("config") or {}
    generator = (config.get("generator") or {}).get("name") or "?"
    dataset = canonical_dataset((config.get("data") or {}).get("name") or "?")
    protocol = quality.get("protocol") or {}
    described = ", ".join(f"{k} {protocol[k]}" for k in ("features", "lpips_net", "image_size", "cluster_cap",
                                                           "small_clusters", "reference") if k in protocol)
    row = QualityRow(canonical_name(generator), str(generator), "reproduced", dataset, where,
                     comparable=bool(quality.get("comparable")), protocol=described,
                     mean_over=tuple(sorted(quality["categories"])))
    blocks = {**{c: e.get("metrics") or {} for c, e in quality["categories"].items()}, "mean": quality.get("mean") or {}}
    for cell, metrics in blocks.items():
        for metric, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row.values.setdefault(metric, {})[str(cell)] = float(value)
    return row


def select(rows: list[QualityRow], dataset: str | None = None, metrics: list[str] | None = None) -> list[QualityRow]:
    """The rows the filters keep: --dataset; --metric keeps the quality part only if it names one
    of its columns (is, ic_lpips, ic_lpips_anomaly)."""
    if metrics and not {m.strip() for m in metrics} & set(COLUMNS):
        return []
    if dataset:
        rows = [r for r in rows if r.dataset == canonical_dataset(dataset)]
    return rows


def _sections(rows: list[QualityRow]) -> list[tuple[str, list[QualityRow]]]:
    """Per dataset (the board's order), reproduced rows first, then reported in file order."""
    datasets = sorted({r.dataset for r in rows}, key=dataset_order)
    return [(ds, [r for r in rows if r.dataset == ds and r.origin == "reproduced"]
             + [r for r in rows if r.dataset == ds and r.origin == "reported"]) for ds in datasets]


def _columns(members: list[QualityRow]) -> list[str]:
    return [m for m in COLUMNS if any(m in r.values for r in members)]


def _cells(row: QualityRow, columns: list[str]) -> list[str]:
    """Generator, source, the means, the notes: plain text (the renderers escape it). Numbers
    from random-test features carry the mark themselves, not only in the notes."""
    if row.origin == "reported":
        source = f"reported: {row.source}" + (" (own method)" if row.proposed else "")
    else:
        where = Path(row.source)
        shown = where.parent.name if where.name == "results.json" else where.name
        source = f"run {shown}"
    means = [_number(row.values.get(m, {}).get("mean")) + ("" if row.comparable else " (not comparable)")
             for m in columns]
    note = []
    if not row.comparable:
        note.append(NOT_COMPARABLE)
    if row.origin == "reproduced":
        note.append(f"mean over {', '.join(row.mean_over)}; {row.protocol}")
    return [row.label, source, *means, "; ".join([*note, *row.notes])]


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}" if value >= 0.1 or value == 0 else f"{value:.3g}"


def markdown_lines(rows: list[QualityRow]) -> list[str]:
    """The `## Generation quality` part of the Markdown board (nothing without rows)."""
    if not rows:
        return []
    lines = [f"## {TITLE}", "", INTRO, ""]
    for dataset, members in _sections(rows):
        columns = _columns(members)
        lines += [f"### {DATASET_NAMES.get(dataset, dataset)} · IS / IC-LPIPS", ""]
        header = ["Generator", "Source", *(COLUMNS[c] for c in columns), "Notes"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join([":--"] * 2 + ["--:"] * len(columns) + [":--"]) + "|")
        for row in members:
            cells = [c.replace("|", "\\|") for c in _cells(row, columns)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        footnotes = _footnotes(members)
        lines += [f"- {n}" for n in footnotes] + ([""] if footnotes else [])
    return lines


def _footnotes(members: list[QualityRow]) -> list[str]:
    """How each paper computed its numbers, and notes about whole paper tables (once each)."""
    protocols = [f"{r.source.split(' Table')[0]}: {r.protocol}" for r in members if r.origin == "reported"]
    return list(dict.fromkeys([*protocols, *(n for r in members for n in r.table_notes)]))


def html_parts(rows: list[QualityRow]) -> list[str]:
    if not rows:
        return []
    out = [f"<h2 id=\"quality\">{TITLE}</h2>", f"<p>{html.escape(INTRO)}</p>"]
    for dataset, members in _sections(rows):
        columns = _columns(members)
        out.append(f"<h3>{html.escape(DATASET_NAMES.get(dataset, dataset))} · IS / IC-LPIPS</h3><table>")
        header = ["Generator", "Source", *(COLUMNS[c] for c in columns), "Notes"]
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        for row in members:
            cells = _cells(row, columns)
            out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        out.append("</table>")
        footnotes = _footnotes(members)
        if footnotes:
            out.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in footnotes) + "</ul>")
    return out


def print_rich(rows: list[QualityRow], console) -> None:
    from rich.table import Table

    for dataset, members in _sections(rows):
        columns = _columns(members)
        title = f"{TITLE}: {DATASET_NAMES.get(dataset, dataset)} · IS / IC-LPIPS"
        if any(not r.comparable for r in members):
            title += f" (rows marked {NOT_COMPARABLE})"
        table = Table(title=title, title_justify="left")
        for header in ["Generator", "Source", *(COLUMNS[c] for c in columns)]:
            table.add_column(header, justify="left" if header in ("Generator", "Source") else "right")
        table.add_column("Notes", overflow="fold")
        for row in members:
            table.add_row(*_cells(row, columns))
        console.print(table)
        for note in _footnotes(members):
            console.print(f"  {note}", highlight=False, markup=False)
