"""`bench leaderboard`: reported (paper) and reproduced (results.json) rows, grouped by protocol.

A *protocol* is what must match for two numbers to be comparable (see `protocol`). A table is one
(dataset, metric); its rows are grouped by protocol, a Protocol column names the group (P1, P2,
... described under "Protocols"), and the best value per column is bold within a group only.

Modules, imports pointing one way (each imports only those before it):
  rows        Row, canonical ids, display names (the leaf)
  protocol    protocol_of(results), protocol descriptions
  reproduced  results.json files, run folders and W&B runs -> rows; load_results, flatten
  reported    the papers' numbers: data/reported/*.yaml, validated by a pydantic schema -> rows
  quality     generation quality (IS / IC-LPIPS): data/quality/*.yaml and results.json `quality`,
              its own tables after the segmentation sections
  layout      rows -> a Leaderboard of sections, groups and best values
  render      Markdown, HTML (with bar charts) and rich output
  command     the CLI: arguments, sources, writing files
`bench compare` uses the names re-exported here from rows, protocol and reproduced; importing this
package does not import the renderer (`add_arguments` and `run` load `command` on first use).
"""

from __future__ import annotations

import importlib

from benchmark.leaderboard.protocol import protocol_of
from benchmark.leaderboard.reproduced import flatten, load_results
from benchmark.leaderboard.rows import canonical_metric, metric_order

__all__ = ["add_arguments", "canonical_metric", "flatten", "load_results", "metric_order", "protocol_of", "run"]


def __getattr__(name: str):
    """`bench`'s entry points, from the command module only when the CLI asks for them."""
    if name in {"add_arguments", "run"}:
        return getattr(importlib.import_module("benchmark.leaderboard.command"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
