"""The wheel carries the leaderboard's data, and `bench leaderboard` runs from the installed files.

Builds the wheel offline (`pip wheel --no-deps --no-build-isolation --no-index`) from a copy of the
sources, so the worktree gets no build/ or egg-info; unpacking a pure-Python wheel into a folder is
what installing it does, minus the metadata, so the command then runs from that folder alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from benchmark.leaderboard import command

ROOT = Path(command.__file__).resolve().parents[2]


def build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("benchmark", "generators", "segmenters"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("tools", "tests"):  # present in a checkout; must not end up in the wheel
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(out), str(source)], check=True, capture_output=True, text=True)
    (wheel,) = out.glob("*.whl")
    return wheel


def test_wheel_ships_the_leaderboard_data_and_the_command_runs_from_it(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    data = {str(p.relative_to(ROOT)) for p in command.DATA_DIR.rglob("*") if p.suffix in {".yaml", ".json"}}
    assert {Path(p).parent.name for p in data} == {"reported", "quality", "results"}
    assert data <= names, f"missing from the wheel: {sorted(data - names)}"
    assert not {n for n in names if n.split("/")[0] in {"tools", "tests", "benchmarks", "leaderboards"}}

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}  # only the installed files: no checkout on the path
    code = ("import sys; from benchmark.cli import main; import benchmark; "
            "assert benchmark.__file__.startswith(sys.argv[1]), benchmark.__file__; "
            "sys.exit(main(['leaderboard', '--dataset', 'demo', '--metric', 'miou', '--out', sys.argv[2]]))")
    board = tmp_path / "board.md"
    subprocess.run([sys.executable, "-c", code, str(site), str(board)], check=True, env=env, cwd=tmp_path,
                   capture_output=True, text=True)
    text = board.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "[accepted run " in line]
    assert "### demo · mIoU" in text and len(rows) == len(list((command.DATA_DIR / "results").glob("*.json")))
    assert all("](site/benchmark/leaderboard/data/results/" in row for row in rows)  # links to the installed files
