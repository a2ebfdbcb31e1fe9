"""Downstream segmenters that judge each generator. Each is a LightningModule registered in
`benchmark.registry.SEGMENTERS`."""
