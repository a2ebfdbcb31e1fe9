"""A `Leaderboard` as Markdown (the committed README), an HTML page with bar charts, or rich tables.

Each table: Generator, Source, Protocol, categories..., Mean. The Source cell stays short (who
measured it, and a link); a reproduced run's details (package versions, settings such as the
binarisation threshold) are in the Runs footnote its R-id links to.
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass
from pathlib import Path

from benchmark.leaderboard.layout import Leaderboard, Section
from benchmark.leaderboard.quality import html_parts, markdown_lines, print_rich as print_quality
from benchmark.leaderboard.protocol import describe_protocol, short_protocol
from benchmark.leaderboard.rows import DATASET_NAMES, KINDS, METRIC_NAMES, Row

README_TITLE = "SIAS-Bench leaderboard"
DATA_PATHS = "benchmark/leaderboard/data"  # where reported/ and results/ live in the repository

INTRO = ("Values are percentages. Rows are comparable only within one protocol: each table groups its rows "
         "by protocol (column *Protocol*, described under [Protocols](#protocols)) and **bold** marks the "
         "best value of a column within its protocol group. *Reported* rows are the numbers the papers "
         f"published (`{DATA_PATHS}/reported/*.yaml`, transcribed from the papers' tables), each under the "
         "protocol its paper describes; *reproduced* rows are runs of this benchmark: *accepted* runs are "
         f"committed (`{DATA_PATHS}/results/`), *added* runs come from `--results` or `--wandb`. "
         "A run's package versions and settings are under [Runs](#runs). "
         "A paper's Average row is its mean over all categories of the dataset; category columns show "
         "only the categories a source gives.")


@dataclass
class Cell:
    parts: list[tuple[str, str | None]]  # (text, link or None), shown one after another
    bold: bool = False

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.parts)


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def run_link(row: Row, link_dir: Path | None) -> str:
    """The run's file relative to link_dir (a W&B URL as it is), with forward slashes."""
    where = row.run["where"]
    if link_dir is not None and not where.startswith(("http://", "https://")):
        where = os.path.relpath(Path(where).resolve(), Path(link_dir).resolve())
    return where.replace(os.sep, "/")


def run_name(row: Row) -> str:
    return f"{'accepted' if row.accepted else 'added'} run {row.run['config_hash'][:8] or row.run['id']}"


def _names_another_metric(printed: str, metric: str) -> bool:
    """A printed header that is another engine metric's name (STAGE's "mIoU" is our pixel IoU)."""
    names = {k: v.removeprefix("pixel ").removeprefix("image ").lower() for k, v in METRIC_NAMES.items()}
    return any(name == printed.lower() for key, name in names.items() if key != metric and names[metric] != name)


def source_cell(board: Leaderboard, row: Row, metric: str, link_dir: Path | None, short: bool = False) -> Cell:
    if row.origin == "reported":
        tables = row.sources.get(metric, [])
        text = f"{row.protocol['paper']} " + ("Table " if len(tables) == 1 else "Tables ") + ", ".join(tables)
        own = " (own)" if short else " (own method)"
        printed = row.protocol["metric_definitions"][metric]["printed"]
        if not short and _names_another_metric(printed, metric):
            text += f' (printed "{printed}")'
        return Cell([(("" if short else "reported: ") + text + (own if row.proposed else ""), None)])
    rid = board.run_ids[row.run["where"]]
    if short:  # the rest is in the run's footnote
        return Cell([(f"{rid} {'accepted' if row.accepted else 'added'}", None)])
    return Cell([(run_name(row), run_link(row, link_dir)), (f" · {row.run['time'][:10]} · ", None),
                 (rid, f"#{rid.lower()}")])


def table_cells(board: Leaderboard, section: Section, link_dir: Path | None, short: bool = False) -> list[list[Cell]]:
    """The rendered rows of one section: Generator, Source, Protocol, categories..., Mean; `short`
    leaves a run's hash, link and date to its footnote (for terminals)."""
    out = []
    for key, group in section.groups:
        pid = board.protocol_ids[key]
        for row in group:
            cells = [Cell([(row.label + KINDS[row.kind], None)]), source_cell(board, row, section.metric, link_dir, short),
                     Cell([(pid, f"#{pid.lower()}")])]
            for cell in [*section.categories, "mean"]:
                value = row.values[section.metric].get(cell)
                text = percent(value)
                bold = value is not None and section.best.get((key, cell)) == round(100 * value, 2)
                if cell == "mean" and id(row) in section.uneven_mean:
                    text += "‡"
                cells.append(Cell([(text, None)], bold=bold))
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


def run_details(row: Row) -> list[tuple[str, str]]:
    """(field, text) of a reproduced run for the Runs footnote."""
    details = [("time", row.run["time"] or "?")]
    for name, cells in sorted(row.settings.items()):
        values = set(cells.values())
        details.append((name, f"{values.pop():g} in every category" if len(values) == 1 else
                        ", ".join(f"{c} {v:.4g}" for c, v in cells.items())))
    versions = row.run["versions"]
    if versions:
        details.append(("packages", ", ".join(f"{k} {v}" for k, v in versions.items())))
    return details


