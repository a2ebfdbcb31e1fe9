"""BADG (Cho et al.): background-aware defect generation. The paper's math lives in `torch_model`
(masked cross-attention, tokens, composite sampling, mask refinement), `loss` (the disentanglement
loss) and `inversion` (the masked DDIM inversion); see docs/badg.md."""
