"""The run configuration: typed, validated, built from a profile, method presets and overrides.

Resolution order (later wins): field defaults < profile < the generator's/segmenter's own preset
for that profile < a `--config run.yaml` file < dedicated CLI flags < `--set a.b=value` overrides.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from benchmark.errors import BenchError, describe_errors
from benchmark.metrics.options import MetricOptions
from benchmark.quality.options import QualityOptions
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
    # 2: BADG's protocol (App. A.1), two halves that each train once and evaluate once, results
    # averaged; the run folder holds one sub-folder per fold (benchmark/run/folds.py)
    folds: int = 1
    # which fold this folder holds: set by the fold loop in each fold's sub-folder; set it yourself
    # to run one fold alone. None: every fold (folds=2), or the one split (folds=1)
    fold: Optional[int] = None

    @field_validator("folds")
    @classmethod
    def _two_halves(cls, folds: int, info: ValidationInfo) -> int:
        if folds not in (1, 2):
            raise ValueError("should be 1 (one split by split.fraction) or 2 (two halves, each trains once and "
                             "is evaluated once, results averaged: BADG App. A.1)")
        fraction = info.data.get("fraction")
        if folds == 2 and fraction is not None and abs(fraction - 0.5) > 1e-9:
            raise ValueError(f"the two folds are halves, but split.fraction={fraction:g}; "
                             "drop split.fraction (two folds set it to 0.5) or set split.folds=1")
        return folds

    @field_validator("fold")
    @classmethod
    def _fold_of_folds(cls, fold: int | None, info: ValidationInfo) -> int | None:
        folds = info.data.get("folds")
        if fold is not None and folds is not None and not 1 <= fold <= folds:
            raise ValueError(f"should be between 1 and split.folds ({folds}), or unset to run every fold")
        return fold


class TrainerConfig(Strict):
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    # Lightning's precision names; None: per profile and device, benchmark/run/gpu_policy.py
    # (32-true on CPU; on CUDA smoke 32-true, paper 16-mixed); results.json records which
    precision: Optional[Literal["64-true", "32-true", "16-true", "16-mixed", "bf16-true", "bf16-mixed"]] = None
    num_workers: int = 0
    # True (strict), "warn" (warn_only) or False; None: strict on CPU, "warn" on CUDA (bilinear
    # upsampling has no deterministic CUDA backward); results.json records which and why
    deterministic: Optional[Literal["warn"] | bool] = None


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
    metrics: MetricOptions = MetricOptions()
    # generation quality of the synthetic set (docs/quality.md), against the real anomalies the
    # generator was given (the split's training ones), computed after generation
    quality: QualityOptions = QualityOptions(reference="train")
    trainer: TrainerConfig = TrainerConfig()
    wandb: bool = True
    wandb_project: str = "sias-bench"

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


PROFILES: dict[str, dict] = {
    "smoke": {"data": {"image_size": 128}, "trainer": {"accelerator": "auto", "devices": 1}},
    "paper": {"data": {"image_size": 256}, "quality": {"enabled": True}},
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


def read_yaml(path: Path, what: str):
    """A YAML file's contents; an unreadable file or a YAML error is one line naming the file."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as e:
        raise BenchError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise BenchError(f"{path}: not valid YAML{where} ({getattr(e, 'problem', None) or e})") from None


def load_config_file(path: Path | str) -> dict:
    """A `--config` file: YAML (so also a run folder's config.json) with RunConfig's schema, any
    subset of its keys. Checked on its own here, so a mistake names the file and the key even when
    flags are given too."""
    path = Path(path).expanduser()
    raw = read_yaml(path, "config file")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BenchError(f"{path}: a config file is a mapping of keys (profile:, data:, generator:, ...), "
                         f"not a {type(raw).__name__}")
    if isinstance(raw.get("data"), dict):
        raw["data"].pop("name", None)  # a run's config.json records it; derived from root and layout
    try:
        build_config(raw.get("profile") or "smoke", [raw])
    except BenchError as e:
        raise BenchError(f"{path}: {e}") from None
    return raw


def config_yaml(cfg: RunConfig) -> str:
    """The resolved configuration as a `--config` file (`bench run --print-config`)."""
    header = ("# SIAS-Bench run configuration (bench run --config this.yaml). Method options list only what\n"
              "# is set; each method's preset for the profile fills in the rest when the run starts.\n")
    return header + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def build_config(profile: str = "smoke", overrides: list[dict] | None = None) -> RunConfig:
    if profile not in PROFILES:
        raise BenchError(f"unknown profile '{profile}'; known: {', '.join(PROFILES)}")
    raw = deep_merge(RunConfig().model_dump(), {"profile": profile})
    raw = deep_merge(raw, PROFILES[profile])
    raw = deep_merge(raw, _method_protocol(raw, profile, overrides or []))
    for o in overrides or []:
        raw = deep_merge(raw, o)
    raw["metrics"] = _with_metric_preset(raw["metrics"], overrides or [])
    raw["split"] = _with_fold_fraction(raw["split"], overrides or [])
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise BenchError(f"invalid configuration: {describe_errors(e, RunConfig)}") from None
    GENERATORS.get(cfg.generator.name)  # unknown / planned names fail here with the known list
    SEGMENTERS.get(cfg.segmenter.name)
    check_options_early(cfg)
    return cfg


