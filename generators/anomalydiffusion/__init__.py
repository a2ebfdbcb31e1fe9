"""AnomalyDiffusion (Hu et al., AAAI 2024): few-shot anomaly generation with a spatial anomaly
embedding. The paper's math lives in `loss` (masked textual inversion, Eq. 5/6; mask embedding,
Eq. 9), `spatial_encoder` (E: mask -> n text tokens, Sec. 3.2), `augment` (the joint image/mask
augmentation of Supp. B) and `torch_model` (blended latent diffusion, Eq. 1; adaptive attention
re-weighting, Eq. 7/8; mask generation, Eq. 10 and binarisation; DDIM settings); the generator
(Lightning glue and presets) is `lightning_model.AnomalyDiffusionGenerator`; see
docs/anomalydiffusion.md."""


def __getattr__(name: str):
    # the registry's entry point; loaded lazily so the math modules import without Lightning
    if name in ("AnomalyDiffusion", "AnomalyDiffusionGenerator"):
        from generators.anomalydiffusion.lightning_model import AnomalyDiffusionGenerator

        return AnomalyDiffusionGenerator
    raise AttributeError(name)
