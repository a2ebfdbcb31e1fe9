"""Generation-quality formulas against independent hand computations (no code under test reused).

FID vs the closed form with scipy's sqrtm; KID vs an unbiased MMD^2 written with loops; IS vs
the KL definition; IC-LPIPS vs a brute-force loop on a toy distance; the block-wise LPIPS
matrices vs `lpips.LPIPS` called on every pair."""

import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from benchmark.quality.ic_lpips import cluster_members, intra_cluster_lpips
from benchmark.quality.inception_metrics import frechet_distance, inception_score, kernel_inception_distance


# -- FID -------------------------------------------------------------------------------------------
def closed_form_fid(x: np.ndarray, y: np.ndarray) -> float:
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("shift", [0.0, 0.7])
def test_fid_matches_closed_form_on_gaussian_features(shift):
    rng = np.random.default_rng(0)
    d = 6
    a = rng.normal(size=(d, d))
    x = rng.normal(size=(400, d))
    y = rng.normal(size=(300, d)) @ a * 0.5 + shift
    expected = closed_form_fid(x, y)
    got = frechet_distance(torch.from_numpy(x), torch.from_numpy(y))
    assert got == pytest.approx(expected, abs=1e-6)
    assert expected > 0.5  # a case where the distance is far from zero


def test_fid_needs_two_features_per_side():
    assert frechet_distance(torch.zeros(1, 4), torch.randn(5, 4)) is None


# -- KID -------------------------------------------------------------------------------------------
def unbiased_mmd2_poly(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_unbiased_mmd_when_the_subset_is_the_whole_set():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 5)), rng.normal(loc=0.4, size=(12, 5))
    out = kernel_inception_distance(torch.from_numpy(x), torch.from_numpy(y), subsets=7, max_subset_size=12)
    assert out["kid_subset_size"] == 12
    # every subset is a permutation of the full sets, and MMD^2_u does not depend on the order
    assert out["kid_mean"] == pytest.approx(unbiased_mmd2_poly(x, y), abs=1e-9)
    assert out["kid_std"] == pytest.approx(0.0, abs=1e-9)


def test_kid_subsets_are_reproducible_and_sized_by_the_smaller_set():
    rng = np.random.default_rng(2)
    x, y = torch.from_numpy(rng.normal(size=(9, 3))), torch.from_numpy(rng.normal(size=(30, 3)))
    a = kernel_inception_distance(x, y, subsets=20, max_subset_size=1000, seed=5)
    b = kernel_inception_distance(x, y, subsets=20, max_subset_size=1000, seed=5)
    assert a == b and a["kid_subset_size"] == 9 and a["kid_std"] > 0


# -- IS --------------------------------------------------------------------------------------------
def test_inception_score_one_split_matches_the_kl_definition():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=2.0, size=(20, 7))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    marginal = p.mean(0)
    kl = [sum(p[i, c] * (math.log(p[i, c]) - math.log(marginal[c])) for c in range(7)) for i in range(20)]
    expected = math.exp(sum(kl) / 20)
    out = inception_score(torch.from_numpy(logits), splits=1)
    assert out["is"] == pytest.approx(expected, rel=1e-9)
    assert out["is_std"] is None and out["is_splits"] == 1


def test_inception_score_splits_hold_at_least_ten_images():
    logits = torch.randn(35, 4, generator=torch.Generator().manual_seed(0))
    assert inception_score(logits, splits=10)["is_splits"] == 3
    assert inception_score(logits[:9], splits=10)["is_splits"] == 1
    assert inception_score(torch.randn(500, 4), splits=10)["is_splits"] == 10


def test_inception_score_of_identical_confident_predictions_is_one_and_of_distinct_ones_is_k():
    same = torch.tensor([[50.0, 0, 0]] * 6)
    distinct = torch.tensor([[50.0, 0, 0], [0, 50.0, 0], [0, 0, 50.0]] * 2)
    assert inception_score(same, splits=1)["is"] == pytest.approx(1.0, abs=1e-6)
    assert inception_score(distinct, splits=1)["is"] == pytest.approx(3.0, abs=1e-6)


# -- IC-LPIPS --------------------------------------------------------------------------------------
def brute_force_ic(generated: list[float], centres: list[float], small_zero: bool = False) -> float | None:
    """Ojha et al.'s protocol written out with loops, distance |a - b|; small_zero: a cluster of
    fewer than two images scores 0 and counts (SeaS's evaluation code)."""
    clusters = {c: [] for c in range(len(centres))}
    for g in generated:
        best, best_d = None, None
        for c, centre in enumerate(centres):
            d = abs(g - centre)
            if best_d is None or d < best_d:
                best, best_d = c, d
        clusters[best].append(g)
    per_cluster = []
    for members in clusters.values():
        pairs = [abs(a - b) for a, b in itertools.combinations(members, 2)]
        if pairs:
            per_cluster.append(sum(pairs) / len(pairs))
        elif small_zero:
            per_cluster.append(0.0)
    return sum(per_cluster) / len(per_cluster) if per_cluster else None


