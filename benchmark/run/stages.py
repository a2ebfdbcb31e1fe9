"""The stages of `bench run`, in order. Each has `is_done(ctx)` (its output is in the run folder
and state.json says it finished), `load(ctx)` (bring that output back into the context) and
`run(ctx)` (do the work, continuing whatever part of it a killed run left: pairs already in the
synthetic set, Lightning checkpoints of a fit, categories already evaluated)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark.errors import BenchError
from benchmark.run.context import RunContext, package_versions, source_revision
from benchmark.storage import atomic_torch_save, atomic_write_text, config_digest, file_digest, load_weights


class Stage:
    name: str

    def enabled(self, ctx: RunContext) -> bool:
        """False: the configuration leaves this stage out (it is skipped, not recorded)."""
        return True

    def preflight(self, ctx: RunContext) -> None:
        """Checks of what the stage needs from outside the run (e.g. weight files), made before
        the run's first stage, so a missing file answers in seconds, not after hours of training."""

    def is_done(self, ctx: RunContext) -> bool:
        return ctx.folder.is_done(self.name)

    def load(self, ctx: RunContext) -> None:
        """Put the finished stage's output into `ctx` (default: running it again is cheap and
        skips everything already on disk)."""
        self.run(ctx)

    def run(self, ctx: RunContext) -> None:
        raise NotImplementedError


# -- data and split --------------------------------------------------------------------------------
class DataStage(Stage):
    """Reads the dataset (or makes the demo), checks it, and writes the few-shot split (on rank
    zero; the other ranks read the split once it is written)."""

    name = "data"

    def load(self, ctx: RunContext) -> None:
        from benchmark.data.split import FewShotSplit

        ctx.split = FewShotSplit.load(ctx.folder.root / "split.json")

    def is_done(self, ctx: RunContext) -> bool:
        return super().is_done(ctx) and (ctx.folder.root / "split.json").exists()

    def run(self, ctx: RunContext) -> None:
        ctx.ranks.on_zero(lambda: self.make_split(ctx))
        if not ctx.ranks.is_zero:
            self.load(ctx)

    def make_split(self, ctx: RunContext) -> None:
        from benchmark.data.layouts import read_dataset
        from benchmark.data.split import few_shot_split

        path = ctx.folder.root / "split.json"
        if path.exists():
            return self.load(ctx)
        root, layout = data_root(ctx)
        categories = read_dataset(root, layout, ctx.cfg.data.categories)
        if ctx.cfg.data.root is not None:
            check_pixels(root, layout, categories)
        for name, cat in categories.items():
            if not cat.train_good:
                raise BenchError(f"{root}/{name}: category has no normal training images")
            if not cat.defects:
                raise BenchError(f"{root}/{name}: category has no defect images with masks")
        ctx.split = few_shot_split(categories, ctx.cfg.split.fraction, ctx.cfg.split.order, ctx.cfg.seed,
                                   fold=ctx.cfg.split.fold)
        ctx.split.save(path)


def data_root(ctx: RunContext) -> tuple[Path, str]:
    if ctx.cfg.data.root is None:
        from benchmark.data.demo import demo_dataset_path

        return demo_dataset_path(ctx.cache, seed=ctx.cfg.data.demo_seed), "mvtec"
    root = Path(ctx.cfg.data.root).expanduser()
    if not root.is_dir():
        raise BenchError(f"{root}: data root does not exist; pass --data-root pointing at the dataset "
                         "folder, or omit it to use the built-in demo dataset")
    return root, ctx.cfg.data.layout


def check_pixels(root: Path, layout: str, categories) -> None:
    """Unreadable files, image/mask size mismatches, non-binary or empty masks stop the run here,
    before hours of generation, with the first few named (headers only: seconds)."""
    from benchmark.data.check import check_samples
    from benchmark.data.layouts import get_layout

    samples = [s for c in categories.values() for s in c.all_samples()]
    problems = check_samples(samples, get_layout(layout).mask_encoding)
    if problems:
        shown = "; ".join(str(p) for p in problems[:3])
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise BenchError(f"{shown}{more}; list them all with `bench data check --data-root {root} "
                         f"--layout {layout}`")


