"""Configuration checks that answer before torch loads: names with "did you mean", values as
`key=value: what is wrong`, one line, exit code 2, no run folder left behind."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.config import RunConfig, build_config, parse_override
from benchmark.errors import BenchError
from benchmark.metrics.options import MetricOptions

REPO = Path(__file__).resolve().parents[1]


def build(*overrides: str) -> RunConfig:
    return build_config("smoke", [parse_override(o) for o in overrides])


@pytest.mark.parametrize("override, message", [
    ("generator.name=cutpast", "unknown generator 'cutpast' (did you mean 'cutpaste'?)"),
    ("segmenter.name=unte", "unknown segmenter 'unte' (did you mean 'unet'?)"),
    ("segmenter.options.max_steps=-5", "invalid options for unet: segmenter.options.max_steps=-5: should be greater than 0"),
    ("segmenter.options.lr=0", "invalid options for unet: segmenter.options.lr=0: should be greater than 0"),
    ("generator.options.pairs_per_type=0",
     "invalid options for cutpaste: generator.options.pairs_per_type=0: should be greater than or equal to 1"),
    ("trainer.precision=fp16", "trainer.precision=\"fp16\": should be '64-true', '32-true', '16-true', '16-mixed', "
                               "'bf16-true' or 'bf16-mixed'"),
    ("data.layout=mvtc", "(did you mean 'mvtec'?)"),
    ("metrics.mode=exac", "metrics.mode=\"exac\": should be 'auto', 'exact' or 'binned' (did you mean 'exact'?)"),
    ("metrics.bins=10", "metrics.bins=10: should be greater than or equal to 1000"),
    ("metrics.image_scor=max", "metrics.image_scor=\"max\": unknown key (did you mean 'image_score'?)"),
])
def test_bad_names_and_values_are_one_line_naming_the_key(override, message):
    with pytest.raises(BenchError) as info:
        build(override)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_good_values_pass_and_metric_options_are_the_run_configs_metrics_section():
    cfg = build("trainer.precision=bf16-mixed", "metrics.iou_threshold=f1", "metrics.bins=2000")
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.metrics == MetricOptions(iou_threshold="f1", bins=2000)  # one schema, not a copy of it
    assert set(cfg.model_dump()["metrics"]) == set(MetricOptions.model_fields)


def test_every_registered_options_pointer_is_the_class_the_method_uses():
    from benchmark.registry import GENERATORS, SEGMENTERS

    pointers = [e for registry in (GENERATORS, SEGMENTERS) for e in registry if e.options]
    assert {e.name for e in pointers} >= {"cutpaste", "draem", "real-only", "unet", "unet-draem", "lfd", "segformer"}
    for entry in pointers:
        assert entry.load().Options is entry.load_options(), entry.name


def test_options_of_a_method_without_a_light_options_class_are_checked_when_it_loads(tmp_path, capsys):
    # STAGE names no pydantic-only Options module: its own keys are checked once it is imported,
    # still before any run folder exists
    out = tmp_path / "r"
    assert main(["--quiet", "run", "--generator", "stage", "--output", str(out), "--no-wandb",
                 "--set", "generator.options.no_such_option=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: invalid options for stage: generator.options.no_such_option=1: unknown key")
    assert len(err.splitlines()) == 1 and not out.exists()


SCRIPT = """
import json, sys
from benchmark.cli import main
code = main(["--quiet", sys.argv[2], "--output", sys.argv[1], "--no-wandb", *sys.argv[3:]])
print(json.dumps({"code": code, "heavy": sorted(m for m in ("torch", "lightning") if m in sys.modules)}))
"""


@pytest.mark.parametrize("args, message", [
    (["--generator", "cutpast"], "did you mean 'cutpaste'?"),
    (["--segmenter", "unte"], "did you mean 'unet'?"),
    (["--categories", "carpet"], "unknown category carpet (did you mean 'carpet_like'?)"),
    (["--layout", "mvtc"], "did you mean 'mvtec'?"),
    (["--set", "segmenter.options.max_steps=-5"], "segmenter.options.max_steps=-5: should be greater than 0"),
    (["--set", "trainer.precision=16"], "trainer.precision=16: should be '64-true'"),
    (["--set", "segmenter.options.max_step=5"], "segmenter.options.max_step=5: unknown key (did you mean 'max_steps'?)"),
    (["--set", "generator.options.variant=scarr"], "generator.options.variant=\"scarr\": should be 'scar', 'normal' "
                                                    "or 'union' (did you mean 'scar'?)"),
    (["--segmenter", "segformer", "--set", "segmenter.options.variant=b9"], "segmenter.options.variant=\"b9\""),
])
def test_a_bad_run_answers_before_torch_is_imported_and_leaves_no_folder(tmp_path, args, message):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), "run", *args], capture_output=True, text=True,
                          cwd=REPO, check=False)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"code": 2, "heavy": []}, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_generate_with_a_missing_checkpoint_answers_before_torch(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), "generate", "--checkpoint",
                           str(tmp_path / "absent.pt")], capture_output=True, text=True, cwd=REPO, check=False)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"code": 2, "heavy": []}, proc.stderr
    assert "absent.pt: generator checkpoint not found" in proc.stderr and not out.exists()


def test_results_written_before_all_metric_options_were_recorded_share_the_protocol():
    from benchmark.leaderboard.protocol import protocol_of

    config = build().model_dump(mode="json")
    config["data"]["name"] = "demo"
    older = json.loads(json.dumps(config))
    older["metrics"] = {"image_score": "max", "pool_kernel": 21, "iou_threshold": 0.5, "mode": "auto", "max_fpr": 0.3}
    assert protocol_of({"config": older}) == protocol_of({"config": config})
    older["metrics"]["iou_threshold"] = "f1"  # a real difference still separates them
    assert protocol_of({"config": older}) != protocol_of({"config": config})


def test_the_grid_options_leave_the_protocol_of_a_run_evaluated_exactly():
    """bins, mode and exact_max_pixels change no number when every category was evaluated exactly,
    so runs that differ only in them share a protocol; one binned category keeps them apart."""
    from benchmark.leaderboard.protocol import protocol_of

    config = build().model_dump(mode="json")
    config["data"]["name"] = "demo"

    def results(mode, bins, modes):
        c = json.loads(json.dumps(config))
        c["metrics"].update(mode=mode, bins=bins)
        return {"config": c, "evaluation": {"categories": {f"c{i}": {"mode": m} for i, m in enumerate(modes)}}}

    exact = protocol_of(results("auto", 4000, ["exact", "exact"]))  # bins not at their default
    assert protocol_of(results("exact", 8000, ["exact", "exact"])) == exact
    assert "bins" not in exact["metrics"] and "mode" not in exact["metrics"]
    one_binned = protocol_of(results("auto", 4000, ["exact", "binned"]))
    assert one_binned != exact and one_binned["metrics"]["bins"] == 4000
    assert protocol_of(results("auto", 8000, ["binned"])) != protocol_of(results("auto", 4000, ["binned"]))
    no_record = {"config": results("exact", 4000, [])["config"]}  # results from before `evaluation`
    assert protocol_of(no_record)["metrics"]["mode"] == "exact"
