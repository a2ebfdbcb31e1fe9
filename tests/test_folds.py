"""The two-fold protocol (`split.folds=2`, BADG App. A.1): which defect images train and evaluate in
each fold, the averaged results, the configuration, and an end-to-end run that is stopped in its
second fold and resumed."""

import json
import math
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.config import build_config, parse_override
from benchmark.data.dataset import CategoryData, Sample
from benchmark.data.split import FewShotSplit, few_shot_split
from benchmark.errors import BenchError
from benchmark.results import fold_mean


def toy_category(counts):
    defects = {t: [Sample(Path(f"/d/c/test/{t}/{i:03d}.png"), "c", t, (Path(f"/d/c/gt/{t}/{i:03d}_mask.png"),))
                   for i in reversed(range(n))]  # reversed: the split sorts by id itself
               for t, n in counts.items()}
    good = [Sample(Path(f"/d/c/train/good/{i:03d}.png"), "c") for i in range(4)]
    test_good = [Sample(Path(f"/d/c/test/good/{i:03d}.png"), "c") for i in range(3)]
    return CategoryData("c", good, test_good, defects)


def stems(samples):
    return [s.image.stem for s in samples]


def test_fold_one_trains_on_the_first_half_by_id_and_fold_two_swaps_the_halves():
    cat = toy_category({"even": 6, "odd": 5, "one": 1})
    one, two = (few_shot_split({"c": cat}, fold=k).categories["c"] for k in (1, 2))
    # written out by hand: first ceil(n / 2) ids, then the rest
    assert stems(one.train_defects["even"]) == ["000", "001", "002"]
    assert stems(one.holdout_defects["even"]) == ["003", "004", "005"]
    assert stems(one.train_defects["odd"]) == ["000", "001", "002"]  # odd count: the first half has the extra one
    assert stems(one.holdout_defects["odd"]) == ["003", "004"]
    assert stems(one.train_defects["one"]) == ["000"] and one.holdout_defects["one"] == []
    for t in ("even", "odd", "one"):
        assert two.train_defects[t] == one.holdout_defects[t] and two.holdout_defects[t] == one.train_defects[t]
    # normals are the same in both folds
    assert one.train_good == two.train_good and one.test_good == two.test_good


@pytest.mark.parametrize("order", ["id", "random"])
def test_folds_are_disjoint_and_every_defect_is_evaluated_exactly_once(order):
    cat = toy_category({"a": 2, "b": 3, "c": 9, "d": 30})
    folds = [few_shot_split({"c": cat}, order=order, seed=4, fold=k).categories["c"] for k in (1, 2)]
    for t, samples in cat.defects.items():
        for f in folds:
            assert not set(stems(f.train_defects[t])) & set(stems(f.holdout_defects[t]))
            assert sorted(stems(f.train_defects[t] + f.holdout_defects[t])) == sorted(stems(samples))
        evaluated = stems(folds[0].holdout_defects[t]) + stems(folds[1].holdout_defects[t])
        assert sorted(evaluated) == sorted(stems(samples))  # covering, and no image evaluated twice
    assert {s.image for s in folds[0].few_shot_defects()} == {s.image for s in folds[1].evaluation_samples()
                                                              if s.masks}


def test_a_fold_split_records_its_fold_and_round_trips(tmp_path):
    split = few_shot_split({"c": toy_category({"a": 4})}, fold=2)
    assert split.fraction == 0.5 and split.to_json()["fold"] == 2
    split.save(tmp_path / "split.json")
    assert FewShotSplit.load(tmp_path / "split.json").to_json() == split.to_json()
    # a one-split run's split.json (and so its synthetic-set key) has no fold entry, as before folds existed
    assert "fold" not in few_shot_split({"c": toy_category({"a": 4})}).to_json()
    with pytest.raises(BenchError, match="fold must be 1 or 2"):
        few_shot_split({"c": toy_category({"a": 4})}, fold=3)


def test_fold_mean_is_the_mean_of_each_metric_over_the_folds():
    nan = float("nan")
    fold1 = {"wood": {"image": {"auroc": 0.9, "ap": 0.5}, "miou": 0.2},
             "pill": {"image": {"auroc": None, "ap": 0.1}, "miou": 0.4}}  # None: NaN as results.json writes it
    fold2 = {"wood": {"image": {"auroc": 0.7, "ap": 0.6}, "miou": 0.3},
             "pill": {"image": {"auroc": 0.8, "ap": 0.3}, "miou": nan}}
    mean = fold_mean([fold1, fold2])
    assert mean["wood"]["image"] == pytest.approx({"auroc": 0.8, "ap": 0.55})
    assert mean["wood"]["miou"] == pytest.approx(0.25)
    # undefined in one fold: the other fold's value (the NaN-skipping mean)
    assert mean["pill"]["image"] == pytest.approx({"auroc": 0.8, "ap": 0.2})
    assert mean["pill"]["miou"] == pytest.approx(0.4)


