"""Defect-synthesis methods. Each is a LightningModule registered in `benchmark.registry.GENERATORS`."""
