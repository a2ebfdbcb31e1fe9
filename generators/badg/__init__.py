"""BADG (Cho et al.): background-aware defect generation, anomalib-style: `torch_model` (masked
cross-attention, tokens, composite sampling, mask refinement, the model), `loss` (the
disentanglement loss), `lightning_model` (BadgGenerator: presets, and the loss and sampler hooks of
the shared `generators.diffusion.generator.LatentDiffusionGenerator`). The masked DDIM inversion is
the diffusion core's (`generators.diffusion.inversion`); see docs/badg.md."""

__all__ = ["BadgGenerator", "BadgOptions"]


def __getattr__(name):  # the Lightning glue imports Lightning; load it only when asked for
    if name in __all__:
        from generators.badg import lightning_model

        return getattr(lightning_model, name)
    raise AttributeError(name)
