"""STAGE: graded diffusion with explicit mask alignment (Xu et al.), anomalib-style:
`torch_model` (the equations, the mask guidance adapter, the sampling loop), `loss` (Eq. 12),
`lightning_model` (StageGenerator: presets, and the loss and sampler hooks of the shared
`generators.diffusion.generator.LatentDiffusionGenerator`, which owns backbone, data and checkpoints).
"""

__all__ = ["StageGenerator", "StageOptions"]


def __getattr__(name):  # the Lightning glue imports Lightning; load it only when asked for
    if name in __all__:
        from generators.stage import lightning_model

        return getattr(lightning_model, name)
    raise AttributeError(name)
