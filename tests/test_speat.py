import itertools
import time

import numpy as np
import pytest
import torch

from s3kit.eval.speat import (association, bootstrap_ci, effect_size, magnitude, permutation_p, speat,
                              speat_layers)

# Hand example in 2-D: A = {e1}, B = {e2}, so s(w) = (w1 - w2) / |w|.
# X = {(1,0), (1,1)} -> s = 1, 0; Y = {(0,1)} -> s = -1.
# mean_x - mean_y = 0.5 - (-1) = 1.5; sample std (ddof=1) of {1, 0, -1} = 1  =>  d = 1.5
# (ddof=0 would give 1.5 / sqrt(2/3) = 1.837).
HX = np.array([[1.0, 0.0], [1.0, 1.0]])
HY = np.array([[0.0, 1.0]])
HA = np.array([[1.0, 0.0]])
HB = np.array([[0.0, 1.0]])


def test_association_hand_values():
    np.testing.assert_allclose(association(np.concatenate([HX, HY]), HA, HB), [1.0, 0.0, -1.0], atol=1e-12)
    # Scale of w and of the attributes does not matter (cosines), and means over A are taken.
    A2 = np.array([[3.0, 0.0], [1.0, 1.0]])  # cos((1,0), .) = 1 and 1/sqrt2
    np.testing.assert_allclose(association(np.array([[5.0, 0.0]]), A2, HB), [(1 + 2**-0.5) / 2], atol=1e-12)


def test_effect_size_hand_value_ddof1():
    assert effect_size(HX, HY, HA, HB) == pytest.approx(1.5, abs=1e-12)


def test_swap_negates_and_tensors_accepted():
    d = effect_size(HX, HY, HA, HB)
    assert effect_size(HY, HX, HA, HB) == pytest.approx(-d)
    assert effect_size(HX, HY, HB, HA) == pytest.approx(-d)
    assert effect_size(*(torch.tensor(v) for v in (HX, HY, HA, HB))) == pytest.approx(d)


def _brute_force_p(X, Y, A, B):
    W = np.concatenate([X, Y])
    s = association(W, A, B)
    obs = s[: len(X)].sum()
    stats = [s[list(c)].sum() for c in itertools.combinations(range(len(W)), len(X))]
    return np.mean([t >= obs - 1e-12 for t in stats])


@pytest.mark.parametrize("nx,ny", [(4, 4), (3, 5)])
def test_permutation_p_exact_matches_brute_force(nx, ny):
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(nx, 5)) + 0.3, rng.normal(size=(ny, 5))
    A, B = rng.normal(size=(6, 5)) + 0.3, rng.normal(size=(7, 5))
    expected = _brute_force_p(X, Y, A, B)
    r = speat(X, Y, A, B, n_permutations=1000, n_bootstrap=0)
    assert r.exact and r.n_permutations == len(list(itertools.combinations(range(nx + ny), nx)))
    assert r.p_value == pytest.approx(expected, abs=1e-12)
    assert permutation_p(X, Y, A, B, n_permutations=1000) == pytest.approx(expected, abs=1e-12)


def test_sampled_p_close_to_exact_and_add_one():
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(7, 5)) + 0.2, rng.normal(size=(7, 5))
    A, B = rng.normal(size=(6, 5)) + 0.2, rng.normal(size=(6, 5))
    exact = permutation_p(X, Y, A, B, n_permutations=10_000)  # C(14, 7) = 3432 -> exact
    sampled = permutation_p(X, Y, A, B, n_permutations=3000, seed=3)  # 3000 < 3432 -> sampled
    assert abs(sampled - exact) < 0.03
    # Never 0: the observed partition is one pseudo-count.
    strong = permutation_p(X + 10 * A.mean(0), Y + 10 * B.mean(0), A, B, n_permutations=3000)
    assert strong >= 1 / 3000


def test_identical_groups_d_zero_p_large():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(20, 8))
    A, B = rng.normal(size=(20, 8)), rng.normal(size=(20, 8))
    r = speat(X, X.copy(), A, B, n_permutations=20_000, n_bootstrap=2000)
    assert r.d == pytest.approx(0.0, abs=1e-12)
    assert r.magnitude == "negligible"
    assert 0.4 < r.p_value <= 1.0
    assert r.ci_low < 0 < r.ci_high


def test_planted_association_large_d_small_p():
    rng = np.random.default_rng(5)
    D = 16
    pos, neg = rng.normal(size=D), rng.normal(size=D)
    A = pos + 0.5 * rng.normal(size=(30, D))
    B = neg + 0.5 * rng.normal(size=(30, D))
    X = 0.5 * pos + rng.normal(size=(30, D))  # X leans towards the positive attributes
    Y = 0.5 * neg + rng.normal(size=(30, D))
    r = speat(X, Y, A, B, n_permutations=10_000, n_bootstrap=2000, seed=0)
    assert r.d > 0.8 and r.magnitude == "large"
    assert r.p_value < 0.01
    assert r.ci_low < r.d < r.ci_high and r.ci_low > 0
    # Reverse bias: same magnitude, negative d, p near 1.
    rev = speat(Y, X, A, B, n_permutations=10_000, n_bootstrap=0)
    assert rev.d == pytest.approx(-r.d) and rev.p_value > 0.99


