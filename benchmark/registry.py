"""Name -> class tables for generators and segmenters, one line per entry (MMSeg-style registry).

Entries point at "module:Class" strings so `bench list` answers without importing diffusers or
mmseg (each costs 5-10 s); the class is imported only when a run asks for it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from benchmark.errors import BenchError, did_you_mean

IMPLEMENTED = "implemented"


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "package.module:ClassName"
    description: str
    status: str = IMPLEMENTED  # or "partial: <what is missing>" / "planned"
    # "module:Class" of its Options in a pydantic-only module, so the command line checks
    # `<kind>.options.*` before torch loads; None: only the shared options are checked early
    options: str | None = None
    # run settings of the method's paper protocol, per profile (e.g. {"paper": {"split": {"folds": 2}}}):
    # applied above the profile, below a config file, flags and --set (benchmark.config.build_config)
    protocol: dict = field(default_factory=dict)

    def load(self):
        return _import(self.target)

    def load_options(self):
        """The Options class, without importing the method (None when the entry names none)."""
        return _import(self.options) if self.options else None


def _import(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class Registry:
    def __init__(self, kind: str, entries: list[Entry]):
        self.kind = kind
        self._entries = {e.name: e for e in entries}

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries.values())

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise BenchError(f"unknown {self.kind} '{name}'{did_you_mean(name, self.names())}; "
                             f"known: {', '.join(self.names())}")
        entry = self._entries[name]
        if entry.status == "planned":
            raise BenchError(f"{self.kind} '{name}' is planned but not implemented yet (see `bench list`)")
        return entry

    def load(self, name: str):
        return self.get(name).load()


GENERATORS = Registry("generator", [
    Entry("real-only", "generators.baselines.real_only:RealOnly",
          "No synthesis: the segmenter sees only the few-shot real defects and normals (the floor).",
          options="generators.options:GeneratorOptions"),
    Entry("cutpaste", "generators.baselines.cutpaste:CutPasteScar",
          "CutPaste-scar: thin rotated, colour-jittered patches pasted inside the same image.",
          options="generators.baselines.options:CutPasteOptions"),
    Entry("draem", "generators.baselines.draem:DraemPerlin",
          "DRAEM-style: thresholded Perlin-noise masks blended with an anomaly-source texture.",
          options="generators.baselines.options:DraemOptions"),
    Entry("stage", "generators.stage.lightning_model:StageGenerator",
          "STAGE: graded diffusion with explicit mask alignment (frozen LDM, learned tokens, mask adapters). "
          "Smoke pairs: the source image outside the mask, noise in the latent cells under it (random frozen "
          "tiny backbone); paper preset not yet run with SD weights.",
          options="generators.stage.options:StageOptions"),
    Entry("seas", "generators.seas.lightning_model:SeasGenerator",
          "SeaS: separation and sharing fine-tuning of Stable Diffusion, refined mask prediction (predicted masks).",
          options="generators.seas.options:SeasOptions",
          status="partial: smoke pairs pass issue 11's mask/flat/noise counts but show no recognisable "
                 "defect, so the predicted masks cover none: the tiny-demo smoke backbone draws no localised "
                 "defect, even pre-trained on captioned defect images, nor in any recipe of a measured search "
                 "(docs/seas.md, diagnosis and recipe search); "
                 "paper preset not yet run with SD weights"),
    Entry("anomalydiffusion", "generators.anomalydiffusion:AnomalyDiffusion",
          "AnomalyDiffusion: spatial anomaly embedding + adaptive attention re-weighting (smoke masks from a "
          "stored-mask denoiser; docs/anomalydiffusion.md). Smoke pairs: noise in the latent cells under the "
          "mask (random frozen tiny backbone); paper preset not yet run with LDM weights.",
          options="generators.anomalydiffusion.options:AnomalyDiffusionOptions"),
    Entry("defectdiffu", "generators.defectdiffu.lightning_model:DefectDiffu",
          "DefectDiffu: three-part DiT with double-free guidance and a mask module (predicted masks).",
          options="generators.defectdiffu.options:DefectDiffuOptions",
          status="partial: smoke pair counts pass (47 of 48 masks non-empty and < half the image) but the "
                 "tiny pre-trained DiT's pairs are block textures with at best the product's colour (no visible "
                 "defect under the masks) and the smoke run takes 17.6 CPU-min (docs/defectdiffu.md); paper "
                 "preset not yet run with DiT-XL/2 weights"),
    Entry("badg", "generators.badg.lightning_model:BadgGenerator",
          "BADG: background-aware defect generation (fine-tuned U-Net, masked DDIM inversion, masked cross-attention). "
          "Smoke pairs: noise in the latent cells under the mask (random tiny backbone); paper preset not yet "
          "run with SD weights.",
          options="generators.badg.options:BadgOptions",
          protocol={"paper": {"split": {"folds": 2}}}),  # two 1/2 folds, averaged (BADG App. A.1)
])

SEGMENTERS = Registry("segmenter", [
    Entry("unet", "segmenters.unet:SmpUNet",
          "U-Net (segmentation-models-pytorch): ResNet-18 encoder in the smoke profile, ResNet-34 in paper.",
          options="segmenters.options:SmpUNetOptions"),
    Entry("unet-draem", "segmenters.unet_draem:DraemUNet",
          "DRAEM discriminative U-Net (AnomalyDiffusion/BADG downstream), focal loss.",
          options="segmenters.options:DraemUNetOptions"),
    Entry("bisenetv2", "segmenters.mmseg_models:BiSeNetV2",
          "BiSeNet V2 (mmsegmentation), with its 4 auxiliary heads for training.",
          options="segmenters.options:MMSegOptions"),
    Entry("stdc", "segmenters.mmseg_models:STDC",
          "STDC1 (mmsegmentation); option variant=stdc2.", options="segmenters.options:STDCOptions"),
    Entry("upernet", "segmenters.mmseg_models:UPerNet",
          "UPerNet with ResNet-50 (mmsegmentation), with its auxiliary FCN head.",
          options="segmenters.options:UPerNetOptions"),
    Entry("segformer", "segmenters.mmseg_models:SegFormer",
          "SegFormer MiT-B0 (mmsegmentation); option variant=b1..b5.", options="segmenters.options:SegFormerOptions"),
    Entry("lfd", "segmenters.lfd:LFDRoadSeg",
          "LFD-RoadSeg (Zhou et al., T-ITS 2024), 0.936M parameters, native PyTorch.",
          options="segmenters.options:LFDOptions"),
])
