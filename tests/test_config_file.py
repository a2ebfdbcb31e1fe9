"""`bench run --config run.yaml` and `--print-config`: the file has config.json's schema, flags and
--set apply on top, mistakes name the file and the key, and nothing heavy loads."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmark.cli import main

REPO = Path(__file__).resolve().parents[1]
RUN_YAML = """
profile: smoke
seed: 5
data:
  categories: [carpet_like, wood]
  image_size: 64
segmenter:
  options: {max_steps: 7, batch_size: 3}
"""


def printed(capsys, *args) -> dict:
    assert main(["--quiet", "run", *args, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_file_values_are_used_and_flags_then_set_win_over_them(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(RUN_YAML)
    cfg = printed(capsys, "--config", str(path))
    assert (cfg["seed"], cfg["data"]["image_size"], cfg["data"]["categories"]) == (5, 64, ["carpet_like", "wood"])
    assert cfg["segmenter"]["options"] == {"max_steps": 7, "batch_size": 3}
    assert cfg["generator"]["name"] == "cutpaste"  # unset in the file: the default
    cfg = printed(capsys, "--config", str(path), "--seed", "9", "--image-size", "32",
                  "--set", "segmenter.options.max_steps=2", "--set", "seed=11")
    assert (cfg["seed"], cfg["data"]["image_size"]) == (11, 32)  # --set after the --seed flag
    assert cfg["segmenter"]["options"] == {"max_steps": 2, "batch_size": 3}  # merged key by key
    assert cfg["data"]["categories"] == ["carpet_like", "wood"]


def test_printed_config_read_back_gives_the_same_config(tmp_path, capsys):
    first = printed(capsys, "--generator", "draem", "--set", "metrics.preset=stage", "--no-wandb")
    path = tmp_path / "printed.yaml"
    path.write_text(yaml.safe_dump(first))
    assert printed(capsys, "--config", str(path)) == first
    assert first["wandb"] is False and first["generator"]["name"] == "draem"


def test_a_run_folders_config_json_is_a_valid_config_file(tmp_path, capsys):
    stored = printed(capsys, "--seed", "4")
    stored["data"]["name"] = "demo"  # config.json records the derived dataset name
    path = tmp_path / "config.json"
    path.write_text(json.dumps(stored))
    assert printed(capsys, "--config", str(path))["seed"] == 4


@pytest.mark.parametrize("text, message", [
    ("data:\n  image_sizee: 64\n", "invalid configuration: data.image_sizee=64: unknown key (did you mean 'image_size'?)"),
    ("segmenter:\n  options: {max_steps: -1}\n", "segmenter.options.max_steps=-1: should be greater than 0"),
    ("generator: {name: cutpast}\n", "unknown generator 'cutpast' (did you mean 'cutpaste'?)"),
    ("sed: 3\n", "sed=3: unknown key (did you mean 'seed'?)"),
    ("data: [1\n", "not valid YAML at line 2"),
    ("- a\n- b\n", "a config file is a mapping of keys"),
])
def test_a_bad_file_names_the_file_and_the_key_before_torch(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    script = ("import json, sys; from benchmark.cli import main; code = main(sys.argv[1:]); "
              "print(json.dumps({'code': code, 'heavy': 'torch' in sys.modules}))")
    proc = subprocess.run([sys.executable, "-c", script, "--quiet", "run", "--config", str(path),
                           "--output", str(tmp_path / "r"), "--no-wandb", "--seed", "1"],
                          capture_output=True, text=True, cwd=REPO, check=False)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"code": 2, "heavy": False}, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith(f"error: {path}: ") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_a_missing_config_file_is_one_line(tmp_path, capsys):
    assert main(["--quiet", "run", "--config", str(tmp_path / "absent.yaml"), "--print-config"]) == 2
    assert f"{tmp_path / 'absent.yaml'}: cannot read the config file" in capsys.readouterr().err
