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
    assert {e.name for e in pointers} >= {"cutpaste", "draem", "real-only", "unet", "unet-draem", "lfd", "segformer",
                                          *DIFFUSION}
    for entry in pointers:
        assert entry.load().Options is entry.load_options(), entry.name


# the five diffusion generators: one of each one's own options, a good and an out-of-range value, and
# the message's tail (pydantic's words for that field's bound)
DIFFUSION = {
    "stage": ("t_s", 3, -1, "greater than or equal to 0"),
    "seas": ("mask_threshold", 0.5, 1.5, "less than 1"),
    "anomalydiffusion": ("augment_max_zoom", 1.5, 0.5, "greater than or equal to 1"),
    "defectdiffu": ("p1", 0.5, 2, "less than or equal to 1"),
    "badg": ("refine_threshold", 0.5, 1, "less than 1"),
}


@pytest.mark.parametrize("name", sorted(DIFFUSION))
def test_a_diffusion_generators_own_options_are_checked_before_it_loads(name):
    key, good, bad, bound = DIFFUSION[name]
    prefix = f"invalid options for {name}: generator.options."
    with pytest.raises(BenchError) as info:
        build(f"generator.name={name}", "generator.options.no_such_option=1")
    assert f"{prefix}no_such_option=1: unknown key" in str(info.value)
    with pytest.raises(BenchError) as info:
        build(f"generator.name={name}", f"generator.options.{key}={bad}")
    assert f"{prefix}{key}={bad}: should be {bound}" in str(info.value) and "\n" not in str(info.value)
    assert build(f"generator.name={name}", f"generator.options.{key}={good}").generator.options == {key: good}


# every bounded option of the two hand-crafted baselines: an out-of-range value and the message's
# tail (pydantic's words for a scalar's bound; the allowed range for a (low, high) option)
BASELINE_BOUNDS = [
    ("cutpaste", "jitter=-1", "should be greater than or equal to 0"),
    ("cutpaste", "jitter=0.6", "should be less than or equal to 0.5"),  # torchvision's largest hue
    ("cutpaste", "scar_width=[16, 2]", "should be [low, high] with 0 < low <= high"),
    ("cutpaste", "scar_width=[0, 2]", "should be [low, high] with 0 < low <= high"),
    ("cutpaste", "scar_height=[25, 10]", "should be [low, high] with 0 < low <= high"),
    ("cutpaste", "rotation=[-200, 45]", "should be [low, high] with -180 <= low <= high <= 180"),
    ("cutpaste", "rotation=[45, -45]", "should be [low, high] with -180 <= low <= high <= 180"),
    ("cutpaste", "area_ratio=[0.02, 1.5]", "should be [low, high] with 0 < low <= high <= 1"),
    ("cutpaste", "area_ratio=[0, 0.15]", "should be [low, high] with 0 < low <= high <= 1"),
    ("cutpaste", "aspect_ratio=0", "should be greater than 0"),
    ("cutpaste", "aspect_ratio=3", "should be less than or equal to 1"),
    ("cutpaste", "reference_size=0", "should be greater than or equal to 1"),
    ("cutpaste", "patches=[0, 0]", "should be [low, high] with 1 <= low <= high"),
    ("cutpaste", "patches=[3, 1]", "should be [low, high] with 1 <= low <= high"),
    ("draem", "perlin_scale=[3, 3]", "should be [low, high] with 0 <= low < high <= 11"),  # U{lo..hi-1}: empty
    ("draem", "perlin_scale=[-1, 6]", "should be [low, high] with 0 <= low < high <= 11"),
    ("draem", "perlin_scale=[0, 12]", "should be [low, high] with 0 <= low < high <= 11"),
    ("draem", "perlin_rotation=[90, -90]", "should be [low, high] with -180 <= low <= high <= 180"),
    ("draem", "threshold=1", "should be less than 1"),
    ("draem", "threshold=-0.5", "should be greater than or equal to 0"),
    ("draem", "beta=[0.8, 0]", "should be [low, high] with 0 <= low <= high <= 1"),
    ("draem", "beta=[0, 1.2]", "should be [low, high] with 0 <= low <= high <= 1"),
    ("draem", "augmentations_per_source=11", "should be less than or equal to 10"),
    ("draem", "augmentations_per_source=-1", "should be greater than or equal to 0"),
    ("draem", "min_area=1", "should be less than 1"),
    ("draem", "min_area=-0.1", "should be greater than or equal to 0"),
]


