"""Weights & Biases (offline): the per-category table arrives as a table, a resumed run logs into
the same W&B run, and --quiet keeps wandb's own output off the terminal."""

import json
import signal

from test_resume import TINY, bench  # signal_at_step: tests/conftest.py


def test_wandb_gets_the_table_keeps_the_run_id_on_resume_and_is_silent_when_quiet(
        signal_at_step, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    out = tmp_path / "w"
    args = [a for a in TINY if a != "--no-wandb"]
    signal_at_step(2, signal.SIGTERM)
    assert bench("run", "--output", str(out), "--set", "segmenter.options.max_steps=4", *args) == 130
    first_id = (out / "wandb-run-id").read_text().strip()
    assert bench("run", "--output", str(out), "--resume") == 0

    captured = capfd.readouterr()
    printed = (captured.out + captured.err).splitlines()
    assert not [ln for ln in printed if ln.lower().startswith("wandb")]  # --quiet: no banners, no sync hints
    assert len(printed) == 2, printed  # the interrupt line, then the results path

    run_id = (out / "wandb-run-id").read_text().strip()
    runs = sorted((out / "wandb-logs" / "wandb").glob("offline-run-*"))
    # one W&B run, resumed (wandb names its offline folder by start second and id: one or two folders)
    assert run_id == first_id and runs and all(r.name.endswith(f"-{run_id}") for r in runs)

    media = runs[-1] / "files" / "media"
    (table_file,) = (media / "table" / "results").glob("per_category*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"][:2] == ["category", "image_auroc"]
    assert [row[0] for row in table["data"]] == ["carpet_like", "pill", "mean"]
    results = json.loads((out / "results.json").read_text())
    assert table["data"][0][1] == results["categories"]["carpet_like"]["image"]["auroc"]
    assert not (media / "images" / "results").exists()  # plots do not take the table's key
    assert list((media / "images" / "plots").glob("per_category*.png"))