@pytest.mark.parametrize("small_clusters", ["zero", "skip"])
@pytest.mark.parametrize("seed", range(6))
def test_ic_lpips_matches_brute_force_on_a_toy_distance(seed, small_clusters):
    rng = np.random.default_rng(seed)
    centres = list(rng.uniform(0, 10, size=rng.integers(1, 5)))
    generated = list(rng.uniform(0, 10, size=rng.integers(2, 25)))
    g, c = np.array(generated), np.array(centres)
    to_centres = np.abs(g[:, None] - c[None, :])

    def pairwise(members):
        v = g[list(members)]
        return np.abs(v[:, None] - v[None, :])

    result = intra_cluster_lpips(to_centres, pairwise, cap=1000, small_clusters=small_clusters)
    expected = brute_force_ic(generated, centres, small_zero=small_clusters == "zero")
    if expected is None:
        assert result.value is None
    else:
        assert result.value == pytest.approx(expected, rel=1e-12)
    assert sum(result.cluster_sizes) == len(generated)


def test_ic_lpips_cap_samples_members_of_the_cluster_reproducibly():
    assignment = np.array([0] * 80 + [1] * 3)
    first = cluster_members(assignment, 2, cap=50, seed=4)
    again = cluster_members(assignment, 2, cap=50, seed=4)
    other = cluster_members(assignment, 2, cap=50, seed=5)
    assert first == again and first != other
    assert len(first[0]) == 50 and len(set(first[0])) == 50 and set(first[0]) <= set(range(80))
    assert first[1] == [80, 81, 82]


def test_ic_lpips_clusters_without_a_pair_score_zero_or_do_not_count():
    to_centres = np.array([[0.0, 9.0, 9.0], [0.1, 9.0, 9.0], [9.0, 0.0, 9.0]])  # sizes 2, 1, 0
    pair = lambda m: np.array([[0.0, 0.3], [0.3, 0.0]])  # noqa: E731
    skip = intra_cluster_lpips(to_centres, pair, cap=50, small_clusters="skip")
    assert skip.value == pytest.approx(0.3) and skip.scored_clusters == 1
    assert skip.cluster_sizes == [2, 1, 0]
    zero = intra_cluster_lpips(to_centres, pair, cap=50)  # the default, as SeaS's code: (0.3 + 0 + 0) / 3
    assert zero.value == pytest.approx(0.1) and zero.scored_clusters == 3


# -- LPIPS matrices --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_lpips():
    from benchmark.quality.networks import random_test_lpips

    return random_test_lpips("alex", seed=3)


def test_block_wise_lpips_equals_lpips_on_every_pair(random_lpips, one_thread):
    import lpips

    from benchmark.quality.lpips_distance import LPIPSDistance

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 64, 64, generator=gen) * 2 - 1
    masks = torch.zeros(5, 64, 64, dtype=torch.bool)
    masks[0, 5:20, 5:30] = True
    masks[1, 30:60, 10:20] = True
    masks[3, 0:64, 40:64] = True  # images 2 and 4 have empty masks

    def load(idx):
        return images[list(idx)], masks[list(idx)]

    engine = LPIPSDistance(random_lpips, memory_budget_mb=0.01, batch_size=2)  # tiny budget: one image per block
    glob, region = engine.pairwise(load, 5)
    cross_g, cross_r = engine.cross(load, 5, lambda idx: load([i + 2 for i in idx]), 3)

    spatial = lpips.LPIPS(pretrained=False, net="alex", pnet_rand=True, spatial=True, verbose=False)
    spatial.load_state_dict(random_lpips.state_dict())
    spatial.eval()
    with torch.no_grad():
        for i, j in itertools.product(range(5), range(5)):
            if i == j:
                assert glob[i, j] == 0
                continue
            expected = float(random_lpips(images[i:i + 1], images[j:j + 1]))
            assert glob[i, j] == pytest.approx(expected, rel=1e-4, abs=1e-6)
            union = masks[i] | masks[j]
            if union.any():
                smap = spatial(images[i:i + 1], images[j:j + 1])[0, 0]
                assert region[i, j] == pytest.approx(float(smap[union].mean()), rel=1e-4, abs=1e-6)
            else:
                assert math.isnan(region[i, j])
        for i, j in itertools.product(range(5), range(3)):
            assert cross_g[i, j] == pytest.approx(float(random_lpips(images[i:i + 1], images[j + 2:j + 3])),
                                                  rel=1e-4, abs=1e-6)
    off = ~np.eye(3, dtype=bool)  # cross rows 2-4 x columns 2-4: the same pairs as the pairwise matrix
    assert np.allclose(cross_r[2:][off], region[2:, 2:][off], equal_nan=True)
