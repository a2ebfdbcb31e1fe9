"""How numbers and nested configs become text: flattening, percentages, NaN as null.

A leaf module (standard library only): reports, leaderboards, W&B and `bench score` share it.
"""

from __future__ import annotations

import json
import math


def flatten(entry: dict, prefix: str = "", sep: str = "_") -> dict[str, float]:
    """Numeric leaves of a metric table: {"image": {"auroc": x}} -> {"image_auroc": x}."""
    out: dict[str, float] = {}
    for k, v in entry.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}{sep}", sep))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def flatten_config(d: dict, prefix: str = "") -> dict[str, str]:
    """Every leaf of a nested config as `a.b.c` -> its JSON text (so 1 and 1.0 stay distinct
    from "1", and lists compare whole)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten_config(v, key + ".") if isinstance(v, dict) and v else {key: json.dumps(v, default=str)})
    return out


def is_missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def percent(x, digits: int = 2) -> str:
    """A fraction as a percentage; undefined (None/NaN) as '-'."""
    return "-" if is_missing(x) else f"{100 * x:.{digits}f}"


def json_safe(obj):
    """NaN and infinities (a metric undefined for a category) become null: strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
