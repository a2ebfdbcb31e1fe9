"""The run configuration: typed, validated, built from a profile, method presets and overrides.

Resolution order (later wins): field defaults < profile < the generator's/segmenter's own preset
for that profile < `--set a.b=value` overrides and dedicated CLI flags.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from benchmark.errors import BenchError
from benchmark.registry import GENERATORS, SEGMENTERS

LAYOUTS = ("mvtec", "visa", "btad", "mvtec3d", "loco", "folder")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    root: str | None = None  # None: the built-in demo dataset from the cache
    layout: Literal["mvtec", "visa", "btad", "mvtec3d", "loco", "folder"] = "mvtec"
    categories: list[str] | None = None
    image_size: int = Field(256, ge=16)
    demo_seed: int = 0

    @property
    def name(self) -> str:
        return "demo" if self.root is None else f"{self.layout}:{Path(self.root).name}"


class SplitConfig(Strict):
    fraction: float = Field(1 / 3, gt=0, lt=1)
    order: Literal["id", "random"] = "id"


class MetricConfig(Strict):
    """The engine's `MetricOptions` (docs/metrics.md). `preset` names a paper's protocol
    (`benchmark.metrics.METRIC_PRESETS`): it fills the options it names, explicit settings win."""

    preset: Literal["default", "anomalydiffusion", "stage", "seas"] = "default"
    image_score: Literal["max", "mean", "pooled-max"] = "max"
    pool_kernel: int = 21
    iou_threshold: float | Literal["f1"] = 0.5
    mode: Literal["auto", "exact", "binned"] = "auto"
    max_fpr: float = 0.3
    pixel_score: Literal["probability", "logit"] = "probability"
    pro_curve: Literal["exact", "quantile-100"] = "exact"
    pixel_f1_max: Literal["exact", "grid-21"] = "exact"


class TrainerConfig(Strict):
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None  # None: 32 on CPU, "16-mixed" on GPU
    num_workers: int = 0
    deterministic: bool = True


class ComponentConfig(Strict):
    name: str
    options: dict[str, Any] = {}


class RunConfig(Strict):
    profile: Literal["smoke", "paper"] = "smoke"
    seed: int = 0
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    generator: ComponentConfig = ComponentConfig(name="cutpaste")
    segmenter: ComponentConfig = ComponentConfig(name="unet")
    training: Literal["unified", "per-category"] = "unified"
    metrics: MetricConfig = MetricConfig()
    trainer: TrainerConfig = TrainerConfig()
    wandb: bool = True
    wandb_project: str = "sias-bench"

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


PROFILES: dict[str, dict] = {
    "smoke": {"data": {"image_size": 128}, "trainer": {"accelerator": "auto", "devices": 1}},
    "paper": {"data": {"image_size": 256}},
}


def deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict:
    """`a.b.c=value` -> {"a": {"b": {"c": value}}}; value parsed as YAML (numbers, lists, null)."""
    key, eq, raw = text.partition("=")
    if not eq or not key:
        raise BenchError(f"override '{text}' is not of the form key.path=value (e.g. segmenter.options.max_steps=100)")
    value = yaml.safe_load(raw) if raw else ""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def build_config(profile: str = "smoke", overrides: list[dict] | None = None) -> RunConfig:
    if profile not in PROFILES:
        raise BenchError(f"unknown profile '{profile}'; known: {', '.join(PROFILES)}")
    raw = deep_merge(RunConfig().model_dump(), {"profile": profile})
    raw = deep_merge(raw, PROFILES[profile])
    for o in overrides or []:
        raw = deep_merge(raw, o)
    raw["metrics"] = _with_metric_preset(raw["metrics"], overrides or [])
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise BenchError(f"invalid configuration: {_first_error(e)}") from None
    GENERATORS.get(cfg.generator.name)  # unknown / planned names fail here with the known list
    SEGMENTERS.get(cfg.segmenter.name)
    return cfg


def _with_metric_preset(metrics: dict, overrides: list[dict]) -> dict:
    """Defaults < the named paper preset < options set explicitly (the preset itself included)."""
    from benchmark.metrics.options import METRIC_PRESETS

    explicit: dict = {}
    for o in overrides:
        explicit = deep_merge(explicit, o.get("metrics") or {})
    preset = METRIC_PRESETS.get(metrics.get("preset", "default"))
    if preset is None:
        return metrics  # validation names the known presets
    return {**metrics, **preset, **explicit}


def config_from_resolved(stored: dict, source: Path | str = "config.json") -> RunConfig:
    """A RunConfig from a run folder's config.json (the resolved configuration it was started with)."""
    raw = json.loads(json.dumps(stored))
    raw.get("data", {}).pop("name", None)  # derived from root and layout
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise BenchError(f"{source}: not a configuration this version can run ({_first_error(e)}); "
                         "start a new run with another --output") from None


def resolve_options(component_cls, profile: str, options: dict):
    """Method defaults < the method's preset for this profile < user options, validated."""
    merged = deep_merge(component_cls.presets.get(profile, {}), options)
    try:
        return component_cls.Options.model_validate(merged)
    except ValidationError as e:
        raise BenchError(f"invalid options for {component_cls.name}: {_first_error(e)}") from None


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    return f"{loc}: {err['msg']}" + (f" ({len(e.errors()) - 1} more)" if len(e.errors()) > 1 else "")
