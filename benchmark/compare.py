"""`bench compare`: a CI regression check of one results.json against a baseline.

Prints a per-category table of current values with their difference to the baseline in points
(+x.xx / -x.xx, like MMSegmentation's differential results) and fails when any metric drops by
more than the tolerance, when a category or metric of the baseline is missing (or NaN) in the
current run, or when the two runs were measured under different protocols.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.errors import BenchError
from benchmark.leaderboard import canonical_metric, flatten, load_results, metric_order, protocol_of

if TYPE_CHECKING:
    from benchmark.tables import MetricTable

EXIT_OK = 0
EXIT_REGRESSED = 1  # 2 is argparse's usage error
EXIT_MISSING = 3
EXIT_PROTOCOL = 4
MEAN = "mean"


@dataclass
class Delta:
    category: str
    metric: str
    baseline: float | None
    current: float | None

    @property
    def change(self) -> float | None:
        if self.baseline is None or self.current is None:
            return None
        return self.current - self.baseline


@dataclass
class Comparison:
    tolerance: float
    metrics: list[str]
    categories: list[str]  # baseline categories, then "mean"
    deltas: dict[tuple[str, str], Delta]
    new_categories: list[str] = field(default_factory=list)  # in the current run only; not judged
    protocol_differences: list[str] = field(default_factory=list)

    def status(self, delta: Delta) -> str:
        if delta.baseline is None:
            return "n/a"  # nothing to compare against (NaN in the baseline)
        if delta.current is None:
            return "missing"
        if delta.change < -self.tolerance - 1e-12:
            return "regressed"
        return "improved" if delta.change > 1e-12 else "equal" if delta.change > -1e-12 else "within"

    def failures(self, status: str) -> list[Delta]:
        return [d for d in self.deltas.values() if self.status(d) == status]

    @property
    def exit_code(self) -> int:
        if self.protocol_differences:
            return EXIT_PROTOCOL
        if self.failures("missing"):
            return EXIT_MISSING
        return EXIT_REGRESSED if self.failures("regressed") else EXIT_OK


def _table(results: dict) -> dict[str, dict[str, float]]:
    """{category or "mean": {metric path: value}}, NaN dropped (flatten skips it)."""
    table = {str(c): flatten(block) for c, block in results["categories"].items() if isinstance(block, dict)}
    if isinstance(results.get("mean"), dict):
        table[MEAN] = flatten(results["mean"])
    return table


def _differences(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if a == b else [f"{path}: baseline {a!r}, current {b!r}"]


def compare(baseline: dict, current: dict, tolerance: float = 0.01, metrics: list[str] | None = None) -> Comparison:
    """Every (category, metric) of the baseline against the current run; tolerance is a fraction
    (0.01 = one percentage point)."""
    if tolerance < 0:
        raise BenchError(f"--tolerance must be >= 0, got {tolerance}")
    base, cur = _table(baseline), _table(current)
    available = sorted({m for values in base.values() for m in values}, key=metric_order)
    if metrics:
        wanted = [canonical_metric(m) for m in metrics]
        unknown = [m for m in wanted if m not in available]
        if unknown:
            raise BenchError(f"metrics {unknown} are not in the baseline; it has: {', '.join(available)}")
        available = wanted
    categories = [c for c in base if c != MEAN] + ([MEAN] if MEAN in base else [])
    deltas = {}
    for category in categories:
        for metric in available:
            before, after = base[category].get(metric), cur.get(category, {}).get(metric)
            if before is not None or after is not None:
                deltas[(category, metric)] = Delta(category, metric, before, after)
    return Comparison(tolerance, available, categories, deltas, [c for c in cur if c not in base],
                      _differences(protocol_of(baseline), protocol_of(current)))


def _cell(comparison: Comparison, delta: Delta | None) -> str:
    if delta is None:
        return ""
    status = comparison.status(delta)
    if status == "n/a":
        return "[dim]n/a[/dim]" if delta.current is None else f"[dim]{100 * delta.current:.2f} (new)[/dim]"
    if status == "missing":
        return "[bold red]missing[/bold red]"
    style = {"regressed": "bold red", "improved": "green", "within": "yellow", "equal": "dim"}[status]
    return f"{100 * delta.current:.2f} [{style}]({100 * delta.change:+.2f})[/{style}]"


def comparison_table(comparison: Comparison) -> "MetricTable":
    """Categories x metrics, each cell the current value with its change in points; columns are
    grouped by the metric's family (image., pixel., the rest) for splitting on narrow terminals."""
    from benchmark.tables import Column, MetricTable

    columns = [Column(m, m, m.split(".")[0] if "." in m else "segmentation") for m in comparison.metrics]
    rows = [(category, {m: _cell(comparison, comparison.deltas.get((category, m))) for m in comparison.metrics})
            for category in comparison.categories]
    return MetricTable("value (change in points)", "category", columns, rows, bold={MEAN})


