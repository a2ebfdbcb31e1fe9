"""SIAS-Bench: measure how much each defect-synthesis method helps a supervised segmenter."""

__version__ = "0.1.0"
