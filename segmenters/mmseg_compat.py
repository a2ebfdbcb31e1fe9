"""Make mmsegmentation 1.2.2 import on mmcv-lite 2.1.0 (no compiled ops).

Four mmseg modules import `mmcv.ops` at import time (`utils/mask_classification.py`,
`models/utils/point_sample.py`, `models/decode_heads/san_head.py`, `models/losses/focal_loss.py`),
and mmcv-lite's `mmcv.ops` fails on the missing `mmcv._ext` extension. None of the models this
project builds (BiSeNet V2, STDC, UPerNet, SegFormer) runs a compiled op, so when compiled mmcv is
absent we register a stand-in `mmcv.ops` module that

- exposes mmcv's own pure-PyTorch `point_sample` / `bilinear_grid_sample`
  (`mmcv/ops/point_sample.py` imports nothing compiled), and
- answers every other name with a placeholder that raises `CompiledOpUnavailable` (saying what to
  install) the moment it is called or instantiated, so imports succeed and misuse fails loudly.

With full mmcv installed (`mmcv._ext` importable) `install()` does nothing. See DEPS.md, section
"mmsegmentation".
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys
import types
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

SHIM_ATTR = "__sias_mmcv_ops_shim__"
# mmcv.ops names that have a pure-PyTorch implementation in mmcv/ops/point_sample.py
PURE_OPS = ("point_sample", "bilinear_grid_sample", "normalize", "denormalize", "generate_grid",
            "rel_roi_point_to_abs_img_point", "get_shape_from_feature_map",
            "abs_img_point_to_rel_img_point", "rel_roi_point_to_rel_img_point")


class CompiledOpUnavailable(RuntimeError):
    """A compiled mmcv op was used while only mmcv-lite is installed."""


def compiled_mmcv_available() -> bool:
    """True when mmcv's compiled extension (`mmcv._ext`, shipped by full mmcv) is importable."""
    try:
        return importlib.util.find_spec("mmcv._ext") is not None
    except (ImportError, ValueError):  # mmcv itself missing
        return False


def is_installed() -> bool:
    return getattr(sys.modules.get("mmcv.ops"), SHIM_ATTR, False)


def _compiled_op_placeholder(name: str) -> type:
    message = (f"mmcv.ops.{name} needs mmcv's compiled ops, but only mmcv-lite is installed; "
               f"install full mmcv 2.1.0 (built with ops) or choose a model that does not use {name}")

    class Placeholder:  # a class, so `isinstance(x, SyncBatchNorm)` checks keep working
        def __new__(cls, *args, **kwargs):
            raise CompiledOpUnavailable(message)

    Placeholder.__name__ = Placeholder.__qualname__ = name
    Placeholder.__module__ = "mmcv.ops"
    Placeholder.__doc__ = message
    return Placeholder


def _load_pure_point_sample(ops_dir: Path) -> types.ModuleType:
    """Load mmcv/ops/point_sample.py by path (importing it as `mmcv.ops.point_sample` would run the
    real `mmcv/ops/__init__.py` first, which is what fails)."""
    spec = importlib.util.spec_from_file_location("mmcv.ops.point_sample", ops_dir / "point_sample.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mmcv.ops.point_sample"] = module
    spec.loader.exec_module(module)
    return module


def install() -> bool:
    """Register the stand-in `mmcv.ops` if compiled mmcv is absent. Returns True when the shim is
    (or already was) in place, False when nothing was needed. Safe to call repeatedly."""
    if compiled_mmcv_available():
        return False
    if is_installed():
        return True
    import mmcv  # noqa: F401  (mmcv-lite itself must be importable)

    existing = sys.modules.get("mmcv.ops")
    if existing is not None and hasattr(existing, "sigmoid_focal_loss"):
        return False  # a working mmcv.ops is already imported (e.g. a custom build); leave it
    ops_dir = Path(importlib.util.find_spec("mmcv").submodule_search_locations[0]) / "ops"
    pure = _load_pure_point_sample(ops_dir)

    shim = types.ModuleType("mmcv.ops", "Stand-in for mmcv.ops without compiled ops "
                            "(installed by segmenters.mmseg_compat).")
    shim.__path__ = [str(ops_dir)]  # pure submodules (point_sample) stay importable
    shim.__spec__ = importlib.machinery.ModuleSpec("mmcv.ops", None, is_package=True)
    shim.__spec__.submodule_search_locations = shim.__path__
    shim.__file__ = __file__
    setattr(shim, SHIM_ATTR, True)
    for name in PURE_OPS:
        setattr(shim, name, getattr(pure, name))
    placeholders: dict[str, type] = {}

    def __getattr__(name: str):  # PEP 562: called for names not set above
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in placeholders:
            placeholders[name] = _compiled_op_placeholder(name)
        return placeholders[name]

    shim.__getattr__ = __getattr__
    sys.modules["mmcv.ops"] = shim
    sys.modules["mmcv"].ops = shim
    log.debug("mmcv compiled ops absent: installed the pure-PyTorch mmcv.ops stand-in")
    return True


def import_mmseg_models():
    """Install the shim if needed, import `mmseg.models` and register mmseg's modules in the
    default scope. Returns the `mmseg.models` module. Slow the first time (5-10 s)."""
    install()
    with warnings.catch_warnings():
        # mmseg probes mmcv for a compiled deformable-attention op we never use
        warnings.filterwarnings("ignore", message=".*MultiScaleDeformableAttention.*")
        import mmseg.models  # noqa: F401
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    return sys.modules["mmseg.models"]