# -- generation ------------------------------------------------------------------------------------
def synthetic_key(ctx: RunContext) -> str:
    """What determines a synthetic set; a set is reused only when all of it matches."""
    return config_digest({
        "generator": ctx.cfg.generator.name,
        # a changed generator (new equations, a fixed bug) must not reuse pairs made by the old one
        "code_version": getattr(ctx.generator_cls, "code_version", 1),
        "options": ctx.generator_options.model_dump(mode="json"),
        "split": ctx.split.to_json(),
        "seed": ctx.cfg.seed,
        "image_size": ctx.cfg.data.image_size,
        # a given trained generator makes a different set than one trained here
        "checkpoint": file_digest(ctx.generator_checkpoint) if ctx.generator_checkpoint else None,
    })


class GenerateStage(Stage):
    """Fits the generator (when it learns; resumable from its Lightning checkpoint) and writes the
    synthetic set to the cache, skipping pairs already there; links it into the run folder.

    On N ranks: the fit is data-parallel, each rank writes the pairs of its shard of the pending
    requests to its own manifest shard, and rank zero merges the shards after a barrier (no shard
    is removed while another rank may still read it)."""

    name = "generate"

    def preflight(self, ctx: RunContext) -> None:
        ctx.generator_cls.preflight(ctx.generator_options, ctx.cfg.data.image_size)

    def run(self, ctx: RunContext) -> None:
        from torch.utils.data import DataLoader

        from benchmark.contracts import collate_requests
        from benchmark.synthetic import SyntheticSet, SyntheticSetWriter

        key = synthetic_key(ctx)
        synthetic = SyntheticSet(ctx.cache / "synthetic" / f"{ctx.cfg.generator.name}-{key}")
        generator = ctx.generator_cls(ctx.generator_options, ctx.cfg.data.image_size)
        generator.setup_split(ctx.split)
        requests = generator.plan(ctx.split, ctx.cfg.seed)
        # rank zero reads the set, so every rank predicts the same list (its sampler shards it)
        pending_ids = set(ctx.ranks.broadcast([r.id for r in synthetic.pending(requests)]
                                              if ctx.ranks.is_zero else None))
        pending = [r for r in requests if r.id in pending_ids]
        ctx.synthetic = synthetic
        if not pending:
            ctx.ranks.on_zero(lambda: link_synthetic(ctx))
            return
        if ctx.ranks.is_zero:
            synthetic.write_meta({
                "generator": ctx.cfg.generator.name, "key": key, "config": ctx.resolved_config()["generator"],
                "code_version": getattr(ctx.generator_cls, "code_version", 1),
                "image_size": ctx.cfg.data.image_size, "seed": ctx.cfg.seed, "versions": package_versions(),
                "requests": len(requests),
            })
        if ctx.generator_cls.trainable:
            fit_generator(ctx, generator, synthetic.root / "generator.pt")
        from benchmark.run.interrupt import StopAtBatchEnd

        trainer = ctx.trainer(callbacks=[SyntheticSetWriter(synthetic, ctx.cfg.generator.name),
                                         StopAtBatchEnd(ctx.stop)])
        loader = DataLoader(pending, batch_size=ctx.generator_options.batch_size, collate_fn=collate_requests)
        with ctx.progress.stage("generate", ctx.ranks.share(len(pending))):
            trainer.predict(generator, dataloaders=loader, return_predictions=False)
        ctx.ranks.barrier()  # every rank's shard is written
        ctx.ranks.on_zero(lambda: finish_synthetic(ctx, requests))


