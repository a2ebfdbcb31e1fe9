"""DefectDiffu (Shi et al., "Few-shot Defect Image Generation based on Consistency Modeling"),
anomalib-style, the paper's math only:
- `vocabulary`: unified defect names (supplement Table 2), "good" as c_g, TDIA prompt templates.
- `torch_model`: the three-part DiT (TDIA, Sec. 3.2), the mask generation module, mask averaging
  over the last steps and isodata binarisation (Sec. 3.4).
- `double_free`: condition dropout (Algorithm 1), guidance (Eq. 4), zero-shot transfer (Eq. 12),
  the w_d sweep.
- `loss`: mask loss (Eq. 6), Adaptive Attention-enhanced Loss (Eq. 7-10), total (Eq. 11).
- `sampling`: Eq. 4 at every scheduler step, the mask read, averaged and thresholded (Sec. 3.3-3.4).
- `lightning_model`: `DefectDiffu`, the generator on the shared `LatentDiffusionGenerator` base
  (training with Algorithm 1 and Eq. 11, sampling with Eq. 4 / Eq. 12, presets). See docs/defectdiffu.md.
"""
