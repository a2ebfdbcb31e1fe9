"""SeaS (Dai et al., "Few-shot Industrial Anomaly Image Generation with Separation and Sharing
Fine-tuning"), anomalib-style: `prompts` (Unbalanced Abnormal prompt, learning-rate groups),
`loss` (DA, NA, total fine-tuning loss, RMP focal loss Eq. 10), `torch_model` (Refined Mask
Prediction branch with its Mask Refinement Modules, extended noise schedule, mask binarization).
The Lightning glue (training stages, sampling loop, presets) is not built yet; it belongs on the
shared `LatentDiffusionGenerator` base. See docs/seas.md.
"""
