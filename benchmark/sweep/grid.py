"""The sweep grid: a base run configuration and the axes it is crossed over, and the jobs it
expands to. Pydantic and the run configuration's schema only (no torch), so a bad grid answers
at once, naming the file and the key.

A grid file (`bench sweep --config grid.yaml`):

    base:                       # a run configuration: the `bench run --config` format (or a path to such a file)
      profile: smoke
      segmenter: {options: {max_steps: 20}}
    generators: [cutpaste, real-only, {name: draem, options: {pairs_per_type: 4}}]
    segmenters: [unet, lfd]
    datasets: [demo, {root: /data/mvtec_ad, layout: mvtec, categories: [bottle]}]
    seeds: [0, 1, 2]
    launcher: {name: slurm, partition: gpu, gpus_per_job: 1, time_min: 240, array_parallelism: 8}

Each cell (dataset x generator x segmenter x seed) is the base merged with its axis entries, in
that order, resolved exactly as `bench run --config` resolves a file (profile < base < entries).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from benchmark.config import (LAYOUTS, ComponentConfig, RunConfig, Strict, build_config, deep_merge, load_config_file,
                              read_yaml)
from benchmark.errors import BenchError, describe_errors

GRID_FILE = "sweep.yaml"  # the grid as last launched, in the sweep folder


class ComponentEntry(Strict):
    """A generator or segmenter of an axis: the run configuration's `generator:` / `segmenter:`
    section, plus a label naming the folder when one method appears twice with other options."""

    name: str
    options: dict[str, Any] = {}
    label: str | None = None

    @property
    def slug(self) -> str:
        return self.label or self.name


class DatasetEntry(Strict):
    """A dataset of the axis: the run configuration's `data:` section (root null: the demo)."""

    root: str | None = None
    layout: str | None = None
    categories: list[str] | None = None
    image_size: int | None = None
    label: str | None = None

    def data_section(self) -> dict:
        """The keys this entry sets (`demo` sets root: null); unset keys keep the base's."""
        given = self.model_dump(exclude={"label"}, exclude_unset=True)
        return {k: v for k, v in given.items() if v is not None or k == "root"}


def dataset_slug(entry: DatasetEntry, config: RunConfig) -> str:
    """The folder name of a dataset: its label, else `demo` or the dataset folder's name."""
    if entry.label:
        return entry.label
    if config.data.root is None:
        return "demo"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(config.data.root).expanduser().name) or "data"


class LauncherOptions(Strict):
    """Where the jobs run. `local`: one after another in this process, or one job per visible GPU
    at a time (submitit's LocalExecutor) when more than one GPU is visible. `slurm`: submitit's
    AutoExecutor; the options map to sbatch's (docs/sweep.md)."""

    name: Literal["local", "slurm"] = "local"
    partition: str | None = None
    gpus_per_job: int = Field(1, ge=0)
    cpus_per_job: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    time_min: int | None = Field(None, ge=1)  # per job; unset: 240 on SLURM, none for local jobs
    array_parallelism: int = Field(16, ge=1)  # at most this many jobs of one array run at once (sbatch --array %N)
    account: str | None = None
    qos: str | None = None
    sbatch: dict[str, Any] = {}  # any other sbatch option, e.g. {constraint: a100}
    setup: list[str] = []  # shell lines run before each job (module load ..., source venv/bin/activate)
    wait: bool = False  # slurm: stay until every job finished (else submit, print the job ids and exit)

    @field_validator("gpus_per_job")
    @classmethod
    def _one_gpu_per_job(cls, value: int) -> int:
        # a multi-GPU Lightning run on SLURM needs one task per GPU, which the jobs do not request yet
        if value > 1:
            raise ValueError("at most 1 for now: a multi-GPU run needs one SLURM task per GPU, which sweep jobs "
                             "do not request yet; run it with `srun bench run` (docs/scale.md, docs/sweep.md)")
        return value