def test_two_folds_set_the_fraction_and_reject_a_contradicting_one():
    cfg = build_config("smoke", [parse_override("split.folds=2")])
    assert cfg.split.folds == 2 and cfg.split.fraction == 0.5 and cfg.split.fold is None
    with pytest.raises(BenchError, match=r"split\.folds=3: should be 1 .* or 2"):
        build_config("smoke", [parse_override("split.folds=3")])
    with pytest.raises(BenchError, match=r"split\.folds=2: the two folds are halves, but split\.fraction=0\.25"):
        build_config("smoke", [parse_override("split.fraction=0.25"), parse_override("split.folds=2")])
    with pytest.raises(BenchError, match=r"split\.fold=2: should be between 1 and split\.folds \(1\)"):
        build_config("smoke", [parse_override("split.fold=2")])


def test_badg_paper_profile_selects_two_folds_and_a_flag_overrides_it():
    badg = parse_override("generator.name=badg")
    draem_unet = parse_override("segmenter.name=unet-draem")  # BADG's segmenter, from random weights
    assert build_config("paper", [badg, draem_unet]).split.folds == 2
    assert build_config("smoke", [badg]).split.folds == 1
    assert build_config("paper", [parse_override("generator.name=cutpaste"), draem_unet]).split.folds == 1
    one = build_config("paper", [badg, draem_unet, parse_override("split.folds=1")]).split
    assert one.folds == 1 and one.fraction == pytest.approx(1 / 3)


def test_two_folds_are_their_own_leaderboard_protocol():
    from benchmark.leaderboard.protocol import protocol_of

    def protocol(*sets):
        config = build_config("smoke", [parse_override(s) for s in sets]).model_dump(mode="json")
        config["data"]["name"] = "demo"
        return protocol_of({"config": config})

    assert "folds" not in protocol()["split"]  # results from before folds existed keep their protocol
    assert protocol("split.folds=2")["split"] == {"fraction": 0.5, "order": "id", "folds": 2}
    assert protocol("split.folds=2") != protocol("split.fraction=0.5")


# -- end to end: cutpaste (training-free), tiny U-Net, stopped in fold 2 and resumed ----------------
STEPS = 3
TINY = ["--generator", "cutpaste", "--segmenter", "unet", "--image-size", "64", "--categories", "carpet_like,pill",
        "--set", f"segmenter.options.max_steps={STEPS}", "--set", "segmenter.options.batch_size=4",
        "--set", "generator.options.pairs_per_type=2", "--set", "split.folds=2", "--no-wandb"]


def bench(*args) -> int:
    return main(["--quiet", *args])


def test_a_two_fold_run_stopped_in_fold_two_resumes_and_averages_the_folds(
        signal_at_step, one_thread, tmp_path, capsys):
    out = tmp_path / "folds"
    fits = signal_at_step(2, fit=2)  # SIGINT after step 2 of fold 2's segmenter fit
    assert bench("run", "--output", str(out), *TINY) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert "stopped during fold 2/2, train (unified) at 2/3" in err[-1], err
    assert err[-1].endswith(f"resume with: bench run --output {out} --resume")
    fold1_weights = (out / "fold-1" / "segmenter" / "unified.pt").stat().st_mtime_ns
    assert (out / "fold-1" / "results.json").exists() and not (out / "results.json").exists()
    assert json.loads((out / "fold-2" / "state.json").read_text())["train"]["done"] is False

    assert bench("run", "--output", str(out), "--resume") == 0
    # fits started: folds 1 and 2 from step 0; on resume only fold 2's, from its checkpoint at step 2
    assert fits == [0, 0, 2]
    assert (out / "fold-1" / "segmenter" / "unified.pt").stat().st_mtime_ns == fold1_weights

    results = json.loads((out / "results.json").read_text())
    assert results["config"]["split"] == {"fraction": 0.5, "order": "id", "folds": 2, "fold": None}
    folds = [json.loads((out / f"fold-{k}" / "results.json").read_text()) for k in (1, 2)]
    assert [f["config"]["split"]["fold"] for f in folds] == [1, 2]
    assert [(f["fold"], f["folder"]) for f in results["folds"]] == [(1, "fold-1"), (2, "fold-2")]
    for entry, fold in zip(results["folds"], folds):
        assert entry["categories"] == fold["categories"] and entry["mean"] == fold["mean"]
    # the averaged table, by hand from the two folds' numbers
    for cat in ("carpet_like", "pill"):
        for group, metric in (("image", "auroc"), ("pixel", "ap"), ("pixel", "pro")):
            by_hand = (folds[0]["categories"][cat][group][metric] + folds[1]["categories"][cat][group][metric]) / 2
            assert math.isclose(results["categories"][cat][group][metric], by_hand)
        assert math.isclose(results["categories"][cat]["miou"],
                            (folds[0]["categories"][cat]["miou"] + folds[1]["categories"][cat]["miou"]) / 2)
    assert math.isclose(results["mean"]["pixel"]["ap"],
                        sum(f["mean"]["pixel"]["ap"] for f in folds) / 2)  # linear: mean of folds' means
    for stage in ("generate", "train", "evaluate"):
        assert math.isclose(results["timings"][stage], sum(f["timings"][stage] for f in folds), abs_tol=2e-3)
    # the folds trained on different halves, so they are different synthetic sets
    assert results["folds"][0]["synthetic_set"] != results["folds"][1]["synthetic_set"]
    csv_rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in csv_rows[1:]] == ["carpet_like", "pill", "mean"]

    # the leaderboard reads the run's averaged results.json, a fold's only when given that fold
    from benchmark.leaderboard.reproduced import results_files

    assert results_files(out) == [out / "results.json"]
    assert results_files(out / "fold-2") == [out / "fold-2" / "results.json"]

    # resuming a finished run redoes nothing and gives the same table
    assert bench("run", "--output", str(out), "--resume") == 0
    assert json.loads((out / "results.json").read_text())["categories"] == results["categories"]


