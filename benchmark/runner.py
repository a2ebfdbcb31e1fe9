"""`bench run`: dataset -> few-shot split -> generation -> segmenter training -> evaluation -> report.

Every stage writes its output to the run folder (and the synthetic set to a cache keyed by what
determines it), so a killed run started again with `--resume` continues from the last finished
stage, and a synthetic set is reused whenever the same generator config, split and seed ask again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from benchmark.config import RunConfig, resolve_options
from benchmark.errors import BenchError
from benchmark.progress import RunProgress

log = logging.getLogger(__name__)

RESULT_FILES = ("results.json", "metrics.csv")
VERSIONED = ("sias-bench", "torch", "torchvision", "lightning", "torchmetrics", "diffusers", "transformers",
             "segmentation-models-pytorch", "mmsegmentation", "numpy")


def cache_dir() -> Path:
    return Path(os.environ.get("SIAS_BENCH_CACHE", Path.home() / ".cache" / "sias-bench"))


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# -- the run folder ----------------------------------------------------------------------------
class RunFolder:
    """config.json pins the folder to one configuration; state.json records finished stages."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def claim(self, resolved: dict, resume: bool, overwrite: bool) -> None:
        config_path = self.root / "config.json"
        if self.root.exists() and any(self.root.iterdir()):
            if overwrite:
                shutil.rmtree(self.root)
            elif not config_path.exists():
                raise BenchError(f"{self.root}: folder is not empty and holds no SIAS-Bench run; "
                                 "choose another --output or pass --overwrite")
            elif not resume:
                raise BenchError(f"{self.root}: holds a run already; pass --resume to continue it "
                                 "or --overwrite to replace it")
            else:
                old = json.loads(config_path.read_text())
                if digest(old) != digest(resolved):
                    diff = sorted(k for k in _flatten(resolved).keys() | _flatten(old).keys()
                                  if _flatten(resolved).get(k) != _flatten(old).get(k))
                    raise BenchError(f"{self.root}: --resume with a different configuration "
                                     f"({', '.join(diff[:5])} differ); use another --output or --overwrite")
        self.root.mkdir(parents=True, exist_ok=True)
        if not config_path.exists():
            atomic_write_text(config_path, json.dumps(resolved, indent=2, sort_keys=True))

    def state(self) -> dict:
        path = self.root / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def mark(self, stage: str, seconds: float) -> None:
        state = self.state()
        state[stage] = round(seconds, 3)
        atomic_write_text(self.root / "state.json", json.dumps(state, indent=2))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: json.dumps(v, default=str)})
    return out