def check_options_early(cfg: RunConfig) -> None:
    """The generator's and segmenter's options, checked before the methods' modules (and torch)
    are imported: against the Options class the registry entry names (a pydantic-only module),
    else against the options every generator / segmenter shares (pairs_per_type, max_steps, lr,
    ...). `resolve_options` checks them all again over the preset once the method loads."""
    from generators.options import GeneratorOptions
    from segmenters.options import SegmenterOptions

    for kind, registry, shared in (("generator", GENERATORS, GeneratorOptions),
                                   ("segmenter", SEGMENTERS, SegmenterOptions)):
        component = getattr(cfg, kind)
        own = registry.get(component.name).load_options()
        checks = [(shared, {k: v for k, v in component.options.items() if k in shared.model_fields})]
        if own is not None:
            checks.append((own, component.options))
        for model, given in checks:
            try:  # partial: checks across fields wait for the preset (resolve_options)
                model.model_validate(given, context={"partial": True})
            except ValidationError as e:
                raise BenchError(f"invalid options for {component.name}: "
                                 f"{describe_errors(e, model, f'{kind}.options.')}") from None
    if cfg.profile == "paper":
        refuse_unset_published_weights(cfg.segmenter, SEGMENTERS.get(cfg.segmenter.name).load_options())


def refuse_unset_published_weights(segmenter: ComponentConfig, options_cls) -> None:
    """`paper` means the published setup: a segmenter that starts from ImageNet weights there needs
    the local file, or weights=none to train from random weights on purpose (recorded in
    results.json, so the leaderboard gives such runs a protocol of their own)."""
    if options_cls is None or segmenter.options.get("weights") is not None:
        return
    needed = options_cls.model_validate(segmenter.options, context={"partial": True}).published_weights()
    if needed:
        raise BenchError(f"segmenter.options.weights is unset: the paper profile starts {segmenter.name} from "
                         f"{needed}; give its local path (--set segmenter.options.weights=PATH), or "
                         "--set segmenter.options.weights=none to train from random weights")


def check_data(cfg: RunConfig) -> None:
    """The dataset root, layout and category names (folder names only), before anything heavy."""
    if cfg.data.root is None:
        if cfg.data.categories:
            from benchmark.data.demo import CATEGORIES
            from benchmark.data.layouts import _requested

            _requested(cfg.data.categories, list(CATEGORIES), "the demo dataset", "mvtec")
        return
    root = Path(cfg.data.root).expanduser()
    if not root.is_dir():
        raise BenchError(f"{root}: data root does not exist; pass --data-root pointing at the dataset "
                         "folder, or omit it to use the built-in demo dataset")
    from benchmark.data.layouts import requested_categories

    requested_categories(root, cfg.data.layout, cfg.data.categories)


def check_generator_checkpoint(path: Path | str | None) -> Path | None:
    """`bench generate --checkpoint`: the file must exist (checked before anything heavy loads)."""
    if path is None:
        return None
    checkpoint = Path(path).expanduser()
    if not checkpoint.is_file():
        raise BenchError(f"{checkpoint}: generator checkpoint not found (a generator.pt from a synthetic set "
                         "folder, or from a previous run's synthetic/ link)")
    return checkpoint


def resolve_components(cfg: RunConfig) -> dict:
    """{"generator": (class, options), "segmenter": (class, options)}: loads each method's module
    (torch) and validates its own options over its preset for the profile."""
    out = {}
    for kind, registry in (("generator", GENERATORS), ("segmenter", SEGMENTERS)):
        cls = registry.load(getattr(cfg, kind).name)
        out[kind] = (cls, resolve_options(cls, cfg.profile, getattr(cfg, kind).options, f"{kind}.options"))
    return out


def _method_protocol(raw: dict, profile: str, overrides: list[dict]) -> dict:
    """The run settings the generator's registry entry gives for this profile (its paper's
    protocol, e.g. BADG's two folds): above the profile, below a file, flags and --set."""
    name = raw["generator"]["name"]
    for o in overrides:
        name = (o.get("generator") or {}).get("name", name)
    if name not in GENERATORS:
        return {}  # validation names the known generators
    return GENERATORS.get(name).protocol.get(profile, {})


def _with_fold_fraction(split: dict, overrides: list[dict]) -> dict:
    """Two folds are halves: split.fraction becomes 0.5 unless given explicitly (then the schema
    says it contradicts split.folds=2)."""
    given = any("fraction" in (o.get("split") or {}) for o in overrides)
    return {**split, "fraction": 0.5} if split.get("folds") == 2 and not given else split


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
        raise BenchError(f"{source}: not a configuration this version can run ({describe_errors(e, RunConfig)}); "
                         "start a new run with another --output") from None


def resolve_options(component_cls, profile: str, options: dict, key: str = ""):
    """Method defaults < the method's preset for this profile < user options, validated. `key`
    (e.g. "segmenter.options") prefixes the field in the error, so it reads as the --set to fix."""
    merged = deep_merge(component_cls.presets.get(profile, {}), options)
    try:
        return component_cls.Options.model_validate(merged)
    except ValidationError as e:
        prefix = f"{key}." if key else ""
        raise BenchError(f"invalid options for {component_cls.name}: "
                         f"{describe_errors(e, component_cls.Options, prefix)}") from None
