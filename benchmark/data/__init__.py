"""Datasets: readers for the real layouts, the demo dataset, the validator and the few-shot split."""

from benchmark.data.dataset import CategoryData, Sample

__all__ = ["CategoryData", "Sample"]
