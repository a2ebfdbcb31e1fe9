"""Protocols: what must match for two numbers to be comparable.

Dataset, few-shot split, profile, segmenter (unified vs per-category training, its training
length and whether it started from pretrained weights), image size and metric options. Reproduced
rows get theirs from `protocol_of(results)`; reported rows carry the protocol their paper
describes (data/reported/*.yaml) and so never share a protocol with a reproduced row.
"""

from __future__ import annotations

from benchmark.errors import BenchError
from benchmark.metrics.options import MetricOptions, metric_definition
from benchmark.leaderboard.rows import DATASET_NAMES, SEGMENTER_NAMES, canonical_dataset, canonical_name
from segmenters.options import weights_file


def protocol_of(results: dict) -> dict:
    """What two results.json must share to be comparable (see the module docstring)."""
    config = results.get("config") or {}
    data, split = config.get("data") or {}, config.get("split") or {}
    segmenter = config.get("segmenter") or {}
    if not data.get("name") or not segmenter.get("name"):
        raise BenchError("results.json has no config.data.name or config.segmenter.name; "
                         "is it a SIAS-Bench results.json?")
    fraction = split.get("fraction")
    protocol = {
        "dataset": canonical_dataset(data["name"]),
        "split": {"fraction": None if fraction is None else round(float(fraction), 4),
                  "order": split.get("order"),
                  # two folds averaged (BADG App. A.1); left out at 1, so runs from before keep their protocol
                  **({"folds": split["folds"]} if split.get("folds", 1) != 1 else {})},
        "segmenter": canonical_name(segmenter["name"]),
        "image_size": data.get("image_size"),
        "metrics": _metric_options(config.get("metrics") or {}, evaluated_modes(results)),
    }
    if config.get("training") is not None:  # unified vs per-category segmenter (SeaS Table 8)
        protocol["training"] = config["training"]
    if config.get("profile"):  # the methods' presets: smoke (tiny, a few hundred steps) or paper
        protocol["profile"] = config["profile"]
    if segmenter.get("options") is not None:  # results.json records the resolved options
        protocol["segmenter_training"] = segmenter_training(segmenter["options"])
    return protocol


# how long a segmenter trains, as its options count it (docs/segmenters.md)
_TRAINING_LENGTH = ("max_steps", "max_epochs", "epoch_samples")


def segmenter_training(options: dict) -> dict:
    """The segmenter's training length and where its weights started: {"max_steps": 400,
    "init": "random"}; "pretrained" when `weights` named a file (a run's own path is not part of
    the protocol, only that it started from one)."""
    length = {k: options[k] for k in _TRAINING_LENGTH if options.get(k) is not None}
    return {**length, "init": "random" if weights_file(options.get("weights")) is None else "pretrained"}


# options recorded later than the first results (the papers' variants, the bin count, the auto
# limit): at their defaults they are left out of the protocol, so runs from before keep theirs
_LATER_DEFAULTS = {k: v for k, v in MetricOptions().to_json().items()
                   if k in ("pixel_score", "pro_curve", "pixel_f1_max", "bins", "exact_max_pixels")}


# options that choose or shape the histogram grid: no number of a category evaluated exactly depends on them
_GRID_ONLY = ("mode", "bins", "exact_max_pixels")


def evaluated_modes(results: dict) -> set | None:
    """The curve modes the run's categories were computed in (results.json `evaluation`); None for
    results written before it was recorded."""
    categories = (results.get("evaluation") or {}).get("categories") or {}
    return {c.get("mode") for c in categories.values()} or None


def _metric_options(metrics: dict, modes: set | None = None) -> dict:
    """The options that change numbers: not the preset's name, not later options at their defaults,
    and not the grid's options when every category was evaluated exactly."""
    kept = {k: v for k, v in metrics.items() if k != "preset" and _LATER_DEFAULTS.get(k, object()) != v}
    if modes == {"exact"}:
        kept = {k: v for k, v in kept.items() if k not in _GRID_ONLY}
    return dict(sorted(kept.items()))


def describe_protocol(protocol: dict) -> tuple[str, list[tuple[str, str]]]:
    """A headline and (field, text) details for humans; reported protocols quote the YAML."""
    dataset = DATASET_NAMES.get(protocol["dataset"], protocol["dataset"])
    segmenter = SEGMENTER_NAMES.get(protocol["segmenter"], protocol["segmenter"])
    if "reported_by" in protocol:
        headline = f"reported by {protocol['paper']} ({protocol['tables']}) · {dataset} · {segmenter}"
        details = [(k.replace("_", " "), str(protocol[k])) for k in
                   ("variant", "segmenter_training", "split", "resolution", "synthetic_data", "notes") if protocol.get(k)]
        details += [(f'{k} (printed "{v["printed"]}")', v["definition"] + _pinned(v.get("options")))
                    for k, v in protocol["metric_definitions"].items()]
        return headline, details
    split = protocol.get("split") or {}
    fraction = split.get("fraction")
    training = f" ({protocol['training']})" if protocol.get("training") else ""
    headline = (f"{_reproduced(protocol)} · {dataset} · {segmenter}{training}{_segmenter_setup(protocol)} · "
                f"{protocol.get('image_size')} px")
    folds = f", {split['folds']} folds (each half trains once, evaluates once), averaged" if split.get("folds") else ""
    details = [("split", ("?" if fraction is None else f"{100 * fraction:.2f}% of the defects") + f", by {split.get('order')}"
                + folds),
               ("metric options", ", ".join(f"{k}={v}" for k, v in (protocol.get("metrics") or {}).items()) or "none")]
    return headline, details


def _reproduced(protocol: dict) -> str:
    return f"reproduced ({protocol['profile']})" if protocol.get("profile") else "reproduced"


def _segmenter_setup(protocol: dict) -> str:
    """", 400 steps from random weights" (empty for results that did not record the options)."""
    training = protocol.get("segmenter_training")
    if training is None:
        return ""
    steps, epochs, samples = (training.get(k) for k in _TRAINING_LENGTH)
    epochs = epochs and f"{epochs} epochs" + (f" of {samples} samples" if samples else "")
    length = " or ".join(part for part in (epochs, steps and f"{steps} steps") if part)
    return f", {length + ' ' if length else ''}from {training['init']} weights"


def _pinned(options: dict | None) -> str:
    return f" (engine options: {', '.join(f'{k}={v}' for k, v in options.items())})" if options else ""


def definition_conflict(metric: str, reported: dict, reproduced: dict) -> dict:
    """{option: the run's value} for each engine option that a reported column of `metric` pins
    (its YAML `options`) and the reproduced run set otherwise (missing options are the engine
    defaults); empty when the two numbers share a definition."""
    pinned = ((reported.get("metric_definitions") or {}).get(metric) or {}).get("options") or {}
    used = metric_definition(metric, reproduced.get("metrics") or {})
    return {k: used[k] for k, v in pinned.items() if used[k] != v}


def short_protocol(protocol: dict) -> str:
    seg = SEGMENTER_NAMES.get(protocol["segmenter"], protocol["segmenter"])
    if "reported_by" in protocol:
        return f"{protocol['paper']}, {seg}" + (f", {protocol['variant']}" if protocol.get("variant") else "")
    return f"{_reproduced(protocol)}, {seg}{_segmenter_setup(protocol)}, {protocol.get('image_size')} px"
