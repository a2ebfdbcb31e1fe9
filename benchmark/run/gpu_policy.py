"""GPU-safe defaults: the numeric precision and the determinism a run uses when the configuration
leaves them unset, decided per profile and device and recorded in results.json (`run.precision`,
`run.determinism`), so a table says how it was made (docs/scale.md, "GPU-safe defaults").
"""

from __future__ import annotations

# Every segmenter upsamples its logits with bilinear F.interpolate and trains through it; PyTorch
# has no deterministic CUDA kernel for that backward (upsample_bilinear2d_backward_out_cuda), so
# torch.use_deterministic_algorithms(True) raises at the first GPU training step.
CUDA_DETERMINISM_REASON = ("CUDA: the backward of bilinear F.interpolate (every segmenter's upsampling) has no "
                           "deterministic CUDA kernel, so strict mode would raise at the first training step; "
                           "warn_only keeps every other op deterministic and warns at that one")
CPU_DETERMINISM_REASON = "CPU: every op the methods use has a deterministic kernel"
SET_REASON = "set in the configuration (trainer.deterministic)"

# precision when trainer.precision is unset, per profile, on CUDA (CPU and other devices: 32-true)
CUDA_PRECISION = {
    # the smoke table is the CI reference: full precision on every device, so a GPU run checks the same numbers
    "smoke": "32-true",
    # mixed precision with a loss scaler: half the activation memory of the diffusion generators
    # and segmenters at 256-512 px, the usual setting of the methods' public training code on GPUs
    "paper": "16-mixed",
}


def uses_cuda(trainer) -> bool:
    """Whether a run with these `TrainerConfig` settings runs on CUDA devices."""
    import torch

    accelerator = str(trainer.accelerator)
    return accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())


def resolved_precision(cfg) -> str:
    """`trainer.precision`, or the profile's choice for the device (CUDA_PRECISION)."""
    if cfg.trainer.precision:
        return cfg.trainer.precision
    return CUDA_PRECISION[cfg.profile] if uses_cuda(cfg.trainer) else "32-true"


def resolved_determinism(cfg) -> dict:
    """{"lightning": the Trainer's `deterministic` value (True, "warn" or False), "mode": "strict",
    "warn" or "off", "reason": why}: `trainer.deterministic` when set, else strict on CPU and
    warn-only on CUDA (CUDA_DETERMINISM_REASON)."""
    value = cfg.trainer.deterministic
    if value is None:
        value, reason = ("warn", CUDA_DETERMINISM_REASON) if uses_cuda(cfg.trainer) else (True, CPU_DETERMINISM_REASON)
    else:
        reason = SET_REASON
    mode = "warn" if value == "warn" else "strict" if value else "off"
    return {"lightning": value, "mode": mode, "reason": reason}
