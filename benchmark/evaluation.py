"""Feeds a segmenter's predicted maps into the metric engine as they come out of `predict`,
so evaluation memory is one batch plus the engine's state."""

from __future__ import annotations

from lightning.pytorch.callbacks import BasePredictionWriter

from benchmark.metrics import AnomalyMetrics, MetricOptions


class MetricsCollector(BasePredictionWriter):
    def __init__(self, options: MetricOptions):
        super().__init__(write_interval="batch")
        self.metric = AnomalyMetrics(options)
        self.map_sizes: set[tuple[int, int]] = set()  # the H x W the metrics were computed at

    def setup(self, trainer, pl_module, stage: str) -> None:
        # under DDP the engine's states are all-gathered at `compute`: they must live on the
        # rank's device (NCCL gathers CUDA tensors only); one process keeps them on the CPU
        if trainer.world_size > 1:
            self.metric.to(trainer.strategy.root_device)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        # no clamp: the engine rejects values outside [0, 1], which catches a model returning logits
        self.map_sizes.add(tuple(int(n) for n in prediction["prob"].shape[-2:]))
        prob, mask = prediction["prob"].detach().float().cpu(), prediction["mask"].cpu()
        if self.metric.options.pixel_score == "logit":  # STAGE: rank the anomaly channel's raw logit
            self.metric.update(prediction["logit"].detach().float().cpu(), mask, probabilities=prob)
        else:
            self.metric.update(prob, mask)

    def compute(self) -> dict:
        return self.metric.compute()

    def provenance(self, ranks=None) -> dict:
        """How the last `compute` got its numbers: "exact" or "binned" pixel curves, and the
        map size(s) H x W the metrics were computed at (of every rank's shard, with `ranks`)."""
        sizes = set().union(*ranks.gather(self.map_sizes)) if ranks is not None else self.map_sizes
        return {"mode": self.metric.resolved_mode, "image_size": [list(s) for s in sorted(sizes)]}
