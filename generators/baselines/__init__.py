"""Training-free baselines: real-only (no synthesis), CutPaste-scar and DRAEM-style Perlin synthesis."""
