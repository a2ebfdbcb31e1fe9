"""The run folder: config.json pins it to one configuration, state.json records each stage's
seconds and whether it finished, so a resumed run reports the real stage times."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from benchmark.errors import BenchError
from benchmark.formatting import flatten_config
from benchmark.storage import atomic_write_text, config_digest


class RunFolder:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.created = False  # True when this process made the folder (removed again on bad input)

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    def stored_config(self) -> dict | None:
        return json.loads(self.config_path.read_text()) if self.config_path.exists() else None

    def claim(self, resolved: dict, resume: bool, overwrite: bool) -> None:
        if self.root.exists() and any(self.root.iterdir()):
            if overwrite:
                shutil.rmtree(self.root)
            elif not self.config_path.exists():
                raise BenchError(f"{self.root}: folder is not empty and holds no SIAS-Bench run; "
                                 "choose another --output or pass --overwrite")
            elif not resume:
                raise BenchError(f"{self.root}: holds a run already; continue it with `bench run --output "
                                 f"{self.root} --resume` or replace it with --overwrite")
            else:
                differ = config_differences(with_new_defaults(self.stored_config(), self.config_path), resolved)
                if differ:
                    raise BenchError(f"{self.root}: --resume with a different configuration ({'; '.join(differ[:3])}); "
                                     "drop those flags, or use another --output or --overwrite")
        self.created = not self.root.exists() or not any(self.root.iterdir())
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            atomic_write_text(self.config_path, json.dumps(resolved, indent=2, sort_keys=True))

    def discard_after_bad_input(self) -> None:
        """After a failure on bad input: a folder this process created that holds no work (only the
        configuration, the split and the record of a failed stage) would only make the corrected
        command ask for --overwrite, so it goes; one that holds work stays for --resume."""
        if self.created and self.root.exists() and not self.holds_work():
            shutil.rmtree(self.root)

    def holds_work(self) -> bool:
        """A stage after `data` finished, or a fit checkpointed: what a resumed run continues from
        (reading the dataset and writing the split again take seconds)."""
        finished = [stage for stage, entry in self.state().items() if entry["done"] and stage != "data"]
        return bool(finished) or (self.root / "checkpoints").exists()

    # -- stage state ----------------------------------------------------------------------------
    def state(self) -> dict[str, dict]:
        """{stage: {"seconds": float, "done": bool}} (older folders stored finished seconds only)."""
        path = self.root / "state.json"
        raw = json.loads(path.read_text()) if path.exists() else {}
        return {k: v if isinstance(v, dict) else {"seconds": float(v), "done": True} for k, v in raw.items()}

    def record(self, stage: str, seconds: float, done: bool) -> None:
        state = self.state()
        previous = state.get(stage, {"seconds": 0.0})["seconds"]
        state[stage] = {"seconds": round(previous + seconds, 3), "done": done}
        atomic_write_text(self.root / "state.json", json.dumps(state, indent=2))

    def is_done(self, stage: str) -> bool:
        return self.state().get(stage, {}).get("done", False)

    def timings(self) -> dict[str, float]:
        return {k: v["seconds"] for k, v in self.state().items()}


def with_new_defaults(stored: dict, source: Path) -> dict:
    """A stored configuration with the fields added to the schema since it was written filled with
    their defaults (e.g. `metrics.bins`), so such a run can still be resumed."""
    from benchmark.config import config_from_resolved, deep_merge

    return deep_merge(config_from_resolved(stored, source).model_dump(mode="json"), stored)


def config_differences(stored: dict, resolved: dict) -> list[str]:
    """`key: stored -> given` for every field that differs."""
    a, b = flatten_config(stored), flatten_config(resolved)
    return [f"{k}: the run has {a.get(k, '(unset)')}, given {b.get(k, '(unset)')}"
            for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
