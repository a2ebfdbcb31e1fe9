"""samples.png: one row per category, every category shown, more pages when there are many."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from benchmark.cli import main
from benchmark.report import _round_robin, sample_grid


def rows_of(png: Path) -> list[str]:
    return Image.open(png).text["Description"].removeprefix("rows: ").split(", ")


def test_a_three_category_demo_runs_samples_have_a_row_per_category(tmp_path, one_thread):
    out = tmp_path / "run"
    # wood is the category the old fixed-size grid left out
    assert main(["--quiet", "run", "--no-wandb", "--output", str(out), "--image-size", "64",
                 "--categories", "carpet_like,wood,pill", "--set", "segmenter.options.max_steps=2",
                 "--set", "segmenter.options.batch_size=4", "--set", "generator.options.pairs_per_type=2"]) == 0
    assert rows_of(out / "samples.png") == ["carpet_like", "wood", "pill"]
    assert Image.open(out / "samples.png").size == (1200, 630)  # 6 columns x 2 in, 3 rows x 2.1 in, at 100 dpi
    assert not (out / "samples-2.png").exists()


class FakeSet:
    """A synthetic set's records() and root, over tiny PNGs."""

    def __init__(self, root: Path, categories: list[str], types: list[str], per_type: int):
        self.root, self._records = root, []
        image = np.zeros((8, 8, 3), np.uint8)
        mask = np.zeros((8, 8), np.uint8)
        mask[2:4, 2:4] = 255
        Image.fromarray(image).save(root / "i.png")
        Image.fromarray(mask).save(root / "m.png")
        for c in categories:
            for t in types:
                for k in range(per_type):
                    self._records.append({"category": c, "defect": t, "image": "i.png", "mask": "m.png", "id": f"{c}{t}{k}"})

    def records(self):
        return self._records


def test_many_categories_continue_on_further_pages(tmp_path):
    names = [f"c{i}" for i in range(10)]
    synthetic = FakeSet(tmp_path, names, ["a", "b"], per_type=3)
    split = SimpleNamespace(categories={n: None for n in reversed(names)})  # the split's order is kept
    written = sample_grid(synthetic, split, tmp_path / "samples.png", 8, per_row=6, rows_per_page=4)
    assert [p.name for p in written] == ["samples.png", "samples-2.png", "samples-3.png"]
    assert [rows_of(p) for p in written] == [["c9", "c8", "c7", "c6"], ["c5", "c4", "c3", "c2"], ["c1", "c0"]]
    assert [Image.open(p).size[1] for p in written] == [840, 840, 420]  # rows x 2.1 in x 100 dpi


def test_a_row_takes_each_defect_type_before_repeating_one():
    by_type = {"hole": ["h1", "h2", "h3"], "crack": ["c1"], "stain": ["s1", "s2"]}
    assert _round_robin(by_type, 3) == ["h1", "c1", "s1"]
    assert _round_robin(by_type, 5) == ["h1", "c1", "s1", "h2", "s2"]
    assert _round_robin(by_type, 9) == ["h1", "c1", "s1", "h2", "s2", "h3"]
