"""Reported rows: the numbers papers published, from data/reported/*.yaml, checked by a schema.

The schema below is the file format (the header comment of each YAML file explains it in words).
A file that does not fit fails with one line naming the file, the field (tables[2].rows[0].mean[1])
with its paper table and row, what is wrong and how to fix it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from benchmark.errors import BenchError
from benchmark.metrics.options import DEPENDS_ON, RESULT_KEYS, MetricOptions
from benchmark.leaderboard.rows import KINDS, Row, canonical_dataset, canonical_name, metric_order

# strict: YAML `true` or "12" is not a number; ints are accepted as floats
Percent = Annotated[float, Field(strict=True, ge=0, le=100)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Paper(_Strict):
    id: str = Field(min_length=1, description="lowercase short name, owner of the protocols")
    title: str
    notes: str | None = None


class MetricDefinition(_Strict):
    printed: str  # the column header as printed in the paper: the column's label
    definition: str  # what the paper meant by it
    # engine options the paper (or its code, [EXT]) pins for this number, e.g. {pixel_score: logit};
    # a reproduced number shares its column only if its run used the same values
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _options_are_engine_options(self):
        try:
            MetricOptions(**self.options)
        except (BenchError, TypeError) as exc:
            raise ValueError(f"options {self.options}: {exc}") from None
        return self


class ReportedProtocol(_Strict):
    """A protocol as the paper describes it; dataset and segmenter are canonical ids."""

    dataset: str
    segmenter: str
    split: str
    resolution: str
    variant: str | None = None  # short tag shown in tables
    segmenter_training: str | None = None
    synthetic_data: str | None = None
    notes: str | None = None


class Source(_Strict):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)  # `table: 22` means "22"

    paper: str
    table: str


class ReportedRow(_Strict):
    generator: str = Field(min_length=1)  # canonical id, lowercase alphanumeric
    label: str = Field(min_length=1)  # the method's name as printed
    kind: Literal[tuple(KINDS)] = "generator"  # type: ignore[valid-type]  # one list of row kinds
    proposed: bool = False  # the paper's own method
    mean: list[Percent | None] | None = None  # the paper's Average row, over all its categories
    categories: dict[str, list[Percent | None]] = Field(default_factory=dict)
    note: str | dict[str, str] | None = None  # text, or {metric key: text}


class ReportedTable(_Strict):
    source: Source
    protocol: str
    columns: list[str] = Field(min_length=1)
    rows: list[ReportedRow]

    @model_validator(mode="after")
    def _rows_fit_the_columns(self):
        n = len(self.columns)
        for i, row in enumerate(self.rows):
            cells = {**({"mean": row.mean} if row.mean is not None else {}), **row.categories}
            if not cells:
                raise ValueError(f"rows[{i}] ({row.label}) has no values; give 'mean' and/or 'categories'")
            for cell, values in cells.items():
                if len(values) != n:
                    raise ValueError(f"rows[{i}] ({row.label}), {cell}: expected {n} values {self.columns}, "
                                     f"got {len(values)}; use null for a value the paper does not give")
            if isinstance(row.note, dict):
                stray = sorted(set(row.note) - set(self.columns))
                if stray:
                    raise ValueError(f"rows[{i}] ({row.label}): note for {stray}, which is not a column "
                                     f"{self.columns}")
        return self


class ReportedFile(_Strict):
    schema_version: Literal[1] = Field(alias="schema")
    units: Literal["percent"]
    paper: Paper
    metrics: dict[str, MetricDefinition]
    protocols: dict[str, ReportedProtocol]
    tables: list[ReportedTable] = Field(min_length=1)

    @model_validator(mode="after")
    def _tables_name_known_protocols_and_metrics(self):
        for i, table in enumerate(self.tables):
            where = f"tables[{i}] ({table.source.paper} Table {table.source.table})"
            if table.protocol not in self.protocols:
                raise ValueError(f"{where}: unknown protocol {table.protocol!r}; define it under 'protocols' "
                                 f"(defined: {sorted(self.protocols)})")
            unknown = [c for c in table.columns if c not in self.metrics]
            if unknown:
                raise ValueError(f"{where}: columns {unknown} are not defined under 'metrics'")
        for key, definition in self.metrics.items():
            if key not in RESULT_KEYS:
                raise ValueError(f"metrics.{key} (printed {definition.printed!r}) is not a metric the engine "
                                 f"computes; file each column under the key whose definition it matches "
                                 f"({', '.join(RESULT_KEYS)}), with the printed name as 'printed'")
            stray = sorted(set(definition.options) - set(DEPENDS_ON[key]))
            if stray:
                raise ValueError(f"metrics.{key}.options: {stray} do not change {key}; "
                                 f"it depends on {list(DEPENDS_ON[key])}")
        return self


FIXES = {  # pydantic error type -> how to fix it
    "missing": "add it",
    "extra_forbidden": "remove it or fix its spelling (the schema is in benchmark/leaderboard/reported.py)",
    "greater_than_equal": "values are percentages in [0, 100] as printed in the paper, null where not given",
    "less_than_equal": "values are percentages in [0, 100] as printed in the paper, null where not given",
    "float_type": "values are percentages (numbers) as printed in the paper, null where not given",
    "literal_error": "use one of the values listed",
    "list_type": "give a list in column order",
    "string_type": "quote it: this field is text",
}


def _location(doc, loc: tuple) -> str:
    """tables[2].rows[0].mean[1] (SeaS Table 22, row DFMGAN) from a pydantic error location."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    context = []
    try:
        if loc[:1] == ("tables",) and isinstance(loc[1], int):
            source = doc["tables"][loc[1]].get("source") or {}
            context.append(f"{source.get('paper')} Table {source.get('table')}")
            if loc[2:3] == ("rows",) and isinstance(loc[3], int):
                context.append(f"row {doc['tables'][loc[1]]['rows'][loc[3]].get('label')}")
    except (LookupError, TypeError, AttributeError):
        pass
    return text + (f" ({', '.join(context)})" if context else "")


