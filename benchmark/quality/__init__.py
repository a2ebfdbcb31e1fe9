"""Generation-quality metrics of synthetic sets (IS, FID, KID, LPIPS, IC-LPIPS): see docs/quality.md.

Modules: `networks` (the one weight loader), `inception_metrics` (IS/FID/KID via torchmetrics),
`lpips_distance` (LPIPS matrices with bounded memory), `ic_lpips` (the clustering protocol),
`image_sets` (what is compared with what), `evaluate` (the report), `cli` (`bench quality`).
"""