# -- the run -----------------------------------------------------------------------------------
class Run:
    def __init__(self, cfg: RunConfig, output: Path, quiet: bool = False, cache: Path | None = None,
                 generator_checkpoint: Path | None = None):
        import lightning  # noqa: F401  (before quiet_lightning: lightning sets its log levels on import)

        from benchmark.progress import quiet_lightning
        from benchmark.registry import GENERATORS, SEGMENTERS

        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            quiet_lightning()
        self.cfg = cfg
        self.folder = RunFolder(output)
        self.cache = Path(cache) if cache else cache_dir()
        self.progress = RunProgress(quiet=quiet)
        self.generator_cls = GENERATORS.load(cfg.generator.name)
        self.segmenter_cls = SEGMENTERS.load(cfg.segmenter.name)
        self.generator_options = resolve_options(self.generator_cls, cfg.profile, cfg.generator.options)
        self.segmenter_options = resolve_options(self.segmenter_cls, cfg.profile, cfg.segmenter.options)
        self.timings: dict[str, float] = {}
        self.generator_checkpoint = Path(generator_checkpoint) if generator_checkpoint else None
        if self.generator_checkpoint and not self.generator_checkpoint.is_file():
            raise BenchError(f"{self.generator_checkpoint}: generator checkpoint not found (a generator.pt "
                             "from a synthetic set folder, or from a previous run's synthetic/ link)")

    def resolved_config(self) -> dict:
        d = self.cfg.model_dump(mode="json")
        d["generator"]["options"] = self.generator_options.model_dump(mode="json")
        d["segmenter"]["options"] = self.segmenter_options.model_dump(mode="json")
        d["data"]["name"] = self.cfg.data.name
        return d

    @contextmanager
    def stage(self, name: str):
        import lightning as L

        # Re-seed per stage: a stage's randomness (segmenter init, flips) must not depend on
        # whether earlier stages ran here or were reused from the cache / a resumed run.
        L.seed_everything(self.cfg.seed, workers=True, verbose=False)
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        self.folder.mark(name, self.timings[name])

    def execute(self, resume: bool = False, overwrite: bool = False, until: str = "report") -> dict | None:
        self.folder.claim(self.resolved_config(), resume, overwrite)
        with self.progress:
            with self.stage("data"):
                split = self.make_split()
            with self.stage("generate"):
                synthetic = self.generate(split)
            if until == "generate":
                self.progress.log(f"synthetic set: {synthetic.root} ({len(synthetic)} pairs)")
                return None
            with self.stage("train"):
                models = self.train(split, synthetic)
            with self.stage("evaluate"):
                per_category = self.evaluate(split, models)
            with self.stage("report"):
                results = self.report(split, synthetic, per_category)
        return results

    # -- stages ------------------------------------------------------------------------------
    def data_root(self) -> tuple[Path, str]:
        if self.cfg.data.root is None:
            from benchmark.data.demo import demo_dataset_path

            return demo_dataset_path(self.cache, seed=self.cfg.data.demo_seed), "mvtec"
        root = Path(self.cfg.data.root)
        if not root.is_dir():
            raise BenchError(f"{root}: data root does not exist; pass --data-root pointing at the dataset "
                             "folder, or omit it to use the built-in demo dataset")
        return root, self.cfg.data.layout

    def make_split(self):
        from benchmark.data.layouts import read_dataset
        from benchmark.data.split import FewShotSplit, few_shot_split

        path = self.folder.root / "split.json"
        if path.exists():
            return FewShotSplit.load(path)
        root, layout = self.data_root()
        categories = read_dataset(root, layout, self.cfg.data.categories)
        if self.cfg.data.root is not None:
            self.check_pixels(root, layout, categories)
        for name, cat in categories.items():
            if not cat.train_good:
                raise BenchError(f"{root}/{name}: category has no normal training images")
            if not cat.defects:
                raise BenchError(f"{root}/{name}: category has no defect images with masks")
        split = few_shot_split(categories, self.cfg.split.fraction, self.cfg.split.order, self.cfg.seed)
        split.save(path)
        return split

    def check_pixels(self, root: Path, layout: str, categories) -> None:
        """Unreadable files, image/mask size mismatches, non-binary or empty masks stop the run
        here, before hours of generation, with the first few named (headers only: seconds)."""
        from benchmark.data.check import check_samples
        from benchmark.data.layouts import get_layout

        samples = [s for c in categories.values() for s in c.all_samples()]
        problems = check_samples(samples, get_layout(layout).mask_encoding)
        if problems:
            shown = "; ".join(str(p) for p in problems[:3])
            more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
            raise BenchError(f"{shown}{more}; list them all with `bench data check --data-root {root} "
                             f"--layout {layout}`")

    def synthetic_key(self, split) -> str:
        return digest({
            "generator": self.cfg.generator.name,
            "options": self.generator_options.model_dump(mode="json"),
            "split": split.to_json(),
            "seed": self.cfg.seed,
            "image_size": self.cfg.data.image_size,
            # a given trained generator makes a different set than one trained here
            "checkpoint": file_digest(self.generator_checkpoint) if self.generator_checkpoint else None,
        })

    def generate(self, split):
        from torch.utils.data import DataLoader

        from benchmark.synthetic import SyntheticSet, SyntheticSetWriter
        from generators.base import collate_requests

        key = self.synthetic_key(split)
        synthetic = SyntheticSet(self.cache / "synthetic" / f"{self.cfg.generator.name}-{key}")
        generator = self.generator_cls(self.generator_options, self.cfg.data.image_size)
        generator.setup_split(split)
        requests = generator.plan(split, self.cfg.seed)
        pending = synthetic.pending(requests)
        if not pending:
            self._link_synthetic(synthetic)
            return synthetic
        synthetic.write_meta({
            "generator": self.cfg.generator.name, "key": key, "config": self.resolved_config()["generator"],
            "image_size": self.cfg.data.image_size, "seed": self.cfg.seed, "versions": package_versions(),
            "requests": len(requests),
        })
        if self.generator_cls.trainable:
            self.fit_generator(generator, synthetic.root / "generator.pt")
        trainer = self.trainer(callbacks=[SyntheticSetWriter(synthetic, self.cfg.generator.name)], devices_for="generate")
        loader = DataLoader(pending, batch_size=self.generator_options.batch_size, collate_fn=collate_requests)
        with self.progress.stage("generate", len(pending)):
            trainer.predict(generator, dataloaders=loader, return_predictions=False)
        if trainer.is_global_zero:
            synthetic.merge_manifests()
        missing = {r.id for r in requests} - synthetic.done_ids()
        if missing:
            raise BenchError(f"{synthetic.root}: {len(missing)} requested pairs were not written "
                             f"(e.g. {sorted(missing)[0]}); run again with --resume")
        self._link_synthetic(synthetic)
        return synthetic

    def fit_generator(self, generator, checkpoint: Path) -> None:
        if self.generator_checkpoint is not None:
            generator.load_trained(self.generator_checkpoint)
            return
        if checkpoint.exists():
            generator.load_trained(checkpoint)
            return
        steps = getattr(generator.options, "train_steps", None)
        trainer = self.trainer(max_steps=steps, callbacks=[], devices_for="fit")
        with self.progress.stage("fit-gen", steps):
            trainer.fit(generator)
        if trainer.is_global_zero:
            generator.save_trained(checkpoint)

    def _link_synthetic(self, synthetic) -> None:
        link = self.folder.root / "synthetic"
        if not link.exists() and not link.is_symlink():
            link.symlink_to(synthetic.root.resolve(), target_is_directory=True)

    def groups(self, split) -> list[str | None]:
        return [None] if self.cfg.training == "unified" else sorted(split.categories)

    def train(self, split, synthetic) -> dict:
        import torch
        from torch.utils.data import DataLoader

        from benchmark.segmentation_data import SegmentationDataset, training_items

        models = {}
        import lightning as L

        for group in self.groups(split):
            L.seed_everything(self.cfg.seed, workers=True, verbose=False)  # each model as if trained alone
            tag = group or "unified"
            final = self.folder.root / "segmenter" / f"{tag}.pt"
            model = self.segmenter_cls(self.segmenter_options)
            if final.exists():
                model.load_state_dict(torch.load(final, map_location="cpu", weights_only=True))
                models[group] = model
                continue
            items = training_items(split, synthetic, group)
            dataset = SegmentationDataset(items, self.cfg.data.image_size, augment=True)
            generator = torch.Generator().manual_seed(self.cfg.seed)
            loader = DataLoader(dataset, batch_size=self.segmenter_options.batch_size, shuffle=True,
                                generator=generator, num_workers=self.cfg.trainer.num_workers,
                                drop_last=len(dataset) > self.segmenter_options.batch_size,
                                persistent_workers=self.cfg.trainer.num_workers > 0)
            from lightning.pytorch.callbacks import ModelCheckpoint

            ckpt_dir = self.folder.root / "checkpoints" / tag
            checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                         every_n_train_steps=max(25, self.segmenter_options.max_steps // 10))
            trainer = self.trainer(max_steps=self.segmenter_options.max_steps, callbacks=[checkpoint],
                                   logger=self.wandb_logger(), devices_for="fit")
            last = ckpt_dir / "last.ckpt"
            with self.progress.stage("train", self.segmenter_options.max_steps, tag):
                trainer.fit(model, train_dataloaders=loader, ckpt_path=str(last) if last.exists() else None)
            if trainer.is_global_zero:
                final.parent.mkdir(exist_ok=True)
                tmp = final.with_suffix(".tmp")
                torch.save(model.state_dict(), tmp)
                tmp.replace(final)
            models[group] = model
        return models

    def evaluate(self, split, models) -> dict:
        from torch.utils.data import DataLoader

        from benchmark.evaluation import MetricsCollector
        from benchmark.segmentation_data import SegmentationDataset, evaluation_items

        path = self.folder.root / "evaluation.json"
        done = json.loads(path.read_text()) if path.exists() else {}
        for name in sorted(split.categories):
            if name in done:
                continue
            model = models[None] if None in models else models[name]
            items = evaluation_items(split, name)
            loader = DataLoader(SegmentationDataset(items, self.cfg.data.image_size),
                                batch_size=self.segmenter_options.batch_size, num_workers=self.cfg.trainer.num_workers)
            collector = MetricsCollector(self.cfg.metrics)
            trainer = self.trainer(callbacks=[collector], devices_for="evaluate")
            with self.progress.stage("evaluate", len(loader), name):
                trainer.predict(model, dataloaders=loader, return_predictions=False)
            done[name] = collector.compute()
            atomic_write_text(path, json.dumps(done, indent=2))
        return done

    def report(self, split, synthetic, per_category: dict) -> dict:
        from benchmark import report
        from benchmark.results import build_results

        results = build_results(
            run_id=self.folder.root.name, config=self.resolved_config(), config_hash=digest(self.resolved_config()),
            versions=package_versions(), categories=per_category, timings=self.timings,
            synthetic_set=str(synthetic.root), synthetic_pairs=len(synthetic),
        )
        root = self.folder.root
        report.write_results(results, root)
        report.sample_grid(synthetic, split, root / "samples.png", self.cfg.data.image_size)
        report.category_bars(results, root / "per_category.png")
        self.log_wandb(results, root)
        return results

    # -- Lightning plumbing --------------------------------------------------------------------
    def trainer(self, max_steps=None, callbacks=(), logger=False, devices_for: str = "fit"):
        import lightning as L
        import torch

        from benchmark.progress import ProgressCallback

        t = self.cfg.trainer
        precision = t.precision or ("16-mixed" if torch.cuda.is_available() else "32-true")
        # evaluation gathers maps in one process; fit and generate use every device
        devices = 1 if devices_for == "evaluate" else t.devices
        return L.Trainer(
            accelerator=t.accelerator, devices=devices, num_nodes=t.num_nodes,
            strategy=t.strategy if devices_for != "evaluate" else "auto",
            precision=precision, max_steps=max_steps if max_steps is not None else -1,
            max_epochs=-1 if max_steps is not None else None,
            deterministic=t.deterministic, logger=logger, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=any(
                type(c).__name__ == "ModelCheckpoint" for c in callbacks),
            callbacks=[*callbacks, ProgressCallback(self.progress)], default_root_dir=str(self.folder.root),
            log_every_n_steps=10,
        )

    _wandb = None

    def wandb_logger(self):
        if not self.cfg.wandb:
            return False
        if self._wandb is None:
            from benchmark.tracking import make_wandb_logger

            self._wandb = make_wandb_logger(self.cfg, self.folder.root, self.resolved_config())
        return self._wandb

    def log_wandb(self, results: dict, root: Path) -> None:
        if not self.cfg.wandb:
            return
        from benchmark.tracking import log_results

        log_results(self.wandb_logger(), results, root)
