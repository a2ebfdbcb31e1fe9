"""`bench quality` end to end on a tiny handmade dataset and synthetic set: the report, its
random-test labelling, bad input (one line naming the file, exit 2, no JSON) and the real-weight
loading path with weight files the test writes itself in the release formats."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.quality.cli import add_arguments, main

SIZE = 64


def png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_real(root: Path, rng, defects=("crack", "stain"), n_defect=6) -> Path:
    """MVTec layout: one category, 3 train goods, 2 test goods, n_defect images per type."""
    cat = root / "widget"
    for i in range(3):
        png(cat / "train" / "good" / f"{i:03d}.png", rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    for i in range(2):
        png(cat / "test" / "good" / f"{i:03d}.png", rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    for d in defects:
        for i in range(n_defect):
            png(cat / "test" / d / f"{i:03d}.png", rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
            mask = np.zeros((SIZE, SIZE), np.uint8)
            y, x = rng.integers(0, SIZE - 16, 2)
            mask[y:y + 16, x:x + 16] = 255
            png(cat / "ground_truth" / d / f"{i:03d}_mask.png", mask)
    return root


def make_synthetic(root: Path, rng, defects=("crack", "stain"), n=7, category="widget") -> Path:
    """A synthetic set in the on-disk contract: images/, masks/, manifest.jsonl."""
    lines = []
    for d in defects:
        for i in range(n):
            rel = f"{category}/{d}/{i:05d}.png"
            png(root / "images" / rel, rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
            mask = np.zeros((SIZE, SIZE), np.uint8)
            mask[10:30, 20:40] = 255
            png(root / "masks" / rel, mask)
            lines.append(json.dumps({"id": f"{category}/{d}/{i:05d}", "image": f"images/{rel}", "mask": f"masks/{rel}",
                                     "category": category, "defect": d, "source_image": None, "source_mask": None,
                                     "mask_origin": "given", "seed": i, "generator": "test"}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def run_cli(*argv) -> int:
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(list(argv))
    args.quiet = True
    return main(args)


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    return make_real(tmp_path / "real", rng), make_synthetic(tmp_path / "syn", rng)


SMOKE = ("--features", "random-test", "--lpips-net", "alex", "--image-size", str(SIZE))


def test_report_has_every_metric_per_defect_category_and_mean_and_says_not_comparable(data, tmp_path, one_thread):
    real, syn = data
    out = tmp_path / "q.json"
    assert run_cli("--synthetic", str(syn), "--real", str(real), "--json", str(out), *SMOKE) == 0
    report = json.loads(out.read_text())
    assert report["comparable"] is False and "NOT comparable" in report["warning"]
    assert report["features"] == "random-test"
    keys = {"is", "is_std", "fid", "kid_mean", "kid_std", "lpips_nearest_real", "ic_lpips", "ic_lpips_anomaly"}
    widget = report["categories"]["widget"]
    assert set(widget["defects"]) == {"crack", "stain"}
    for entry in [widget["metrics"], report["mean"], *(d["metrics"] for d in widget["defects"].values())]:
        assert set(entry) == keys
        assert all(isinstance(entry[k], float) for k in keys - {"is_std"})
    crack = widget["defects"]["crack"]
    # 6 real per type: 2 train (ceil(6/3)) are the IC-LPIPS centres, all 6 the reference
    assert crack["n_centres"] == 2 and crack["n_reference"] == 6 and crack["n_generated"] == 7
    assert sum(crack["cluster_sizes"]) == 7
    # category IS is the mean over types; FID pools the category
    types = widget["defects"].values()
    assert widget["metrics"]["is"] == pytest.approx(np.mean([d["metrics"]["is"] for d in types]))
    assert report["mean"]["fid"] == pytest.approx(widget["metrics"]["fid"])

    from rich.console import Console

    from benchmark.quality.evaluate import quality_metric_table, wandb_metrics
    from benchmark.tables import print_tables

    flat = wandb_metrics(report)
    assert flat and all(k.startswith("quality_random_test/") for k in flat)
    console = Console(record=True, width=80)
    print_tables(quality_metric_table(report), console)
    assert "NOT COMPARABLE" in console.export_text()


def test_runner_entry_point_takes_the_run_split(data, tmp_path, one_thread):
    """What the runner calls after generation: its own FewShotSplit, options as a dict."""
    from benchmark.data.layouts import read_dataset
    from benchmark.data.split import few_shot_split
    from benchmark.quality.evaluate import evaluate_synthetic_set

    real, syn = data
    options = {"features": "random-test", "lpips_net": "alex", "image_size": SIZE}
    split = few_shot_split(read_dataset(real, "mvtec"))
    via_split = evaluate_synthetic_set(syn, split, options)
    via_root = evaluate_synthetic_set(syn, real, options)
    assert via_split["categories"] == via_root["categories"] and via_split["real"] == "run split"


def test_same_input_same_numbers(data, tmp_path, one_thread):
    real, syn = data
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for out in (a, b):
        assert run_cli("--synthetic", str(syn), "--real", str(real), "--json", str(out), *SMOKE) == 0
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert strip(json.loads(a.read_text())) == strip(json.loads(b.read_text()))


def bad(capsys, tmp_path, *argv) -> str:
    out = tmp_path / "never.json"
    assert run_cli(*argv, "--json", str(out), *SMOKE) == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_empty_set(capsys, tmp_path, data):
    real, _ = data
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.jsonl").write_text("")
    assert "synthetic set is empty" in bad(capsys, tmp_path, "--synthetic", str(empty), "--real", str(real))


def test_mixed_sizes_name_the_file(capsys, tmp_path, data):
    real, syn = data
    odd = syn / "images" / "widget" / "stain" / "00003.png"
    png(odd, np.zeros((32, 32, 3), np.uint8))
    err = bad(capsys, tmp_path, "--synthetic", str(syn), "--real", str(real))
    assert str(odd) in err and "32x32" in err


def test_unreadable_image_names_the_file(capsys, tmp_path, data):
    real, syn = data
    broken = syn / "images" / "widget" / "crack" / "00002.png"
    broken.write_bytes(broken.read_bytes()[:60])
    assert str(broken) in bad(capsys, tmp_path, "--synthetic", str(syn), "--real", str(real))


def test_defect_type_without_real_anomalies_for_centres(capsys, tmp_path):
    rng = np.random.default_rng(1)
    real = make_real(tmp_path / "real", rng, defects=("crack",))
    syn = make_synthetic(tmp_path / "syn", rng, defects=("crack", "stain"))
    err = bad(capsys, tmp_path, "--synthetic", str(syn), "--real", str(real))
    assert "widget/stain" in err and "IC-LPIPS" in err


# -- weights -------------------------------------------------------------------------------------
def test_missing_weights_one_line_exit_2_no_download(capsys, tmp_path, data, monkeypatch):
    import torch.hub

    def no_download(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.delenv("SIAS_BENCH_QUALITY_WEIGHTS", raising=False)
    real, syn = data
    out = tmp_path / "q.json"
    assert run_cli("--synthetic", str(syn), "--real", str(real), "--json", str(out), "--image-size", "64") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "weights-inception-2015-12-05-6726825d.pth" in err and "--weights" in err
    folder = tmp_path / "weights"
    folder.mkdir()
    assert run_cli("--synthetic", str(syn), "--real", str(real), "--json", str(out), "--weights", str(folder)) == 2
    err = capsys.readouterr().err.strip()
    assert str(folder / "weights-inception-2015-12-05-6726825d.pth") in err
    assert not out.exists()


def save_lpips_release_files(folder: Path, net: str = "alex") -> tuple[dict, dict]:
    """A random torchvision AlexNet state dict (torchvision's keys) and random LPIPS heads,
    saved with torch.save under the release file names."""
    import torchvision

    torch.manual_seed(11)
    trunk = torchvision.models.alexnet(weights=None).state_dict()
    torch.save(trunk, folder / "alexnet-owt-7be5be79.pth")
    chans = [64, 192, 384, 256, 256]
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(chans)}
    torch.save(heads, folder / f"lpips-{net}-v0.1.pth")
    return trunk, heads


def test_lpips_loads_trunk_and_heads_from_release_files(tmp_path):
    from benchmark.quality.networks import load_lpips

    trunk, heads = save_lpips_release_files(tmp_path)
    model = load_lpips("alex", tmp_path / "alexnet-owt-7be5be79.pth", tmp_path / "lpips-alex-v0.1.pth")
    loaded = model.state_dict()
    # lpips stores AlexNet's features.<i> inside slices: slice1 = 0-1, slice2 = 2-4, slice3 = 5-7, ...
    for key, slice_ in [("0", 1), ("3", 2), ("6", 3), ("8", 4), ("10", 5)]:
        for p in ("weight", "bias"):
            assert torch.equal(loaded[f"net.slice{slice_}.{key}.{p}"], trunk[f"features.{key}.{p}"])
    for k in range(5):
        assert torch.equal(loaded[f"lin{k}.model.1.weight"], heads[f"lin{k}.model.1.weight"])


def test_wrong_trunk_file_is_named(tmp_path):
    from benchmark.errors import BenchError
    from benchmark.quality.networks import load_lpips

    save_lpips_release_files(tmp_path)
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "alexnet-owt-7be5be79.pth")
    with pytest.raises(BenchError, match="alexnet-owt-7be5be79.pth"):
        load_lpips("alex", tmp_path / "alexnet-owt-7be5be79.pth", tmp_path / "lpips-alex-v0.1.pth")


def test_real_weight_backend_from_a_folder(tmp_path, data, monkeypatch, one_thread):
    """The whole `inception` path with files in the release formats (needs torch-fidelity)."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    cls = fidelity.FeatureExtractorInceptionV3
    folder = tmp_path / "weights"
    folder.mkdir()
    save_lpips_release_files(folder)
    # a random Inception in torch-fidelity's key layout: build it once without loading, save it
    torch.save({}, tmp_path / "empty.pth")
    monkeypatch.setattr(cls, "load_state_dict", lambda self, *a, **k: None)
    torch.manual_seed(0)
    state = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(tmp_path / "empty.pth")).state_dict()
    monkeypatch.undo()
    torch.save(state, folder / "weights-inception-2015-12-05-6726825d.pth")

    real, syn = data
    out = tmp_path / "q.json"
    assert run_cli("--synthetic", str(syn), "--real", str(real), "--json", str(out), "--weights", str(folder),
                   "--lpips-net", "alex", "--image-size", "64") == 0
    report = json.loads(out.read_text())
    assert report["comparable"] is True and "warning" not in report
    assert report["weights"]["inception"].endswith("weights-inception-2015-12-05-6726825d.pth")
    assert isinstance(report["mean"]["fid"], float)