def finish_synthetic(ctx: RunContext, requests) -> None:
    """Rank zero, after every rank wrote its pairs: merge the manifest shards, check that no pair
    is missing, link the set into the run folder."""
    synthetic = ctx.synthetic
    synthetic.merge_manifests()
    missing = {r.id for r in requests} - synthetic.done_ids()
    if missing:
        raise BenchError(f"{synthetic.root}: {len(missing)} requested pairs were not written "
                         f"(e.g. {sorted(missing)[0]}); run again with --resume")
    link_synthetic(ctx)


def fit_generator(ctx: RunContext, generator, trained: Path) -> None:
    """A given trained generator (`bench generate --checkpoint`), else the one trained for this
    set, else a fit that checkpoints through Lightning into the run folder and continues from
    its last checkpoint when the run is resumed."""
    if ctx.generator_checkpoint is not None:
        generator.load_trained(ctx.generator_checkpoint)
        return
    if ctx.ranks.broadcast(trained.exists() if ctx.ranks.is_zero else None):
        generator.load_trained(trained)
        return
    steps = getattr(generator.options, "train_steps", None)
    checkpoints = ctx.folder.root / "checkpoints" / "generator"
    trainer = ctx.fit(generator, checkpoints, steps, ("fit-gen", steps))
    if trainer.is_global_zero:
        generator.save_trained(trained)
        ctx.drop_fit_checkpoints(checkpoints)


def link_synthetic(ctx: RunContext) -> None:
    link = ctx.folder.root / "synthetic"
    if not link.exists() and not link.is_symlink():
        link.symlink_to(ctx.synthetic.root.resolve(), target_is_directory=True)


# -- generation quality ----------------------------------------------------------------------------
class QualityStage(Stage):
    """With `quality.enabled`: IS, FID, KID, LPIPS and IC-LPIPS of the synthetic set against the
    split's real anomalies (docs/quality.md), written to quality.json; the report adds them to
    results.json under `quality`. Weight files are checked before the run starts."""

    name = "quality"

    def enabled(self, ctx: RunContext) -> bool:
        return ctx.cfg.quality.enabled

    def preflight(self, ctx: RunContext) -> None:
        from benchmark.quality.networks import RUN_HINTS, weight_files

        q = ctx.cfg.quality
        weight_files(q.features, q.lpips_net, q.weights, RUN_HINTS)

    def is_done(self, ctx: RunContext) -> bool:
        return super().is_done(ctx) and (ctx.folder.root / "quality.json").exists()

    def load(self, ctx: RunContext) -> None:
        ctx.quality = json.loads((ctx.folder.root / "quality.json").read_text())

    def run(self, ctx: RunContext) -> None:
        from benchmark.quality.evaluate import evaluate_synthetic_set, write_report

        def measure() -> dict:
            types = {(r["category"], r["defect"]) for r in ctx.synthetic.records()}
            with ctx.progress.stage("quality", len(types)):
                report = evaluate_synthetic_set(ctx.synthetic.root, ctx.split, ctx.cfg.quality,
                                                on_defect=lambda category, defect: ctx.progress.advance(1))
            write_report(report, ctx.folder.root / "quality.json")
            return report

        ctx.quality = ctx.ranks.broadcast(ctx.ranks.on_zero(measure))  # one rank measures, the others wait


# -- segmenter training ----------------------------------------------------------------------------
def training_steps(max_steps: int | None, max_epochs: int | None, batches_per_epoch: int) -> int:
    """Optimizer steps a fit makes (in one process): Lightning stops at `max_steps` or after
    `max_epochs` epochs, whichever comes first."""
    limits = [n for n in (max_steps, None if max_epochs is None else max_epochs * batches_per_epoch) if n is not None]
    return min(limits)


