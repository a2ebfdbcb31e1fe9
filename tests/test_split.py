from pathlib import Path

import pytest

from benchmark.data.dataset import CategoryData, Sample
from benchmark.data.split import FewShotSplit, few_shot_split, n_train
from benchmark.errors import BenchError


def category(name="bottle", counts={"crack": 10, "scratch": 7, "hole": 1}):
    defects = {
        t: [Sample(Path(f"/d/{name}/test/{t}/{i:03d}.png"), name, t, (Path(f"/d/{name}/gt/{t}/{i:03d}_mask.png"),))
            for i in reversed(range(n))]  # reversed: the split must sort by id itself
        for t, n in counts.items()
    }
    good = [Sample(Path(f"/d/{name}/train/good/{i:03d}.png"), name) for i in range(5)]
    test_good = [Sample(Path(f"/d/{name}/test/good/{i:03d}.png"), name) for i in range(3)]
    return CategoryData(name, good, test_good, defects)


def test_first_third_by_id_trains_and_rest_is_held_out():
    split = few_shot_split({"bottle": category()})
    c = split.categories["bottle"]
    assert [s.image.stem for s in c.train_defects["crack"]] == ["000", "001", "002", "003"]  # ceil(10/3)
    assert [s.image.stem for s in c.holdout_defects["crack"]] == [f"{i:03d}" for i in range(4, 10)]
    assert len(c.train_defects["scratch"]) == 3 and len(c.holdout_defects["scratch"]) == 4
    assert len(c.train_defects["hole"]) == 1 and c.holdout_defects["hole"] == []


@pytest.mark.parametrize("order", ["id", "random"])
@pytest.mark.parametrize("fraction", [0.1, 1 / 3, 0.5, 0.9])
def test_train_and_holdout_never_overlap_and_cover_everything(order, fraction):
    cat = category(counts={"a": 2, "b": 3, "c": 17, "d": 30})
    split = few_shot_split({"bottle": cat}, fraction, order, seed=3).categories["bottle"]
    for t, samples in cat.defects.items():
        train, hold = split.train_defects[t], split.holdout_defects[t]
        assert not {s.image for s in train} & {s.image for s in hold}
        assert sorted(s.image for s in train + hold) == sorted(s.image for s in samples)
        assert len(hold) >= 1  # every type with 2+ images keeps one for evaluation
    eval_images = {s.image for s in split.evaluation_samples()}
    assert not eval_images & {s.image for s in split.few_shot_defects()}


def test_numeric_ids_sort_naturally():
    cat = CategoryData("x", [], [], {"t": [Sample(Path(f"/x/{i}.png"), "x", "t", (Path(f"/m/{i}.png"),))
                                           for i in (10, 2, 1, 11, 3, 20)]})
    train = few_shot_split({"x": cat}).categories["x"].train_defects["t"]
    assert [s.image.stem for s in train] == ["1", "2"]


def test_random_order_is_seeded():
    cat = category(counts={"a": 30})
    a = few_shot_split({"c": cat}, order="random", seed=1).categories["c"].train_defects["a"]
    b = few_shot_split({"c": cat}, order="random", seed=1).categories["c"].train_defects["a"]
    c = few_shot_split({"c": cat}, order="random", seed=2).categories["c"].train_defects["a"]
    assert a == b and a != c


def test_split_round_trips_through_json(tmp_path):
    split = few_shot_split({"bottle": category(), "cable": category("cable")})
    split.save(tmp_path / "split.json")
    again = FewShotSplit.load(tmp_path / "split.json")
    assert again.to_json() == split.to_json()


def test_bad_fraction_is_a_clear_error():
    with pytest.raises(BenchError, match="fraction"):
        few_shot_split({"bottle": category()}, fraction=1.5)


def test_n_train_rounds_up_but_leaves_one():
    assert [n_train(n, 1 / 3) for n in (1, 2, 3, 4, 9, 10)] == [1, 1, 1, 2, 3, 4]
