"""SeaS (Dai et al., "Few-shot Industrial Anomaly Image Generation with Separation and Sharing
Fine-tuning"), anomalib-style: `prompts` (Unbalanced Abnormal prompt, learning-rate groups),
`loss` (DA, NA, total fine-tuning loss, RMP focal loss Eq. 10), `torch_model` (Refined Mask
Prediction branch with its Mask Refinement Modules, extended noise schedule, mask binarization).
`lightning_model.SeasGenerator` is the Lightning glue on the shared `LatentDiffusionGenerator`
base (training stages, sampling loop, presets). See docs/seas.md.
"""