def _md_cell(cell: Cell) -> str:
    text = ""
    for part, href in cell.parts:
        part = part.replace("|", "\\|")
        text += f"[{part}]({href})" if href else part
    return f"**{text}**" if cell.bold else text


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
        notes = section_notes(board, section)
        lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    lines += markdown_lines(board.quality)
    lines += ["## Protocols", ""]
    for key, pid in board.protocol_ids.items():
        headline, details = describe_protocol(board.protocols[key])
        lines += [f'<a id="{pid.lower()}"></a>**{pid}** {headline} (key `{key}`)', ""]
        lines += [f"- {name}: {text}" for name, text in details] + [""]
    if board.runs:
        lines += ["## Runs", ""]
        for rid, row in board.runs.items():
            lines += [f'<a id="{rid.lower()}"></a>**{rid}** {row.label}: [{run_name(row)}]({run_link(row, link_dir)})', ""]
            lines += [f"- {name}: {text}" for name, text in run_details(row)] + [""]
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
    text = "".join(f'<a href="{html.escape(href)}">{html.escape(part)}</a>' if href else html.escape(part)
                   for part, href in cell.parts)
    return f"<{tag}>{f'<b>{text}</b>' if cell.bold else text}</{tag}>"


def markdown_to_html(text: str) -> str:
    """CommonMark through markdown-it-py (already installed as rich's Markdown parser)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").render(text)


def render_html(board: Leaderboard, link_dir: Path | None = None, title: str = README_TITLE) -> str:
    style = ("body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}td:nth-child(n+4){text-align:right}"
             "th{background:#f3f3f3}p.small,li{font-size:12px}")
    out = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
           f"<style>{style}</style></head><body>", f"<h1>{html.escape(title)}</h1>", markdown_to_html(INTRO).strip()]
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
    out += html_parts(board.quality)
    out.append('<h2 id="protocols">Protocols</h2><dl>')
    for key, pid in board.protocol_ids.items():
        headline, details = describe_protocol(board.protocols[key])
        out.append(f'<dt id="{pid.lower()}"><b>{pid}</b> {html.escape(headline)} <code>{key}</code></dt><dd><ul>'
                   + "".join(f"<li>{html.escape(n)}: {html.escape(t)}</li>" for n, t in details) + "</ul></dd>")
    out.append("</dl>")
    if board.runs:
        out.append('<h2 id="runs">Runs</h2><dl>')
        for rid, row in board.runs.items():
            link = f'<a href="{html.escape(run_link(row, link_dir))}">{html.escape(run_name(row))}</a>'
            out.append(f'<dt id="{rid.lower()}"><b>{rid}</b> {html.escape(row.label)}: {link}</dt><dd><ul>'
                       + "".join(f"<li>{html.escape(n)}: {html.escape(t)}</li>" for n, t in run_details(row))
                       + "</ul></dd>")
        out.append("</dl>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def print_rich(board: Leaderboard, console=None) -> None:
    """Tables for a terminal: a section with more categories than fit the width is split into
    several tables (each with the Mean), so no value is cut off."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    for section in board.sections:
        rows = table_cells(board, section, None, short=True)
        # greedy split by the narrowest each column can be (content, padding, border): Generator 13,
        # Source 12, Protocol 11, Mean 8, a category its name up to 10 chars + 3, the right border 1,
        # and 2 of slack for rich's rounding when it shares out the width
        fixed = 13 + 12 + 11 + 8 + 1 + 2
        chunks: list[list[int]] = [[]]
        used = fixed
        for i, name in enumerate(section.categories):
            width = min(max(len(name), 5), 10) + 3
            if chunks[-1] and used + width > console.width:
                chunks.append([])
                used = fixed
            chunks[-1].append(i)
            used += width
        for n, chunk in enumerate(chunks):
            title = section.title + (f" ({n + 1}/{len(chunks)})" if len(chunks) > 1 else "")
            table = Table(title=title, title_justify="left")
            table.add_column("Generator", min_width=10)
            table.add_column("Source", min_width=9)
            table.add_column("Protocol")
            for name in [*(section.categories[i] for i in chunk), "Mean"]:
                table.add_column(name, justify="right", min_width=5, max_width=10)
            for cells in rows:
                shown = [*cells[:3], *(cells[3 + i] for i in chunk), cells[-1]]
                table.add_row(*[Text(c.text, style="bold" if c.bold else "") for c in shown])
            console.print(table)
    print_quality(board.quality, console)
    for key, pid in board.protocol_ids.items():
        headline, details = describe_protocol(board.protocols[key])
        console.print(Text(f"{pid}: {headline}", style="bold"))
        for name, text in details:
            console.print(Text(f"    {name}: {text}"), highlight=False)
    for rid, row in board.runs.items():
        console.print(Text(f"{rid}: {row.label}, {run_name(row)}, {row.run['where']}", style="bold"))
        for name, text in run_details(row):
            console.print(Text(f"    {name}: {text}"), highlight=False)
