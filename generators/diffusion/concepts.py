"""Concepts and prompts: what a text-conditioned defect generator is asked to draw.

A concept is one (category, defect type) of the few-shot split that has training defects; learned
tokens (`tokens.LearnedTokens`) are registered per concept, and the prompt text in front of them
is "class name + anomaly type" by default (STAGE Sec. IV-A; "damaged" for BTAD there).
"""

from __future__ import annotations

from benchmark.contracts import FewShotSplit


def concept_name(category: str, defect: str) -> str:
    return f"{category}/{defect}"


def prompt_text(category: str, defect: str, template: str = "{category} {defect}") -> str:
    """The prompt before any learned tokens; underscores read as spaces ("metal_nut" -> "metal nut")."""
    return template.format(category=category, defect=defect).replace("_", " ")


def split_concepts(split: FewShotSplit) -> list[tuple[str, str]]:
    """(category, defect) of every defect type with at least one few-shot training defect, in split order."""
    return [(c.name, d) for c in split.categories.values() for d in c.defect_types if c.train_defects[d]]