def comparison_records(comparison: Comparison) -> list[dict]:
    """One record per (category, metric): fractions as in results.json, change = current - baseline."""
    return [{"category": d.category, "metric": d.metric, "baseline": d.baseline, "current": d.current,
             "change": d.change, "status": comparison.status(d)} for d in comparison.deltas.values()]


def print_comparison(comparison: Comparison, baseline_name: str, current_name: str, console=None) -> None:
    from benchmark.tables import output_console, print_tables

    if console is None:
        console = output_console()
    console.print(f"current {current_name} vs baseline {baseline_name}: value (change in points), "
                  f"tolerance {100 * comparison.tolerance:.2f}", highlight=False)
    print_tables(comparison_table(comparison), console)
    if comparison.new_categories:
        console.print(f"new categories (not in the baseline): {', '.join(comparison.new_categories)}", highlight=False)
    for line in comparison.protocol_differences:
        console.print(f"[bold red]protocol differs[/bold red] {line}", highlight=False)
    missing = comparison.failures("missing")
    for delta in missing:
        console.print(f"[bold red]missing[/bold red] {delta.category} {delta.metric} "
                      f"(baseline {100 * delta.baseline:.2f})", highlight=False)
    regressed = comparison.failures("regressed")
    for delta in regressed:
        console.print(f"[bold red]regressed[/bold red] {delta.category} {delta.metric}: "
                      f"{100 * delta.baseline:.2f} -> {100 * delta.current:.2f} ({100 * delta.change:+.2f})",
                      highlight=False)
    if comparison.exit_code == EXIT_OK:
        console.print(f"[green]OK[/green]: no metric dropped by more than {100 * comparison.tolerance:.2f} points")
    else:
        console.print(f"[bold red]FAIL[/bold red]: {len(regressed)} regressed, {len(missing)} missing, "
                      f"{len(comparison.protocol_differences)} protocol differences (exit {comparison.exit_code})")


def write_comparison(comparison: Comparison, fmt: str, baseline_name: str, current_name: str, out=None) -> None:
    """`--format md|csv|json`: the comparison for scripts and documents, on stdout. md is the
    table; csv one line per (category, metric); json the same records with the verdict."""
    import csv
    import json
    import sys

    out = out or sys.stdout
    records = comparison_records(comparison)
    if fmt == "md":
        out.write(comparison_table(comparison).markdown())
    elif fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=list(records[0]) if records else ["category", "metric"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    else:
        out.write(json.dumps({"baseline": baseline_name, "current": current_name, "tolerance": comparison.tolerance,
                              "exit_code": comparison.exit_code, "records": records,
                              "new_categories": comparison.new_categories,
                              "protocol_differences": comparison.protocol_differences}, indent=2) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (f"exit codes: {EXIT_OK} ok, {EXIT_REGRESSED} a metric dropped by more than the tolerance, "
                     f"{EXIT_MISSING} a category or metric is missing, {EXIT_PROTOCOL} the protocols differ")
    parser.add_argument("--baseline", type=Path, required=True, metavar="A.json", help="reference results.json")
    parser.add_argument("--current", type=Path, required=True, metavar="B.json", help="results.json to check")
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="largest allowed drop, as a fraction (0.01 = 1 point; default %(default)s)")
    parser.add_argument("--metrics", nargs="+", metavar="M",
                        help="only these metrics, e.g. pixel.ap image.auroc miou (default: all in the baseline)")
    parser.add_argument("--format", default="table", choices=["table", "md", "csv", "json"],
                        help="table (fits the terminal; default), or md, csv, json on stdout for scripts "
                             "(the exit code is the same)")


def run(args) -> int:
    baseline, current = load_results(args.baseline), load_results(args.current)
    comparison = compare(baseline, current, args.tolerance, args.metrics)
    if getattr(args, "format", "table") == "table":
        print_comparison(comparison, str(args.baseline), str(args.current))
    else:
        write_comparison(comparison, args.format, str(args.baseline), str(args.current))
    return comparison.exit_code
