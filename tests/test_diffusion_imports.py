"""The diffusion core's import graph: no cycle among generators.diffusion modules, and building and
loading the tiny backbone never imports mmsegmentation (its tokenizer is the project's own)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "generators" / "diffusion"


def _project_imports(path: Path) -> set[str]:
    """generators.diffusion modules imported by `path`, at any depth of the file (lazy ones too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
        out |= {n for n in names if n.startswith("generators.diffusion.")}
    return out


def test_no_import_cycle_in_the_diffusion_core():
    graph = {f"generators.diffusion.{p.stem}": _project_imports(p) for p in CORE.glob("*.py") if p.stem != "__init__"}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack + [node, nxt]))
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert "generators.diffusion.backbone" not in graph["generators.diffusion.tiny"]
    assert graph["generators.diffusion.hub"] == set()  # the leaf


def test_tiny_backbone_needs_no_mmsegmentation(tmp_path):
    code = ("import sys; from generators.diffusion.backbone import load_backbone; b = load_backbone('tiny'); "
            "ids = b.tokenizer('carpet like hole').input_ids; "
            "assert not [m for m in sys.modules if m.startswith(('mmseg', 'mmcv'))], 'mmseg imported'; print(ids)")
    env = {"PYTHONPATH": str(ROOT), "SIAS_BENCH_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith("[512, ") and done.stdout.strip().endswith(", 513]")  # BOS ... EOS