def test_wandb_groups_a_two_fold_run_and_names_its_folds_after_it(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from benchmark.tracking import make_wandb_logger

    monkeypatch.setenv("WANDB_MODE", "offline")
    two = build_config("smoke", [parse_override("split.folds=2")])
    fold = two.model_copy(update={"split": two.split.model_copy(update={"fold": 2})})
    run = make_wandb_logger(two, tmp_path / "r", {}, quiet=True)._wandb_init
    fold2 = make_wandb_logger(fold, tmp_path / "r" / "fold-2", {}, quiet=True)._wandb_init
    single = make_wandb_logger(build_config("smoke"), tmp_path / "s", {}, quiet=True)._wandb_init
    assert (run["name"], run["group"]) == ("r", "r")
    assert (fold2["name"], fold2["group"]) == ("r-fold-2", "r")
    assert (single["name"], single.get("group")) == ("s", None)


def test_two_folds_on_several_processes_are_refused_with_the_fix():
    from benchmark.run.folds import refuse_several_processes

    ddp = build_config("smoke", [parse_override(s) for s in ("split.folds=2", "trainer.accelerator=cpu",
                                                              "trainer.devices=2", "trainer.strategy=ddp")])
    with pytest.raises(BenchError, match=r"split\.folds=2 on 2 processes .* --set split\.fold=1"):
        refuse_several_processes(ddp.trainer)
    refuse_several_processes(build_config("smoke", [parse_override("split.folds=2")]).trainer)  # one device: runs


def test_folds_run_as_separate_runs_are_combined_into_the_averaged_report(one_thread, tmp_path, capsys):
    """`bench combine-folds`: two single-fold runs (as two jobs would make them) -> the averaged
    results.json, checked by hand against the folds' own tables; and what it refuses."""
    runs = [tmp_path / f"fold{k}" for k in (1, 2)]
    for k, folder in enumerate(runs, 1):
        assert bench("run", "--output", str(folder), *TINY, "--set", f"split.fold={k}") == 0
    out = tmp_path / "combined"
    assert bench("combine-folds", str(runs[1]), str(runs[0]), "--output", str(out)) == 0  # any order
    assert f"results: {out / 'results.json'}" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    folds = [json.loads((f / "results.json").read_text()) for f in runs]
    assert results["config"]["split"] == {"fraction": 0.5, "order": "id", "folds": 2, "fold": None}
    assert [(f["fold"], f["folder"]) for f in results["folds"]] == [(1, "../fold1"), (2, "../fold2")]
    for cat in ("carpet_like", "pill"):
        for group, metric in (("image", "auroc"), ("pixel", "ap"), ("pixel", "pro")):
            by_hand = (folds[0]["categories"][cat][group][metric] + folds[1]["categories"][cat][group][metric]) / 2
            assert math.isclose(results["categories"][cat][group][metric], by_hand)
    assert results["run"]["synthetic_pairs"] == sum(f["run"]["synthetic_pairs"] for f in folds)
    assert results["run"].get("git_commit") == folds[0]["run"].get("git_commit")  # the same checkout
    assert (out / "metrics.csv").exists() and (out / "per_category.png").exists()

    from benchmark.leaderboard.reproduced import results_files

    assert results_files(out) == [out / "results.json"]

    def refused(*args):
        assert bench("combine-folds", *map(str, args)) != 0
        return capsys.readouterr().err

    assert "exists; pass --overwrite" in refused(*runs, "--output", out)
    assert bench("combine-folds", *map(str, runs), "--output", str(out), "--overwrite") == 0
    assert "give each fold 1..2 exactly once" in refused(runs[0], runs[0], "--output", tmp_path / "x")
    assert "is one of the fold folders" in refused(*runs, "--output", runs[0])
    assert "nowhere/results.json: missing" in refused(runs[0], tmp_path / "nowhere", "--output", tmp_path / "x")
    other = json.loads((runs[1] / "results.json").read_text())
    other["config"]["segmenter"]["options"]["max_steps"] = STEPS + 1
    (tmp_path / "changed").mkdir()
    (tmp_path / "changed" / "results.json").write_text(json.dumps(other))
    assert f"configured differently from {runs[0]} (segmenter.options.max_steps: the run has 3, given 4)" in refused(
        runs[0], tmp_path / "changed", "--output", tmp_path / "x")
    assert "not a run of one fold" in refused(out, runs[1], "--output", tmp_path / "x")
