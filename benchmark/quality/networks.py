"""The feature networks behind the generation-quality metrics, and the ONE place they load from.

Two feature backends:

* ``inception`` (default, comparable with the papers): torch-fidelity's port of the TensorFlow
  Inception-v3 of FID (``2048`` pool features for FID/KID, ``logits_unbiased`` for IS; the network
  SeaS and torchmetrics use), plus LPIPS (``lpips`` package) on a torchvision AlexNet or VGG16
  trunk with the package's linear heads. Every weight file is read from a local folder: the
  ``--weights`` option, else ``$SIAS_BENCH_QUALITY_WEIGHTS``. Nothing is ever downloaded: a
  missing file raises :class:`MissingWeightsError` (exit code 2) naming the file and the folder.
* ``random-test``: seeded random-init networks the project builds itself, for tests and smoke runs
  only. Their numbers mean nothing about image quality; every output that shows them says so.

Files looked up in the weights folder (standard release names, so a folder of downloaded weights
works as it is):

===========================================  ==================================================
``weights-inception-2015-12-05-6726825d.pth`` torch-fidelity's Inception-v3 (FID/KID/IS)
``alexnet-owt-7be5be79.pth``                  torchvision AlexNet (LPIPS ``--lpips-net alex``)
``vgg16-397923af.pth``                        torchvision VGG16 (LPIPS ``--lpips-net vgg``)
``lpips-<net>-v0.1.pth`` (optional)           LPIPS linear heads; default: the copy the ``lpips``
                                              package ships (a local file, no download)
===========================================  ==================================================
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmark.errors import BenchError, missing_extra
from benchmark.quality.options import WEIGHTS_ENV

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
TRUNK_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
LPIPS_NETS = tuple(TRUNK_FILES)
FEATURE_BACKENDS = ("inception", "random-test")
NOT_COMPARABLE = ("random-test features: random-weight networks, for tests and smoke runs only; "
                  "these numbers are NOT comparable with any paper or real-weight run")


class MissingWeightsError(BenchError):
    """A weight file (or the package that reads it) is missing; the CLI exits with code 2."""

    exit_code = 2


@dataclass
class FeatureNetworks:
    """What the metrics need: an Inception-like network (uint8 B x 3 x H x W -> pool features,
    logits) and an LPIPS model; `comparable` is False for the random-test backend."""

    inception: nn.Module
    lpips: nn.Module
    backend: str
    lpips_net: str
    comparable: bool
    files: dict[str, str]


def weights_folder(option: str | Path | None) -> Path | None:
    value = option if option is not None else os.environ.get(WEIGHTS_ENV)
    return Path(value).expanduser() if value else None


# How the user gives the weights folder / picks the random-test backend, in the words of the
# command that failed: `bench quality` flags, or `bench run` config keys.
CLI_HINTS = {"weights": "--weights <folder>", "random": "use --features random-test (not comparable)"}
RUN_HINTS = {"weights": "--set quality.weights=<folder>",
             "random": "use --set quality.features=random-test (not comparable), or --set quality.enabled=false"}


def load_feature_networks(backend: str = "inception", lpips_net: str = "vgg",
                          weights: str | Path | None = None) -> FeatureNetworks:
    """The one loader of every network the quality metrics use (see the module docstring)."""
    files = weight_files(backend, lpips_net, weights)
    if backend == "random-test":
        return FeatureNetworks(RandomTestInception(), random_test_lpips(lpips_net), backend, lpips_net,
                               comparable=False, files={})
    return FeatureNetworks(
        inception=load_inception(files["inception"]),
        lpips=load_lpips(lpips_net, files["lpips_trunk"], files["lpips_heads"]),
        backend=backend, lpips_net=lpips_net, comparable=True, files={k: str(v) for k, v in files.items()},
    )


def weight_files(backend: str = "inception", lpips_net: str = "vgg", weights: str | Path | None = None,
                 hints: dict[str, str] = CLI_HINTS) -> dict[str, Path]:
    """The weight files a backend reads, checked to exist (nothing is loaded: cheap enough for
    `bench run` to call before its first stage). random-test reads none."""
    if backend not in FEATURE_BACKENDS:
        raise BenchError(f"unknown feature backend '{backend}'; known: {', '.join(FEATURE_BACKENDS)}")
    if lpips_net not in LPIPS_NETS:
        raise BenchError(f"unknown LPIPS network '{lpips_net}'; known: {', '.join(LPIPS_NETS)}")
    if backend == "random-test":
        packaged_lpips_heads(lpips_net)  # the lpips package (the quality extra) is there
        return {}
    if importlib.util.find_spec("torch_fidelity") is None:
        raise missing_extra("quality", "the Inception features (IS, FID, KID)",
                            ModuleNotFoundError(name="torch_fidelity"))
    folder = weights_folder(weights)
    inception_path = _required(folder, INCEPTION_FILE, "Inception-v3 for IS/FID/KID", hints)
    trunk_path = _required(folder, TRUNK_FILES[lpips_net], f"torchvision {lpips_net} trunk for LPIPS", hints)
    heads_path = folder / f"lpips-{lpips_net}-v0.1.pth"
    if not heads_path.is_file():
        heads_path = packaged_lpips_heads(lpips_net)
    return {"inception": inception_path, "lpips_trunk": trunk_path, "lpips_heads": heads_path}


def _required(folder: Path | None, name: str, what: str, hints: dict[str, str]) -> Path:
    if folder is None:
        raise MissingWeightsError(
            f"no weights folder for the quality metrics: put {name} ({what}) in a folder and pass "
            f"{hints['weights']} or set {WEIGHTS_ENV}; or {hints['random']}")
    path = folder / name
    if not path.is_file():
        raise MissingWeightsError(f"{path}: weight file missing ({what}); put {name} in {folder} "
                                  f"(nothing is downloaded), or {hints['random']}")
    return path


def _torch_load(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise BenchError(f"{path}: cannot read weights ({type(exc).__name__}: {exc}); "
                         "fix: replace the file with the original release") from None
    if not isinstance(state, dict):
        raise BenchError(f"{path}: not a state dict; fix: replace the file with the original release")
    return state


# -- Inception -------------------------------------------------------------------------------------
class InceptionFeatures(nn.Module):
    """torch-fidelity's FID Inception-v3: uint8 images (any size; resized to 299 inside, as
    TensorFlow did) -> (2048-d pool features, 1008 unbiased logits)."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool, logits = self.extractor(images)
        return pool, logits