@pytest.mark.parametrize("name, option, bound", BASELINE_BOUNDS)
def test_a_baselines_option_values_are_checked_with_their_range_before_it_loads(name, option, bound):
    with pytest.raises(BenchError) as info:
        build(f"generator.name={name}", f"generator.options.{option}")
    assert str(info.value) == f"invalid options for {name}: generator.options.{option}: {bound}"


@pytest.mark.parametrize("name, options", [
    ("cutpaste", {"jitter": 0.5, "scar_width": [2, 2], "rotation": [-180, 180], "area_ratio": [1, 1],
                  "aspect_ratio": 1, "patches": [2, 2]}),  # the edges of every range
    ("draem", {"perlin_scale": [5, 6], "perlin_rotation": [0, 0], "threshold": 0, "beta": [1, 1],
               "augmentations_per_source": 0, "min_area": 0.9}),
])
def test_a_baselines_option_values_at_the_edges_of_their_ranges_pass(name, options):
    from benchmark.registry import GENERATORS

    cfg = build(f"generator.name={name}", *(f"generator.options.{k}={v}" for k, v in options.items()))
    assert cfg.generator.options == options
    validated = GENERATORS.get(name).load_options().model_validate(options)
    assert validated.model_dump(include=set(options)) == {k: tuple(v) if isinstance(v, list) else v
                                                          for k, v in options.items()}


@pytest.mark.parametrize("name, options", [
    # smoke's preset sets mask_denoiser=stored_masks, where k' may exceed k
    ("anomalydiffusion", ["tokens_per_type=2"]),
    # smoke's preset sets rmp_heads=2, which splits 3 + 3 coarse channels (the default 8 does not)
    ("seas", ["rmp_coarse_channels=[3, 3]"]),
])
def test_checks_across_options_wait_for_the_preset(name, options):
    cfg = build(f"generator.name={name}", *(f"generator.options.{o}" for o in options))
    assert cfg.generator.name == name


@pytest.mark.parametrize("name", ["diffusion", *sorted(DIFFUSION)])
def test_the_diffusion_options_modules_import_without_torch(name):
    heavy = ("torch", "diffusers", "transformers", "lightning", "pytorch_lightning")
    code = (f"import sys, generators.{name}.options; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert proc.stdout.strip() == "[]", proc.stderr


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
    (["--generator", "stage", "--set", "generator.options.bogus_key=1"], "generator.options.bogus_key=1: unknown key"),
    (["--generator", "defectdiffu", "--set", "generator.options.transformer=dit"],
     "generator.options.transformer=\"dit\""),
    # the reviewer's three: a torchvision and a numpy traceback after the folder was made, and 30 empty masks
    (["--set", "generator.options.jitter=-1"], "generator.options.jitter=-1: should be greater than or equal to 0"),
    (["--set", "generator.options.scar_width=[16,2]"],
     "generator.options.scar_width=[16, 2]: should be [low, high] with 0 < low <= high"),
    (["--set", "generator.options.patches=[0,0]"],
     "generator.options.patches=[0, 0]: should be [low, high] with 1 <= low <= high"),
    (["--profile", "paper", "--segmenter", "lfd"],  # tests/test_paper_weights.py: every segmenter's file
     "segmenter.options.weights is unset: the paper profile starts lfd from torchvision's resnet18-f37072fd.pth"),
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
