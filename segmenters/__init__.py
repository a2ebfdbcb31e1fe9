"""Downstream segmenters that judge each generator. Each is a LightningModule registered in
`benchmark.registry.SEGMENTERS`."""

# Every distinct model the zoo builds: case id -> (registry name, options). Tests and
# tools/perf/segmenters_bench.py iterate over the same list.
VARIANTS = {
    "unet": ("unet", {}),
    "unet-draem": ("unet-draem", {}),
    "bisenetv2": ("bisenetv2", {}),
    "stdc1": ("stdc", {}),
    "stdc2": ("stdc", {"variant": "stdc2"}),
    "upernet": ("upernet", {}),
    "segformer": ("segformer", {}),
    "lfd": ("lfd", {}),
}
