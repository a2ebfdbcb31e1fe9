"""Metric tables for people and for scripts: rich tables that fit the terminal, Markdown and CSV.

A table is rows of labelled cells under metric columns; each column belongs to a group (image,
pixel, segmentation). Too wide for the terminal, it is split into several tables, whole groups
first and a group column by column only when it alone does not fit, each repeating the row
labels, so no cell is ever cut.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

FORMATS = ("table", "md", "csv", "json")


@dataclass
class Column:
    key: str
    header: str
    group: str = ""


@dataclass
class MetricTable:
    title: str
    label: str  # header of the row-label column ("category")
    columns: list[Column]
    rows: list[tuple[str, dict[str, str]]]  # (label, {column key: cell text, rich markup allowed})
    bold: set[str] = field(default_factory=set)  # labels of rows shown bold, after a separator (mean)

    def rich_tables(self, width: int) -> list:
        """rich Tables, each at most `width` columns wide."""
        from rich.console import Console
        from rich.measure import Measurement

        wide = Console(width=10_000)  # a measurement is clamped to the console's width: measure unclamped

        def fits(columns: list[Column]) -> bool:
            return Measurement.get(wide, wide.options, self._rich(columns, "")).maximum <= width

        if fits(self.columns):
            return [self._rich(self.columns, self.title)]
        chunks: list[list[Column]] = []
        for group in self._groups():
            if chunks and fits(chunks[-1] + group):
                chunks[-1] += group
            else:  # a new table: the whole group if it fits, else as many of its columns as fit, in order
                for column in group:
                    if chunks and chunks[-1][-1].group == column.group and fits(chunks[-1] + [column]):
                        chunks[-1].append(column)
                    else:
                        chunks.append([column])
        return [self._rich(chunk, f"{self.title} ({i}/{len(chunks)}: {self._group_names(chunk)})")
                for i, chunk in enumerate(chunks, 1)]

    def markdown(self) -> str:
        header = [self.label, *(c.header for c in self.columns)]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * len(self.columns)) + "|"]
        for label, cells in self.rows:
            shown = f"**{label}**" if label in self.bold else label
            lines.append("| " + " | ".join([shown, *(_plain(cells.get(c.key, "")) for c in self.columns)]) + " |")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([self.label, *(c.key for c in self.columns)])
        for label, cells in self.rows:
            writer.writerow([label, *(_plain(cells.get(c.key, "")) for c in self.columns)])
        return buf.getvalue()

    def _groups(self) -> list[list[Column]]:
        groups: list[list[Column]] = []
        for column in self.columns:
            if groups and groups[-1][0].group == column.group:
                groups[-1].append(column)
            else:
                groups.append([column])
        return groups

    @staticmethod
    def _group_names(columns: list[Column]) -> str:
        return ", ".join(dict.fromkeys(c.group or c.header for c in columns))

    def _rich(self, columns: list[Column], title: str):
        from rich.table import Table

        table = Table(title=title or None)
        table.add_column(self.label, no_wrap=True)
        for c in columns:
            table.add_column(c.header, justify="right", no_wrap=True)
        for label, cells in self.rows:
            if label in self.bold:
                table.add_section()
            table.add_row(label, *(cells.get(c.key, "") for c in columns), style="bold" if label in self.bold else None)
        return table


def _plain(text: str) -> str:
    """Cell text without rich markup (md and csv are for scripts and documents)."""
    from rich.text import Text

    return Text.from_markup(text).plain


def print_tables(table: MetricTable, console) -> None:
    for t in table.rich_tables(console.width):
        console.print(t)


def output_console(width: int | None = None):
    """The console tables are printed to: the terminal's width; in a pipe or log (no terminal)
    $COLUMNS if set, else 160, so logs keep whole tables (scripts should use --format)."""
    import os

    from rich.console import Console

    console = Console(width=width)
    if width is None and not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)
    return console