class SweepGrid(Strict):
    base: dict[str, Any] = {}
    generators: list[ComponentEntry] = Field(min_length=1)
    segmenters: list[ComponentEntry] = Field(min_length=1)
    datasets: list[DatasetEntry] = [DatasetEntry()]  # default: the base's data section as it is
    seeds: list[int] = Field([0], min_length=1)
    launcher: LauncherOptions = LauncherOptions()

    @field_validator("generators", "segmenters", mode="before")
    @classmethod
    def _names_are_entries(cls, value):
        return [{"name": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("datasets", mode="before")
    @classmethod
    def _dataset_strings_are_entries(cls, value):
        return [parse_dataset(v) if isinstance(v, str) else v for v in value] if isinstance(value, list) else value


def parse_dataset(text: str) -> dict:
    """`demo`, a dataset folder, or `<layout>:<folder>` (e.g. `visa:/data/visa`) as a DatasetEntry's fields."""
    if text == "demo":
        return {"root": None}
    layout, sep, root = text.partition(":")
    if sep and layout in LAYOUTS:
        return {"layout": layout, "root": root}
    return {"root": text}


# -- the jobs a grid expands to --------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationJob:
    """The synthetic set of one (dataset, generator, seed), made once for every segmenter of the
    grid: a `bench generate` run folder. The set itself goes to the cache, where the cells'
    runs find it (its key does not involve the segmenter)."""

    dataset: str
    generator: str
    seed: int
    config: RunConfig
    folder: Path

    @property
    def name(self) -> str:
        return f"generate {self.dataset}/{self.generator}/seed{self.seed}"


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a `bench run` folder."""

    dataset: str
    generator: str
    segmenter: str
    seed: int
    config: RunConfig
    folder: Path
    generation: GenerationJob

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.generator}/{self.segmenter}/seed{self.seed}"

    @property
    def group(self) -> tuple[str, str, str]:
        """What the summary averages over seeds."""
        return self.dataset, self.generator, self.segmenter


def load_grid_file(path: Path | str) -> dict:
    """A grid file's raw mapping; a `base:` given as a path is read as a `--config` file (relative
    to the grid file)."""
    path = Path(path).expanduser()
    raw = read_yaml(path, "grid file")
    if not isinstance(raw, dict):
        raise BenchError(f"{path}: a grid file is a mapping (base:, generators:, segmenters:, datasets:, seeds:, "
                         "launcher:)")
    if isinstance(raw.get("base"), str):
        base = Path(raw["base"]).expanduser()
        raw["base"] = load_config_file(base if base.is_absolute() else path.parent / base)
    return raw


def validate_grid(raw: dict, source: str = "the sweep") -> SweepGrid:
    try:
        return SweepGrid.model_validate(raw)
    except ValidationError as e:
        raise BenchError(f"{source}: invalid grid: {describe_errors(e, SweepGrid)}") from None


def expand(grid: SweepGrid, output: Path, source: str = "the sweep") -> tuple[list[GenerationJob], list[Cell]]:
    """The generation jobs and the cells, every cell's configuration built and checked (names with
    "did you mean", values, the methods' options as far as they can be checked before torch)."""
    generations: list[GenerationJob] = []
    cells: list[Cell] = []
    for dataset in grid.datasets:
        for generator in grid.generators:
            for seed in grid.seeds:
                generation = None
                for segmenter in grid.segmenters:
                    settings = deep_merge(grid.base, {
                        "data": dataset.data_section(),
                        "generator": generator.model_dump(exclude={"label"}),
                        "segmenter": segmenter.model_dump(exclude={"label"}),
                        "seed": seed,
                    })
                    root = (settings.get("data") or {}).get("root")
                    if root is not None:  # as `bench run` reads it (from the current folder), for jobs started elsewhere
                        settings["data"]["root"] = str(Path(root).expanduser().resolve())
                    try:
                        config = build_config(settings.get("profile") or "smoke", [settings])
                    except BenchError as e:
                        named = dataset.label or dataset.root or ("demo" if "root" in dataset.model_fields_set else "the base data")
                        where = f"{generator.slug}/{segmenter.slug}/seed{seed} on {named}"
                        raise BenchError(f"{source}, cell {where}: {e}") from None
                    data = dataset_slug(dataset, config)
                    if generation is None:
                        # the set does not depend on the segmenter: its options stay out of the generation
                        # folder's config.json, so changing them never invalidates a synthetic set
                        neutral = config.model_copy(update={"segmenter": ComponentConfig(name=config.segmenter.name)})
                        generation = GenerationJob(data, generator.slug, seed, neutral,
                                                   output / "synthetic" / data / f"{generator.slug}-seed{seed}")
                        generations.append(generation)
                    cells.append(Cell(data, generator.slug, segmenter.slug, seed, config,
                                      output / "runs" / data / f"{generator.slug}-{segmenter.slug}-seed{seed}",
                                      generation))
    _check_unique(cells, source)
    return generations, cells


def _check_unique(cells: list[Cell], source: str) -> None:
    """Two entries of an axis that would share a folder (the same method twice, two datasets in
    folders of one name, a repeated seed)."""
    seen: set[str] = set()
    for cell in cells:
        if cell.name in seen:
            raise BenchError(f"{source}: two entries make the cell {cell.name}; give each entry of that "
                             "axis its own `label:` (the folder's name), or drop the repeat")
        seen.add(cell.name)


def grid_yaml(grid: SweepGrid) -> str:
    """The grid as a `bench sweep --config` file (written to the sweep folder as sweep.yaml)."""
    header = "# SIAS-Bench sweep grid (bench sweep --config this.yaml --output <folder>)\n"
    raw = grid.model_dump(mode="json", exclude_defaults=True)
    # a dataset entry keeps `root: null` when it says `demo` (null is also the unset default)
    raw["datasets"] = [{**d.data_section(), **({"label": d.label} if d.label else {})} for d in grid.datasets]
    return header + yaml.safe_dump(raw, sort_keys=False)