class TrainStage(Stage):
    """One segmenter (unified) or one per category; each fit resumes from its Lightning checkpoint
    and ends in `segmenter/<group>.pt`, the one copy of its weights kept (the checkpoint goes)."""

    name = "train"

    def preflight(self, ctx: RunContext) -> None:
        weights = ctx.segmenter_options.weights_file
        if weights and not Path(weights).is_file():
            raise BenchError(f"{weights}: segmenter weights not found; give a local checkpoint with "
                             "--set segmenter.options.weights=<file>, or weights=none for random initial weights")

    def groups(self, ctx: RunContext) -> list[str | None]:
        return [None] if ctx.cfg.training == "unified" else sorted(ctx.split.categories)

    def run(self, ctx: RunContext) -> None:
        import lightning as L

        from benchmark.segmentation_data import SegmentationDataModule, training_items

        for group in self.groups(ctx):
            L.seed_everything(ctx.cfg.seed, workers=True, verbose=False)  # each model as if trained alone
            tag = group or "unified"
            final = ctx.folder.root / "segmenter" / f"{tag}.pt"
            model = ctx.segmenter_cls(ctx.segmenter_options)
            if ctx.ranks.broadcast(final.exists() if ctx.ranks.is_zero else None):
                model.load_state_dict(load_weights(final))
                ctx.models[group] = model
                if ctx.ranks.is_zero:  # left by a kill after the save
                    ctx.drop_fit_checkpoints(ctx.folder.root / "checkpoints" / tag)
                continue
            # on N ranks Lightning shards the loader with a DistributedSampler (resumable per epoch)
            o = ctx.segmenter_options
            data = SegmentationDataModule(training_items(ctx.split, ctx.synthetic, group), ctx.cfg.data.image_size,
                                          o.batch_size, ctx.cfg.seed, ctx.cfg.trainer.num_workers,
                                          resumable=not ctx.ranks.distributed, epoch_samples=o.epoch_samples)
            steps = training_steps(o.max_steps, o.max_epochs, data.batches_per_epoch())
            checkpoints = ctx.folder.root / "checkpoints" / tag
            trainer = ctx.fit(model, checkpoints, o.max_steps, ("train", steps, tag),
                              logger=ctx.wandb_logger(), max_epochs=o.max_epochs, total_steps=steps, datamodule=data)
            if trainer.is_global_zero:  # DDP left the same weights on every rank
                atomic_torch_save(model.state_dict(), final)
                ctx.drop_fit_checkpoints(checkpoints)
            ctx.models[group] = model

    def load(self, ctx: RunContext) -> None:
        self.run(ctx)  # every group's final weights exist: only loads them


# -- evaluation ------------------------------------------------------------------------------------
# evaluation.json keeps, next to each category's metrics, how they were computed (mode, map size)
EVALUATED_AS = "evaluated_as"


