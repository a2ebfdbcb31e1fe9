"""Speed of the generation-quality metrics on this machine (CPU by default). Not a test.

    python tools/perf/quality_bench.py [--size 256] [--threads 2] [--quick]

Reports
1. Inception feature extraction, images/s (torch-fidelity's FID Inception with random weights: the
   same architecture and cost as the real one; skipped when torch-fidelity is not installed), and
   the random-test network for comparison;
2. LPIPS pairs/s for AlexNet and VGG16 trunks: `lpips.LPIPS` called per pair (two trunk passes per
   pair) vs `LPIPSDistance.pairwise` (one trunk pass per image per block);
3. how IC-LPIPS cost grows with the number of generated images N per defect type (k centres):
   assigning N images to centres is linear in N, the within-cluster pairs are quadratic in the
   cluster size and capped at `cap` members per cluster (measured with 50 to stay short; the
   default, as SeaS's evaluation code, is 140), so past k * cap images the pair count stops growing.

Random weights throughout: speed does not depend on weight values.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmark.quality.ic_lpips import intra_cluster_lpips  # noqa: E402
from benchmark.quality.lpips_distance import LPIPSDistance  # noqa: E402
from benchmark.quality.networks import RandomTestInception, random_test_lpips  # noqa: E402


def timed(fn, repeat: int = 1) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def random_fidelity_inception():
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        return None
    import tempfile

    original = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None
    try:
        with tempfile.NamedTemporaryFile(suffix=".pth") as f:
            torch.save({}, f.name)
            return FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=f.name)
    finally:
        FeatureExtractorInceptionV3.load_state_dict = original


def bench_inception(size: int, batch: int) -> None:
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    net = random_fidelity_inception()
    if net is None:
        print("inception (torch-fidelity): skipped, torch-fidelity not installed")
    else:
        with torch.no_grad():
            t = timed(lambda: net(images), repeat=2)
        print(f"inception (torch-fidelity, resized to 299): {batch / t:.1f} images/s (batch {batch}, {size} px input)")
    rt = RandomTestInception()
    t = timed(lambda: rt(images), repeat=3)
    print(f"random-test feature network: {batch / t:.1f} images/s")


def bench_lpips(size: int, n: int, nets) -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=gen) * 2 - 1
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, size // 4: size // 2, size // 4: size // 2] = True
    pairs = n * (n - 1) // 2
    for net in nets:
        model = random_test_lpips(net)
        with torch.no_grad():
            t_pair = timed(lambda: model(images[:1], images[1:2]))
        engine = LPIPSDistance(model, memory_budget_mb=512, batch_size=8)
        t_block = timed(lambda: engine.pairwise(lambda idx: (images[list(idx)], masks[list(idx)]), n))
        print(f"LPIPS {net} @ {size} px: per-pair lpips forward {1 / t_pair:.1f} pairs/s; "
              f"LPIPSDistance.pairwise over {n} images {pairs / t_block:.1f} pairs/s "
              f"(global + region distances, {pairs} pairs in {t_block:.2f} s)")


def bench_ic_lpips(size: int, sizes, centres: int, cap: int, net: str) -> None:
    model = random_test_lpips(net)
    print(f"IC-LPIPS cost vs N (k = {centres} centres, cap = {cap} per cluster, LPIPS {net} @ {size} px):")
    print(f"{'N':>6} {'seconds':>8} {'trunk passes':>13} {'pairs':>7} {'scored clusters':>16}")
    rng = np.random.default_rng(0)
    for n in sizes:
        gen = torch.Generator().manual_seed(n)
        images = torch.rand(n, 3, size, size, generator=gen) * 2 - 1
        real = torch.rand(centres, 3, size, size, generator=gen) * 2 - 1
        masks = torch.ones(n, size, size, dtype=torch.bool)
        engine = LPIPSDistance(model, memory_budget_mb=512, batch_size=8)
        start = time.perf_counter()
        glob, _ = engine.cross(lambda idx: (images[list(idx)], masks[list(idx)]), n,
                               lambda idx: (real[list(idx)], masks[:len(idx)]), centres)
        glob = glob + rng.uniform(0, 1e-3, glob.shape)  # random images are all alike: spread them over clusters
        n_pairs = 0

        def pairwise(members):
            nonlocal n_pairs
            n_pairs += len(members) * (len(members) - 1) // 2
            return engine.pairwise(lambda idx: (images[[members[i] for i in idx]], masks[list(idx)]), len(members))[0]

        result = intra_cluster_lpips(glob, pairwise, cap=cap)
        seconds = time.perf_counter() - start
        print(f"{n:>6} {seconds:>8.2f} {engine.trunk_passes:>13} {n_pairs:>7} {result.scored_clusters:>16}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smaller sizes (a minute or two on 2 cores)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    bench_inception(args.size, 8)
    bench_lpips(args.size, 6 if args.quick else 12, ["alex"] if args.quick else ["alex", "vgg"])
    sizes = [10, 20, 40, 80] if args.quick else [25, 50, 100, 200, 400]
    bench_ic_lpips(128 if args.quick else args.size, sizes, centres=2, cap=10 if args.quick else 50, net="alex")


if __name__ == "__main__":
    main()
