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

from benchmark.errors import BenchError
from benchmark.leaderboard import canonical_metric, flatten, load_results, metric_order, protocol_of

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


def print_comparison(comparison: Comparison, baseline_name: str, current_name: str, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # CI logs: do not squeeze the table into 80 columns
            console = Console(width=max(100, 14 + 18 * len(comparison.metrics)))
    console.print(f"current {current_name} vs baseline {baseline_name}: value (change in points), "
                  f"tolerance {100 * comparison.tolerance:.2f}", highlight=False)
    table = Table()
    table.add_column("category")
    for metric in comparison.metrics:
        table.add_column(metric, justify="right", no_wrap=True)
    for category in comparison.categories:
        if category == MEAN:
            table.add_section()
        table.add_row(category, *[_cell(comparison, comparison.deltas.get((category, m))) for m in comparison.metrics])
    console.print(table)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (f"exit codes: {EXIT_OK} ok, {EXIT_REGRESSED} a metric dropped by more than the tolerance, "
                     f"{EXIT_MISSING} a category or metric is missing, {EXIT_PROTOCOL} the protocols differ")
    parser.add_argument("--baseline", type=Path, required=True, metavar="A.json", help="reference results.json")
    parser.add_argument("--current", type=Path, required=True, metavar="B.json", help="results.json to check")
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="largest allowed drop, as a fraction (0.01 = 1 point; default %(default)s)")
    parser.add_argument("--metrics", nargs="+", metavar="M",
                        help="only these metrics, e.g. pixel.ap image.auroc miou (default: all in the baseline)")


def run(args) -> int:
    baseline, current = load_results(args.baseline), load_results(args.current)
    comparison = compare(baseline, current, args.tolerance, args.metrics)
    print_comparison(comparison, str(args.baseline), str(args.current))
    return comparison.exit_code