class EvaluateStage(Stage):
    """Per category: predict the held-out defects and test normals, feed the metric engine;
    finished categories are kept in evaluation.json. On N ranks each predicts a shard of the
    images and the engine's states are gathered before `compute` (torchmetrics' sync)."""

    name = "evaluate"

    def run(self, ctx: RunContext) -> None:
        from torch.utils.data import DataLoader

        from benchmark.evaluation import MetricsCollector
        from benchmark.run.interrupt import StopAtBatchEnd
        from benchmark.segmentation_data import SegmentationDataset, evaluation_items

        path = ctx.folder.root / "evaluation.json"
        done = ctx.ranks.broadcast((json.loads(path.read_text()) if path.exists() else {})
                                   if ctx.ranks.is_zero else None)
        for name in sorted(ctx.split.categories):
            if name in done:
                continue
            model = ctx.models[None] if None in ctx.models else ctx.models[name]
            items = evaluation_items(ctx.split, name)
            loader = DataLoader(SegmentationDataset(items, ctx.cfg.data.image_size),
                                batch_size=ctx.segmenter_options.batch_size, num_workers=ctx.cfg.trainer.num_workers)
            collector = MetricsCollector(ctx.cfg.metrics)
            callbacks = [collector, StopAtBatchEnd(ctx.stop)]
            if ctx.save_predictions:
                from benchmark.predictions import PredictionWriter

                callbacks.append(PredictionWriter(ctx.folder.root / "predictions"))
            trainer = ctx.trainer(callbacks=callbacks)
            batches = -(-ctx.ranks.share(len(loader.dataset)) // loader.batch_size)
            with ctx.progress.stage("evaluate", batches, name):
                trainer.predict(model, dataloaders=loader, return_predictions=False)
            done[name] = {**collector.compute(), EVALUATED_AS: collector.provenance(ctx.ranks)}
            if ctx.ranks.is_zero:
                atomic_write_text(path, json.dumps(done, indent=2))
        ctx.per_category = done

    def load(self, ctx: RunContext) -> None:
        ctx.per_category = json.loads((ctx.folder.root / "evaluation.json").read_text())

    def is_done(self, ctx: RunContext) -> bool:
        return super().is_done(ctx) and (ctx.folder.root / "evaluation.json").exists()


# -- report ----------------------------------------------------------------------------------------
class ReportStage(Stage):
    """results.json, metrics.csv, samples.png, per_category.png, and the W&B run (rank zero)."""

    name = "report"

    def run(self, ctx: RunContext) -> None:
        if ctx.ranks.is_zero:
            self.write(ctx)

    def write(self, ctx: RunContext) -> None:
        from benchmark import report
        from benchmark.results import build_results

        root = ctx.folder.root
        categories = {c: {k: v for k, v in m.items() if k != EVALUATED_AS} for c, m in ctx.per_category.items()}
        results = build_results(
            run_id=root.name, config=ctx.resolved_config(), config_hash=config_digest(ctx.resolved_config()),
            versions=package_versions(), categories=categories,
            timings={k: v for k, v in ctx.folder.timings().items() if k != self.name},
            evaluation=evaluation_provenance(ctx),
            precision=ctx.resolved_precision(), **source_revision(),
            determinism={k: v for k, v in ctx.resolved_determinism().items() if k != "lightning"},
            world_size=ctx.ranks.world_size,
            synthetic_set=str(ctx.synthetic.root), synthetic_pairs=len(ctx.synthetic),
        )
        if ctx.quality is not None:
            results["quality"] = ctx.quality
        report.write_results(results, root)
        report.sample_grid(ctx.synthetic, ctx.split, root / "samples.png", ctx.cfg.data.image_size)
        report.category_bars(results, root / "per_category.png")
        if ctx.cfg.wandb:
            from benchmark.tracking import log_results

            log_results(ctx.wandb_logger(), results, root)
        ctx.results = results

    def load(self, ctx: RunContext) -> None:
        if ctx.ranks.is_zero:
            ctx.results = json.loads((ctx.folder.root / "results.json").read_text())

    def is_done(self, ctx: RunContext) -> bool:
        return super().is_done(ctx) and (ctx.folder.root / "results.json").exists()


def evaluation_provenance(ctx: RunContext) -> dict:
    """How the metrics were computed: the resolved metric options, the map size (H, W) they were
    computed at (null when categories differ; each category lists its own), and per category
    whether the pixel curves were exact or binned (`auto` decides by the pixel count)."""
    per_category = {}
    for name, entry in sorted(ctx.per_category.items()):
        seen = entry.get(EVALUATED_AS, {})  # absent in folders evaluated before this was recorded
        per_category[name] = {"mode": seen.get("mode"), "image_sizes": seen.get("image_size", [])}
    sizes = {tuple(s) for c in per_category.values() for s in c["image_sizes"]}
    return {"metric_options": ctx.cfg.metrics.to_json(),
            "image_size": list(sizes.pop()) if len(sizes) == 1 else None,
            "categories": per_category}


STAGES: tuple[type[Stage], ...] = (DataStage, GenerateStage, QualityStage, TrainStage, EvaluateStage, ReportStage)
