"""DefectDiffu's condition vocabulary and prompt templates.

- Unified defect names across products (supplement Table 2): similar defects of different products
  share one name, so the defect blocks learn one inter-product direction per name (Sec. 3.2).
- `GOOD` is the null-defect token c_g (Sec. 3.3): normal images and the defect condition dropped by
  Algorithm 1 read "A photo of good".
- The TDIA prompt templates (Sec. 3.2): background c_p, defect c_d, fusion c_f.
"""

from __future__ import annotations

from dataclasses import dataclass

GOOD = "good"  # c_g, Sec. 3.3
NULL_PROMPT = ""  # the null condition (empty prompt), the usual classifier-free-guidance choice

# Supplement Table 2 (MVTec AD): product -> {original defect: uni_defect}. Every MVTec AD defect type
# is listed, renamed or not, so a typo in a product's folder names fails loudly (`unified_defect`).
# The extracted table is garbled in places; cells we read with doubt are marked.
UNIFIED_DEFECTS: dict[str, dict[str, str]] = {
    "bottle": {"broken_large": "broken", "broken_small": "broken", "contamination": "contamination"},
    "cable": {"bent_wire": "bent", "cable_swap": "cable_swap", "combined": "combined",
              "cut_inner_insulation": "cut", "cut_outer_insulation": "cut", "missing_cable": "missing",
              "missing_wire": "missing", "poke_insulation": "hole"},
    "capsule": {"crack": "crack", "faulty_imprint": "faulty_imprint", "poke": "hole", "scratch": "scratch",
                "squeeze": "squeeze"},
    "carpet": {"color": "color", "cut": "cut", "hole": "hole", "metal_contamination": "metal_contamination",
               "thread": "thread"},
    # grid "broken": the cell is unreadable in the extracted table; kept unchanged (doubtful)
    "grid": {"bent": "bent", "broken": "broken", "glue": "liquid", "metal_contamination": "metal_contamination",
             "thread": "thread"},
    "hazelnut": {"crack": "crack", "cut": "cut", "hole": "hole", "print": "print"},
    "leather": {"color": "color", "cut": "cut", "fold": "fold", "glue": "liquid", "poke": "hole"},
    "metal_nut": {"bent": "bent", "color": "color", "flip": "flip", "scratch": "scratch"},  # flip: garbled cell
    "pill": {"color": "color", "combined": "combined", "contamination": "contamination", "crack": "crack",
             "faulty_imprint": "faulty_imprint", "pill_type": "pill_type", "scratch": "scratch"},
    "screw": {"manipulated_front": "manipulated_front", "scratch_head": "scratch", "scratch_neck": "scratch",
              "thread_side": "thread", "thread_top": "thread"},
    "tile": {"crack": "crack", "glue_strip": "glue_strip", "gray_stroke": "color", "oil": "liquid", "rough": "rough"},
    "toothbrush": {"defective": "bent"},  # as printed
    "transistor": {"bent_lead": "bent", "cut_lead": "cut", "damaged_case": "damaged_case", "misplaced": "misplaced"},
    "wood": {"color": "color", "combined": "combined", "hole": "hole", "liquid": "liquid", "scratch": "scratch"},
    "zipper": {"broken_teeth": "broken", "combined": "combined", "fabric_border": "cut", "fabric_interior": "cut",
               "rough": "rough", "split_teeth": "split", "squeezed_teeth": "squeeze"},
}


def unified_defect(product: str, defect: str) -> str:
    """Table 2's uni_defect of a product's defect type. "good" stays "good"; products outside MVTec
    AD (VisA, demo data) keep their own names: the paper unifies MVTec AD only."""
    if defect == GOOD:
        return GOOD
    table = UNIFIED_DEFECTS.get(product)
    if table is None:
        return defect
    if defect not in table:
        raise KeyError(f"{product}/{defect} is not an MVTec AD defect type of supplement Table 2; "
                       f"known: {sorted(table)}")
    return table[defect]


def words(name: str) -> str:
    """A folder name as prompt words: "metal_contamination" -> "metal contamination"."""
    return name.replace("_", " ")


@dataclass(frozen=True)
class PartPrompts:
    """The three TDIA prompts of one sample (Sec. 3.2), in block order: background, defect, fusion."""

    background: str
    defect: str
    fusion: str

    def as_tuple(self) -> tuple[str, str, str]:
        return self.background, self.defect, self.fusion


def part_prompts(product: str | None, defect: str) -> PartPrompts:
    """Sec. 3.2 templates for a (possibly dropped) product and a unified defect name (or "good"):
    c_p "A photo of {product}", c_d "A photo of {defect}", c_f "A photo of {defect} {product}".
    A dropped product (None, the null c_p of Algorithm 1 and Eq. 4) gives the empty prompt to the
    background blocks and drops the product word from the fusion prompt (the paper is silent on c_f
    under dropout; this keeps c_f "defect + whatever background condition is present")."""
    d = words(defect)
    if product is None:
        return PartPrompts(NULL_PROMPT, f"A photo of {d}", f"A photo of {d}")
    p = words(product)
    return PartPrompts(f"A photo of {p}", f"A photo of {d}", f"A photo of {d} {p}")


def guidance_prompts(product: str, defect: str) -> tuple[PartPrompts, PartPrompts, PartPrompts]:
    """The three conditions of double-free guidance (Eq. 4; Eq. 12 with a target product and a source
    defect): (c_g, null), (c_g, c_p), (c_d, null)."""
    return part_prompts(None, GOOD), part_prompts(product, GOOD), part_prompts(None, defect)