def validate_reported(doc, path: Path) -> ReportedFile:
    """The parsed file, or a one-line BenchError: file, field, what is wrong, the fix."""
    if not isinstance(doc, dict):
        raise BenchError(f"{path}: expected a mapping with schema, units, paper, metrics, protocols, tables")
    try:
        return ReportedFile.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        where = _location(doc, tuple(first["loc"]))
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] in {"greater_than_equal", "less_than_equal", "float_type"}:
            message = f"{first['input']!r} is not a percentage"
        fix = FIXES.get(first["type"])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BenchError(f"{path}: {where + ': ' if where else ''}{message}" + (f"; {fix}" if fix else "") + more) from None


def _paper_rows(parsed: ReportedFile) -> list[Row]:
    rows = []
    for table in parsed.tables:
        text = parsed.protocols[table.protocol].model_dump(exclude_none=True)
        protocol = {"reported_by": parsed.paper.id, "id": table.protocol, **text,
                    "dataset": canonical_dataset(text["dataset"]), "segmenter": canonical_name(text["segmenter"])}
        tag = table.source.table
        for entry in table.rows:
            row = Row(generator=canonical_name(entry.generator), label=entry.label, origin="reported",
                      protocol=protocol, kind=entry.kind, proposed=entry.proposed)
            cells = {**entry.categories, **({"mean": entry.mean} if entry.mean is not None else {})}
            for cell, values in cells.items():
                for metric, value in zip(table.columns, values):
                    if value is None:
                        continue
                    row.values.setdefault(metric, {})[str(cell)] = value / 100
                    row.sources.setdefault(metric, [])
                    if tag not in row.sources[metric]:
                        row.sources[metric].append(tag)
            scoped = entry.note if isinstance(entry.note, dict) else {None: entry.note} if entry.note else {}
            for metric, note in scoped.items():
                row.notes[(tag, metric)] = note
            rows.append(row)
    by_protocol: dict[str, list[Row]] = {}
    for row in rows:
        by_protocol.setdefault(row.protocol["id"], []).append(row)
    for group in by_protocol.values():  # what the protocol legend quotes, same for all its rows
        used = sorted({m for r in group for m in r.values}, key=metric_order)
        tables = sorted({t for r in group for ts in r.sources.values() for t in ts}, key=lambda t: (len(t), t))
        extra = {"paper": parsed.tables[0].source.paper,
                 "tables": ("Table " if len(tables) == 1 else "Tables ") + ", ".join(tables),
                 "metric_definitions": {m: parsed.metrics[m].model_dump(exclude_defaults=True) for m in used}}
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
                                     f"{100 * old:g} in one table and {100 * value:g} in another; "
                                     "fix the transcription of one of them")
            for tag in row.sources.get(metric, []):
                if tag not in into.sources.setdefault(metric, []):
                    into.sources[metric].append(tag)
        into.notes.update(row.notes)
        into.proposed |= row.proposed
    return list(merged.values())


def load_reported(directory: Path) -> list[Row]:
    """Rows from every *.yaml of `directory` (values converted from percent to fractions)."""
    rows = []
    for path in sorted(Path(directory).glob("*.yaml")):
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise BenchError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
        rows += _paper_rows(validate_reported(doc, path))
    return merge_rows(rows)