def test_bootstrap_deterministic_and_level():
    rng = np.random.default_rng(6)
    X, Y, A, B = (rng.normal(size=(15, 6)) for _ in range(4))
    lo1, hi1 = bootstrap_ci(X, Y, A, B, n_bootstrap=500, seed=7)
    assert (lo1, hi1) == bootstrap_ci(X, Y, A, B, n_bootstrap=500, seed=7)
    lo2, hi2 = bootstrap_ci(X, Y, A, B, n_bootstrap=500, seed=7, level=0.5)
    assert lo1 < lo2 < hi2 < hi1


def test_magnitude_thresholds():
    assert [magnitude(v) for v in (0.1, 0.2, 0.49, 0.5, 0.79, 0.8, -0.9)] == [
        "negligible", "small", "small", "medium", "medium", "large", "large"]


def test_layers_aggregate_is_mean_over_layers():
    rng = np.random.default_rng(8)
    X, Y, A, B = (rng.normal(size=(6, 3, 4)) for _ in range(4))
    r = speat_layers(X, Y, A, B, n_permutations=100, n_bootstrap=0)
    assert len(r.per_layer) == 3
    assert r.aggregate.d == pytest.approx(effect_size(X.mean(1), Y.mean(1), A.mean(1), B.mean(1)))
    assert r.per_layer[1].d == pytest.approx(effect_size(X[:, 1], Y[:, 1], A[:, 1], B[:, 1]))


def test_bad_input_errors():
    with pytest.raises(ValueError, match="different feature sizes"):
        effect_size(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="at least 3"):
        effect_size(np.ones((1, 3)), np.ones((1, 3)), np.ones((2, 3)), np.ones((2, 3)))


def test_speed_10k_permutations_60_targets():
    rng = np.random.default_rng(9)
    X, Y, A, B = (rng.normal(size=(60, 256)) for _ in range(4))
    t = time.perf_counter()
    speat(X, Y, A, B, n_permutations=10_000, n_bootstrap=0)
    assert time.perf_counter() - t < 1.0


def test_resample_says_where_the_uncertainty_comes_from():
    rng = np.random.default_rng(8)
    D = 8
    u = np.eye(D)[0]
    X = u + 0.3 * rng.normal(size=(20, D))  # the two target groups differ along u
    Y = -u + 0.3 * rng.normal(size=(20, D))
    # three attribute clips per set, whose valence direction disagrees: A = {+u, +u, -u}, B = {-u, -u, +u}
    A = np.stack([u, u, -u]) + 0.05 * rng.normal(size=(3, D))
    B = -A[[0, 1, 2]] + 0.05 * rng.normal(size=(3, D))
    kw = dict(n_permutations=10_000, n_bootstrap=4000, seed=0)
    targets = speat(X, Y, A, B, resample="targets", **kw)
    both = speat(X, Y, A, B, resample="both", **kw)
    attributes = speat(X, Y, A, B, resample="attributes", **kw)
    assert targets.d == both.d > 1.5 and targets.p_value < 1e-3 and both.resample == "both"
    # with the attributes fixed the targets leave no doubt; a draw of other attribute clips can flip d
    assert targets.ci_low > 1.0
    assert attributes.ci_low < 0 < attributes.ci_high and both.ci_low < 0 < both.ci_high
    # known answers: a resample of identical rows changes nothing, so that source's interval is a point
    A_same, B_same = np.repeat(A[:1], 5, axis=0), np.repeat(B[:1], 5, axis=0)
    d_same = effect_size(X, Y, A_same, B_same)
    assert bootstrap_ci(X, Y, A_same, B_same, n_bootstrap=300, resample="attributes") == pytest.approx((d_same, d_same))
    X_same, Y_same = np.repeat(X[:1], 6, axis=0), np.repeat(Y[:1], 6, axis=0)
    d_t = effect_size(X_same, Y_same, A, B)
    assert bootstrap_ci(X_same, Y_same, A, B, n_bootstrap=300, resample="targets") == pytest.approx((d_t, d_t))
    with pytest.raises(ValueError, match="resample='stimuli'"):
        speat(X, Y, A, B, n_bootstrap=10, resample="stimuli")


def test_speat_difference_paired_known_answers():
    from s3kit.eval.speat import speat_difference

    rng = np.random.default_rng(9)
    D = 16
    pos, neg = rng.normal(size=D), rng.normal(size=D)
    A, B = pos + 0.5 * rng.normal(size=(20, D)), neg + 0.5 * rng.normal(size=(20, D))
    noise_x, noise_y = rng.normal(size=(20, D)), rng.normal(size=(20, D))
    biased = (0.6 * pos + noise_x, 0.6 * neg + noise_y, A, B)
    neutral = (noise_x, noise_y, A, B)  # the same voices without the planted association
    res = speat_difference(biased, neutral, n_bootstrap=1000)
    assert res.rate_a == pytest.approx(effect_size(*biased)) and res.rate_b == pytest.approx(effect_size(*neutral))
    assert res.diff == pytest.approx(res.rate_a - res.rate_b) and res.ci_low > 0 and res.p < 0.01
    # the same model twice: every resample gives 0
    same = speat_difference(biased, tuple(np.array(v) for v in biased), n_bootstrap=200)
    assert same.diff == 0 and same.ci_low == same.ci_high == 0 and same.p == 1.0
    # a rotated copy (cosines unchanged) is the same model for SpEAT
    Q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    rotated = speat_difference(biased, tuple(v @ Q for v in biased), n_bootstrap=200)
    assert abs(rotated.diff) < 1e-9 and rotated.p == 1.0
