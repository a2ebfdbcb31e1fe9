"""Reproduced rows: results.json files, run folders and W&B runs read into `Row`s.

Also what `bench compare` reads results with (`load_results`, `flatten`), so it depends on this
module and the protocol, never on the renderer.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from benchmark.errors import BenchError, missing_extra
from benchmark.leaderboard.protocol import protocol_of
from benchmark.leaderboard.rows import SETTINGS, Row, canonical_metric, canonical_name

RESULTS_FILE = "results.json"  # what `bench run` writes at the top of a run folder


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


def _numbers(entry: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in entry.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


def flatten(entry: dict) -> dict[str, float]:
    """The metrics of a results block: {"pixel": {"ap": x}, "miou": y} -> {"pixel.ap": x, "miou": y}.
    Drops non-numbers, NaN and the SETTINGS (a threshold is not a score to rank or regress on)."""
    return {k: v for k, v in _numbers(entry).items() if k.rsplit(".", 1)[-1] not in SETTINGS}


def settings_of(entry: dict) -> dict[str, float]:
    """The SETTINGS of a results block, e.g. {"threshold": 0.5}."""
    return {k: v for k, v in _numbers(entry).items() if k.rsplit(".", 1)[-1] in SETTINGS}


def unflatten(flat: dict[str, float]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        *levels, last = key.split(".")
        node = out
        for level in levels:
            node = node.setdefault(level, {})
        node[last] = value
    return out


def row_from_results(results: dict, where: str, accepted: bool = False) -> Row:
    """A reproduced row; `where` is the link to the run (a file path or a W&B URL)."""
    generator = (results.get("config", {}).get("generator") or {}).get("name")
    if not generator:
        raise BenchError(f"{where}: results.json has no config.generator.name")
    follows = str((results["config"]["generator"].get("options") or {}).get("follows") or "paper")
    row = Row(generator=canonical_name(generator), label=str(generator), origin="reproduced", follows=follows,
              protocol=protocol_of(results), mean_over=tuple(sorted(results["categories"])), accepted=accepted)
    blocks = {**results["categories"], "mean": results.get("mean") or {}}
    for cell, block in blocks.items():
        for metric, value in flatten(block).items():
            row.values.setdefault(metric, {})[str(cell)] = value
        for name, value in settings_of(block).items():
            row.settings.setdefault(name, {})[str(cell)] = value
    run = results.get("run") or {}
    row.label = row.labelled(row.label)
    row.run = {"id": run.get("id"), "time": str(run.get("time") or ""), "where": where,
               "config_hash": str(run.get("config_hash") or ""), "versions": run.get("versions") or {}}
    return row


def results_files(path: Path) -> list[Path]:
    """The results of one --results argument: a results.json file; a run folder or a folder of run
    folders (every results.json below it, but not the folds of a two-fold run); or a folder of
    collected results (its *.json files, each of which must be a results.json, like the accepted
    runs in the package data)."""
    path = Path(path)
    if not path.exists():
        raise BenchError(f"{path}: no such results file or folder")
    if not path.is_dir():
        return [path]
    found = sorted(f for f in path.rglob(RESULTS_FILE) if f.parent == path or not is_fold_of_a_run(f.parent))
    if found:
        return found
    if (path / "config.json").exists():
        raise BenchError(f"{path}: a run folder without {RESULTS_FILE}; finish it with "
                         f"`bench run --resume --output {path}`")
    found = sorted(path.glob("*.json"))
    if not found:
        raise BenchError(f"{path}: no {RESULTS_FILE} in this folder or below it")
    return found


def is_fold_of_a_run(folder: Path) -> bool:
    """`<run>/fold-<k>/` of a two-fold run (benchmark/run/folds.py): the run's own results.json,
    the mean over its folds, is the run's row; a fold's is a row only when asked for by name."""
    return folder.name.startswith("fold-") and (folder.parent / "config.json").exists()


def load_reproduced(paths: list[Path], accepted: bool = False) -> list[Row]:
    """Rows from results.json files and run folders (see `results_files`); the newest run per
    (protocol, generator) among these paths wins."""
    files = [f for path in paths for f in results_files(path)]
    rows = [row_from_results(load_results(f), str(f), accepted) for f in files]
    return newest_per_generator(rows)


def newest_per_generator(rows: list[Row]) -> list[Row]:
    newest: dict[tuple[str, str], Row] = {}
    for row in sorted(rows, key=lambda r: (r.run["time"], r.run["where"])):
        newest[(row.key, row.generator, row.follows)] = row  # an authors-code run never hides the paper's
    return list(newest.values())


def load_wandb(project: str) -> list[Row]:
    """Reproduced rows read back from a W&B project (what benchmark.tracking logs: the resolved
    config, summary["results"] = mean, summary["config_hash"], table results/per_category)."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in {"offline", "disabled", "dryrun"}:
        raise BenchError(f"cannot read W&B project {project!r}: WANDB_MODE={mode}; "
                         "unset it and log in with `wandb login`")
    try:
        import wandb
    except ImportError as err:
        raise missing_extra("wandb", "reading runs from a W&B project", err) from None
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