def load_inception(path: Path) -> InceptionFeatures:
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as err:
        raise missing_extra("quality", "the Inception features (IS, FID, KID)", err) from None
    state = _torch_load(path)
    if "fc.weight" not in state or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise BenchError(f"{path}: not torch-fidelity's Inception-v3 weights (keys like 'fc.weight', "
                         f"'Mixed_7c...' missing); fix: put {INCEPTION_FILE} there")
    try:
        extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                feature_extractor_weights_path=str(path))
    except RuntimeError as exc:  # load_state_dict: wrong shapes
        raise BenchError(f"{path}: does not fit torch-fidelity's Inception-v3 ({str(exc).splitlines()[0]})") from None
    return InceptionFeatures(extractor).eval()


class RandomTestInception(nn.Module):
    """Random-weight stand-in for Inception (tests/smoke only, NOT comparable): a seeded 3-layer
    CNN, uint8 images -> (64-d pool features, 16 logits); small so smoke runs stay fast."""

    pool_dim, n_logits = 64, 16

    def __init__(self, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.body = nn.Sequential(
                nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(32, self.pool_dim, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(self.pool_dim, self.n_logits)
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = nn.functional.interpolate(images.float() / 127.5 - 1, size=(64, 64), mode="bilinear", antialias=True)
        pool = self.body(x)
        # a random CNN maps similar images to nearly parallel features, so a linear head picks one
        # class for all and IS is 1; sin(500 x) spreads small feature differences over the classes
        return pool, 4 * self.fc(torch.sin(500 * pool))


# -- LPIPS -----------------------------------------------------------------------------------------
def _import_lpips():
    try:
        import lpips
    except ImportError as err:
        raise missing_extra("quality", "LPIPS and IC-LPIPS", err) from None
    return lpips


def packaged_lpips_heads(net: str) -> Path:
    """The LPIPS v0.1 linear heads the `lpips` package ships (a local file)."""
    lpips = _import_lpips()
    return Path(inspect.getfile(lpips.LPIPS)).parent / "weights" / "v0.1" / f"{net}.pth"


def _lpips_model(net: str, heads_path: Path):
    lpips = _import_lpips()
    heads = _torch_load(heads_path)
    wanted = {f"lin{k}.model.1.weight" for k in range(5)}
    if not wanted <= heads.keys():
        raise BenchError(f"{heads_path}: not LPIPS linear heads for '{net}' (keys {sorted(wanted)[0]}... missing)")
    # pnet_rand=True: the trunk is built without torchvision's download, then loaded from a local file;
    # lpips loads the heads with strict=False, hence the key check above.
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        return lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, model_path=str(heads_path), verbose=False)


def load_lpips(net: str, trunk_path: Path, heads_path: Path) -> nn.Module:
    """LPIPS with the torchvision trunk read from `trunk_path` (torchvision's key layout,
    `features.<i>.weight`) and the linear heads from `heads_path`."""
    model = _lpips_model(net, heads_path)
    state = _torch_load(trunk_path)
    # lpips keeps torchvision's module indices inside its slices: `slice<k>.<i>.weight` <- `features.<i>.weight`
    target = model.net.state_dict()
    mapped = {}
    for key in target:
        source = "features." + key.split(".", 1)[1]
        if source not in state or state[source].shape != target[key].shape:
            raise BenchError(f"{trunk_path}: not torchvision {net} weights ('{source}' missing or of another "
                             f"shape); fix: put {TRUNK_FILES[net]} there")
        mapped[key] = state[source]
    model.net.load_state_dict(mapped, strict=True)
    return model.eval().requires_grad_(False)


def random_test_lpips(net: str, seed: int = 0) -> nn.Module:
    """LPIPS with a seeded random trunk (tests/smoke only, NOT comparable); heads from the package."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _lpips_model(net, packaged_lpips_heads(net))
    return model.eval().requires_grad_(False)
