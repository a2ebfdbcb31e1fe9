"""Rows laid out as tables: one `Section` per (dataset, metric), rows grouped by protocol.

A Protocol column names each group (P1, P2, ...), and the best value per column is found within
a group only, never across groups. Reproduced runs get ids (R1, R2, ...) for the footnote that
holds their details (package versions, settings such as the threshold).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.leaderboard.protocol import definition_conflict, describe_protocol
from benchmark.leaderboard.rows import (DATASET_NAMES, METRIC_NAMES, Row, canonical_dataset, canonical_metric,
                                        canonical_name, dataset_order, metric_order)


@dataclass
class Section:
    """One table: a dataset and a metric; rows grouped by protocol key, best values per group."""

    dataset: str
    metric: str
    categories: list[str]
    groups: list[tuple[str, list[Row]]]
    best: dict[tuple[str, str], float]  # (protocol key, cell) -> best value of the group
    uneven_mean: set[int]  # ids of rows whose mean covers other categories than its group's
    variant: str = ""  # runs split off a reported column they are defined differently from

    @property
    def title(self) -> str:
        title = f"{DATASET_NAMES.get(self.dataset, self.dataset)} · {METRIC_NAMES.get(self.metric, self.metric)}"
        return title + (f" ({self.variant})" if self.variant else "")


@dataclass
class Leaderboard:
    sections: list[Section]
    protocol_ids: dict[str, str]  # protocol key -> "P1"
    protocols: dict[str, dict]
    run_ids: dict[str, str]  # reproduced row's run["where"] -> "R1"
    runs: dict[str, Row]  # "R1" -> its row
    quality: list = field(default_factory=list)  # QualityRow: IS / IC-LPIPS (benchmark.leaderboard.quality)


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
        for variant, part in split_by_definition(metric, members):
            sections.append(_section(ds, metric, part, ids, variant))
    used = {key for s in sections for key, _ in s.groups}
    runs: dict[str, Row] = {}
    for section in sections:  # numbered in order of first appearance
        for _, group in section.groups:
            for row in group:
                if row.origin == "reproduced" and row.run["where"] not in {r.run["where"] for r in runs.values()}:
                    runs[f"R{len(runs) + 1}"] = row
    return Leaderboard(sections, {k: v for k, v in ids.items() if k in used},
                       {k: v for k, v in protocols.items() if k in used},
                       {row.run["where"]: rid for rid, row in runs.items()}, runs)



def _section(ds: str, metric: str, members: list[Row], ids: dict[str, str], variant: str) -> Section:
    groups = []
    for key in ids:
        group = [r for r in members if r.key == key]
        if group:  # best first; an accepted run before an added run of the same value
            group.sort(key=lambda r: (-r.values[metric].get("mean", -1.0), r.label, not r.accepted))
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
    return Section(ds, metric, categories, groups, best, uneven, variant)


def split_by_definition(metric: str, members: list[Row]) -> list[tuple[str, list[Row]]]:
    """One column never holds a reported and a reproduced number defined differently. A run whose
    metric options differ from what a reported column pins (its YAML `options`) goes to a table
    of its own, titled with its options, e.g. "(as run: pro_curve=exact)", beside the reported
    rows it does agree with. The first part is the main table (variant ""): every reported row
    and the runs that agree with all of them."""
    reported = [r for r in members if r.origin == "reported"]
    parts: dict[str, list[Row]] = {"": list(reported)}
    for run in (r for r in members if r.origin == "reproduced"):
        differ: dict[str, object] = {}
        for paper in reported:
            differ.update(definition_conflict(metric, paper.protocol, run.protocol))
        variant = "as run: " + ", ".join(f"{k}={v}" for k, v in sorted(differ.items())) if differ else ""
        parts.setdefault(variant, []).append(run)
    for variant, part in parts.items():
        if variant:
            runs = list(part)
            part += [paper for paper in reported
                     if not any(definition_conflict(metric, paper.protocol, run.protocol) for run in runs)]
    return [(variant, part) for variant, part in parts.items() if part]
