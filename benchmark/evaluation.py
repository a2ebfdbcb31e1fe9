"""Feeds a segmenter's predicted maps into the metric engine as they come out of `predict`,
so evaluation memory is one batch plus the engine's state."""

from __future__ import annotations

from lightning.pytorch.callbacks import BasePredictionWriter

from benchmark.config import MetricConfig


def metric_options(cfg: MetricConfig):
    from benchmark.metrics import MetricOptions

    return MetricOptions(**cfg.model_dump(exclude={"preset"}))


class MetricsCollector(BasePredictionWriter):
    def __init__(self, cfg: MetricConfig):
        super().__init__(write_interval="batch")
        from benchmark.metrics import AnomalyMetrics

        self.metric = AnomalyMetrics(metric_options(cfg))

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        # no clamp: the engine rejects values outside [0, 1], which catches a model returning logits
        prob, mask = prediction["prob"].detach().float().cpu(), prediction["mask"].cpu()
        if self.metric.options.pixel_score == "logit":  # STAGE: rank the anomaly channel's raw logit
            self.metric.update(prediction["logit"].detach().float().cpu(), mask, probabilities=prob)
        else:
            self.metric.update(prob, mask)

    def compute(self) -> dict:
        return self.metric.compute()
