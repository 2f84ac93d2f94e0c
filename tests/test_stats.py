"""s3kit.eval.stats against scipy and hand computations."""

import math

import numpy as np
import pytest
from scipy import stats as st

from s3kit.eval.stats import (
    accuracy_interval,
    bootstrap_rate,
    bootstrap_stat,
    detectable_difference,
    format_score,
    holm,
    mcnemar_exact,
    paired_bootstrap,
    paired_bootstrap_stat,
    seed_summary,
    wilson_ci,
)


def _wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(33, 38), (0, 10), (10, 10), (1, 2), (500, 1000)])
def test_wilson_matches_scipy_and_the_formula(k, n):
    low, high = wilson_ci(k, n)
    ref = st.binomtest(k, n).proportion_ci(method="wilson")
    assert low == pytest.approx(ref.low, abs=1e-12) and high == pytest.approx(ref.high, abs=1e-12)
    hand = _wilson_by_hand(k, n)
    assert low == pytest.approx(max(0.0, hand[0]), abs=1e-9) and high == pytest.approx(min(1.0, hand[1]), abs=1e-9)


def test_wilson_of_the_issue_example_and_bad_input():
    low, high = wilson_ci(33, 38)
    assert round(low, 3) == 0.727 and round(high, 3) == 0.942
    with pytest.raises(ValueError, match="n > 0"):
        wilson_ci(0, 0)
    with pytest.raises(ValueError, match="k <= n"):
        wilson_ci(5, 4)


def test_mcnemar_exact_is_a_binomial_test_on_discordant_pairs():
    a = np.array([1, 1, 1, 1, 1, 0, 1, 0], bool)
    b = np.array([0, 0, 0, 0, 0, 0, 1, 0], bool)
    # 5 items right for A only, 0 for B only: p = 2 * 0.5**5
    assert mcnemar_exact(a, b) == pytest.approx(2 * 0.5**5)
    rng = np.random.default_rng(0)
    a, b = rng.random(200) < 0.7, rng.random(200) < 0.6
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    assert mcnemar_exact(a, b) == pytest.approx(st.binomtest(only_a, only_a + only_b).pvalue)
    assert mcnemar_exact(a, a) == 1.0
    with pytest.raises(ValueError, match="same items"):
        mcnemar_exact(a, b[:-1])


def test_holm_by_hand_keeps_the_given_order():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.2, 1.5])


def test_paired_bootstrap_finds_a_planted_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    ref = rng.integers(5, 30, size=300)
    errors_b = rng.binomial(ref, 0.20)
    errors_a = rng.binomial(ref, 0.30)
    res = paired_bootstrap(errors_a, errors_b, ref, n_bootstrap=2000)
    assert res.diff == pytest.approx(errors_a.sum() / ref.sum() - errors_b.sum() / ref.sum())
    assert res.rate_a == pytest.approx(errors_a.sum() / ref.sum())
    assert 0 < res.ci_low < res.diff < res.ci_high
    assert res.p < 0.01 and res.n == 300
    same = paired_bootstrap(errors_a, errors_a, ref, n_bootstrap=500)
    assert same.diff == 0 and same.ci_low == same.ci_high == 0 and same.p == 1.0


def test_paired_bootstrap_p_is_never_zero_and_is_reproducible():
    ref = np.full(50, 10)
    a, b = np.full(50, 5), np.zeros(50, int)
    r1 = paired_bootstrap(a, b, ref, n_bootstrap=999, seed=3)
    assert r1.p == pytest.approx(2 / 1000)
    assert paired_bootstrap(a + np.arange(50) % 3, b, ref, seed=7) == paired_bootstrap(a + np.arange(50) % 3, b, ref, seed=7)


def test_bootstrap_rate_interval_covers_the_corpus_rate():
    rng = np.random.default_rng(2)
    ref = rng.integers(5, 20, size=400)
    err = rng.binomial(ref, 0.25)
    iv = bootstrap_rate(err, ref, n_bootstrap=2000)
    assert iv.value == pytest.approx(err.sum() / ref.sum())
    assert iv.ci_low < iv.value < iv.ci_high and iv.n == 400
    # the binomial standard error of the pooled rate, as a sanity bound on the width
    se = math.sqrt(0.25 * 0.75 / ref.sum())
    assert 2.5 * se < iv.ci_high - iv.ci_low < 6 * se


def test_paired_bootstrap_stat_with_a_generic_statistic():
    a = np.r_[np.ones(40), np.zeros(10)]
    b = np.r_[np.ones(25), np.zeros(25)]
    res = paired_bootstrap_stat(lambda idx: (a[idx].mean(), b[idx].mean()), 50, n_bootstrap=1000)
    assert res.diff == pytest.approx(0.3) and res.p < 0.01
    iv = bootstrap_stat(lambda idx: a[idx].mean(), 50, n_bootstrap=1000)
    assert iv.value == pytest.approx(0.8) and iv.ci_low < 0.8 < iv.ci_high


def test_seed_summary_is_a_t_interval():
    s = seed_summary([0.70, 0.74, 0.72])
    half = st.t.ppf(0.975, 2) * 0.02 / math.sqrt(3)
    assert s.mean == pytest.approx(0.72) and s.sd == pytest.approx(0.02)
    assert (s.ci_low, s.ci_high) == pytest.approx((0.72 - half, 0.72 + half))
    one = seed_summary([0.5])
    assert one.mean == 0.5 and math.isnan(one.sd) and math.isnan(one.ci_low)


def test_accuracy_interval_and_house_style():
    iv = accuracy_interval(np.r_[np.ones(33, bool), np.zeros(5, bool)])
    assert str(iv) == "0.868 [0.727, 0.942], n=38"
    assert format_score(0.5, math.nan, math.nan, 1) == "0.500 [n.a.], n=1"


def test_detectable_difference_shrinks_with_n():
    d38, d400 = detectable_difference(38, p=0.8), detectable_difference(400, p=0.8)
    z = st.norm.ppf(0.975) + st.norm.ppf(0.8)
    assert d38 == pytest.approx(z * math.sqrt(2 * 0.8 * 0.2 / 38))
    assert d400 < d38 / 3
    assert detectable_difference(100, discordant=0.1) == pytest.approx(z * math.sqrt(0.001))


def test_seed_interval_is_clipped_to_the_metric_range():
    from s3kit.eval.stats import metric_bounds

    free = seed_summary([0.2, 0.9])  # two seeds: mean 0.55 ± 12.7 * 0.495 / sqrt(2)
    assert free.ci_low < 0 and free.ci_high > 1
    clipped = seed_summary([0.2, 0.9], bounds=metric_bounds("accuracy"))
    assert (clipped.ci_low, clipped.ci_high) == (0.0, 1.0) and clipped.mean == free.mean
    per = seed_summary([0.01, 0.5], bounds=metric_bounds("per"))
    half = st.t.ppf(0.975, 1) * np.std([0.01, 0.5], ddof=1) / math.sqrt(2)
    assert per.ci_low == 0.0 and per.ci_high == pytest.approx(0.255 + half)
    assert metric_bounds("something-else") is None
