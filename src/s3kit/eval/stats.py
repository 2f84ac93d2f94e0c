"""Evidence: intervals for every score, paired tests for every comparison.

Dimension legend: ``N`` test items, ``B`` bootstrap resamples, ``S`` seeds, ``M`` tests in a family.

What s3kit reports with each kind of score (SPEC, "Evaluation: Evidence"):

* accuracies (KS, IC, SID, ER): the Wilson score interval of ``k`` correct out of ``n``
  (:func:`wilson_ci`); two systems on the same items: exact McNemar (:func:`mcnemar_exact`);
* corpus error rates (PER, WER, CER: summed edits / summed reference length) and other ratios
  of sums over utterances: an utterance-level bootstrap (:func:`bootstrap_rate`), and for two
  systems the paired bootstrap that resamples utterances jointly (:func:`paired_bootstrap`);
* a score over several seeds: the mean with a t interval over the seeds (:func:`seed_summary`);
* a table of comparisons: Holm's step-down adjustment (:func:`holm`).

Distributions come from scipy; nothing here hand-rolls a quantile or a tail probability.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _st

LEVEL = 0.95  # every interval s3kit prints is a 95 % interval unless asked otherwise
N_BOOTSTRAP = 10_000  # resamples: the percentile interval's Monte Carlo error is then ~0.2 % of its width


def wilson_ci(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` trials (scipy's ``binomtest`` Wilson CI).

    Unlike the normal ("Wald") interval it stays inside [0, 1] and keeps its coverage for small
    ``n`` and for proportions near 0 or 1 (33 of 38 -> [0.727, 0.942]).
    """
    k, n = int(k), int(n)
    if n <= 0:
        raise ValueError(f"wilson_ci: need n > 0 items, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_ci: need 0 <= k <= n, got k={k}, n={n}")
    ci = _st.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def _as_bool(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name}: need a 1-d array of per-item results, got shape {a.shape}")
    if a.dtype != bool:
        if not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name}: need booleans (item correct or not), got values outside {{0, 1}}")
        a = a.astype(bool)
    return a


def mcnemar_exact(a_correct, b_correct) -> float:
    """Exact two-sided McNemar p-value for two systems scored on the same ``N`` items.

    Only discordant items carry information: with ``b`` items right for A only and ``c`` for B
    only, under H0 ``b ~ Binomial(b + c, 1/2)``; the p-value is scipy's two-sided binomial test.
    No discordant item: p = 1.
    """
    a = _as_bool(a_correct, "mcnemar_exact a_correct")
    b = _as_bool(b_correct, "mcnemar_exact b_correct")
    if a.shape != b.shape:
        raise ValueError(f"mcnemar_exact: the systems were scored on {a.size} and {b.size} items; need the same items")
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 1.0
    return float(_st.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values ``[M]``, in the order given.

    Sorted ascending, the i-th smallest (0-based) is multiplied by ``M - i``; a running maximum
    keeps the adjusted values monotone; each is capped at 1. Controls the family-wise error rate
    for any dependence between the tests.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"holm: need a flat list of p-values, got shape {p.shape}")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"holm: p-values must lie in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted_sorted
    return out.tolist()


def bootstrap_indices(n: int, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """``[B, N]`` item indices drawn with replacement (one row per resample), reproducible by ``seed``."""
    if n <= 0:
        raise ValueError(f"bootstrap: need at least one item, got {n}")
    return np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))


def _percentile_ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(samples, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Interval:
    """A statistic with its interval: ``value [ci_low, ci_high], n=n``."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return format_score(self.value, self.ci_low, self.ci_high, self.n)


def bootstrap_rate(
    numerators, denominators, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, level: float = LEVEL
) -> Interval:
    """Utterance-level bootstrap of a ratio of sums, e.g. a corpus error rate ``sum edits / sum ref_len``.

    ``numerators [N]`` (edits per utterance), ``denominators [N]`` (reference lengths); utterances
    are resampled whole, so a long, hard sentence counts as much as it does in the score.
    """
    num = np.asarray(numerators, dtype=float)
    den = np.asarray(denominators, dtype=float)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"bootstrap_rate: need equal 1-d arrays, got {num.shape} and {den.shape}")
    if den.sum() <= 0:
        raise ValueError("bootstrap_rate: the denominators sum to 0 (all references empty?)")
    idx = bootstrap_indices(num.size, n_bootstrap, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = num[idx].sum(1) / den[idx].sum(1)
    low, high = _percentile_ci(samples, level)
    return Interval(float(num.sum() / den.sum()), low, high, int(num.size))


@dataclass(frozen=True)
class PairedBootstrap:
    """Difference ``rate(A) - rate(B)`` of two systems on the same utterances, with its interval and p."""

    diff: float
    ci_low: float
    ci_high: float
    p: float
    n: int
    rate_a: float
    rate_b: float

    def as_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(
    errors_a,
    errors_b,
    ref_lengths,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    level: float = LEVEL,
) -> PairedBootstrap:
    """Paired, utterance-level bootstrap of the difference of two corpus error rates.

    ``errors_a [N]``, ``errors_b [N]``: edits of systems A and B on the same ``N`` utterances;
    ``ref_lengths [N]``: the reference lengths. Each resample draws utterances with replacement
    and applies the same draw to both systems, so what the two share (hard utterances) cancels.
    ``p`` is the two-sided bootstrap p-value of "no difference": twice the smaller share of
    resampled differences on either side of 0, add-one smoothed so it is never 0.
    """
    ea = np.asarray(errors_a, dtype=float)
    eb = np.asarray(errors_b, dtype=float)
    ref = np.asarray(ref_lengths, dtype=float)
    if not (ea.shape == eb.shape == ref.shape) or ea.ndim != 1:
        raise ValueError(
            f"paired_bootstrap: need per-utterance arrays of one length, got {ea.shape}, {eb.shape}, {ref.shape}"
        )
    if ref.sum() <= 0:
        raise ValueError("paired_bootstrap: the reference lengths sum to 0")
    rate_a, rate_b = ea.sum() / ref.sum(), eb.sum() / ref.sum()
    idx = bootstrap_indices(ea.size, n_bootstrap, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        diffs = (ea[idx].sum(1) - eb[idx].sum(1)) / ref[idx].sum(1)
    return _paired_result(float(rate_a - rate_b), diffs, level, ea.size, float(rate_a), float(rate_b))


def bootstrap_p(replicates, null: float = 0.0) -> float:
    """Two-sided bootstrap p of "statistic = ``null``": twice the smaller share of the (finite)
    replicates on either side of ``null`` (ties count on both sides), add-one smoothed so it is
    never 0, at most 1; 1 when every replicate equals ``null``, NaN when none is finite."""
    r = np.asarray(replicates, dtype=float)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return math.nan
    if np.all(r == null):
        return 1.0
    below, above = int(np.sum(r <= null)), int(np.sum(r >= null))
    return min(1.0, 2 * (min(below, above) + 1) / (r.size + 1))


def _paired_result(diff, diffs, level, n, a, b) -> PairedBootstrap:
    diffs = diffs[~np.isnan(diffs)]
    low, high = _percentile_ci(diffs, level)
    return PairedBootstrap(diff, low, high, bootstrap_p(diffs), int(n), a, b)


def paired_bootstrap_stat(
    statistic, n: int, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, level: float = LEVEL
) -> PairedBootstrap:
    """Paired bootstrap of any per-system statistic over ``n`` shared items.

    ``statistic(idx) -> (value_a, value_b)`` evaluates both systems on the items ``idx [N]``
    (called once with ``arange(n)`` for the point estimate, then once per resample). For FAR at
    a fixed FRR, EER, or anything that is not a plain ratio of sums.
    """
    a0, b0 = statistic(np.arange(n))
    diffs = np.empty(n_bootstrap)
    for i, idx in enumerate(bootstrap_indices(n, n_bootstrap, seed)):
        a, b = statistic(idx)
        diffs[i] = a - b
    return _paired_result(float(a0 - b0), diffs, level, n, float(a0), float(b0))


def bootstrap_stat(
    statistic, n: int, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, level: float = LEVEL
) -> Interval:
    """Percentile bootstrap interval of ``statistic(idx) -> float`` over ``n`` items."""
    value = float(statistic(np.arange(n)))
    samples = np.array([statistic(idx) for idx in bootstrap_indices(n, n_bootstrap, seed)], dtype=float)
    low, high = _percentile_ci(samples, level)
    return Interval(value, low, high, int(n))


@dataclass(frozen=True)
class SeedSummary:
    """Mean of a score over ``n`` seeds, its sample sd (ddof 1) and a t interval of the mean."""

    mean: float
    sd: float
    ci_low: float
    ci_high: float
    n: int
    scores: tuple[float, ...]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["scores"] = list(self.scores)
        return d


def seed_summary(scores: Sequence[float], level: float = LEVEL,
                 bounds: tuple[float, float] | None = None) -> SeedSummary:
    """Mean, sample sd and ``mean ± t_{S-1} sd / sqrt(S)`` over the seeds' scores ``[S]``.

    ``bounds``: the metric's range (``(0, 1)`` for an accuracy): the interval is clipped to it.
    With few seeds ``t_{S-1}`` is large (12.7 for two) and an unclipped interval of an accuracy
    can reach below 0 or above 1, values the score cannot take.

    One seed has no spread to measure: sd and interval are NaN (not 0).
    """
    x = np.asarray(scores, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"seed_summary: need a non-empty list of per-seed scores, got shape {x.shape}")
    mean = float(x.mean())
    if x.size == 1:
        return SeedSummary(mean, math.nan, math.nan, math.nan, 1, tuple(x.tolist()))
    sd = float(x.std(ddof=1))
    half = float(_st.t.ppf(0.5 + level / 2, df=x.size - 1)) * sd / math.sqrt(x.size)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return SeedSummary(mean, sd, low, high, int(x.size), tuple(x.tolist()))


def metric_bounds(metric: str) -> tuple[float, float] | None:
    """The range a metric's value can take, for clipping t intervals (:func:`seed_summary`):
    accuracies and F1 in [0, 1], error rates (PER, WER, CER, DER) and counts >= 0, MTWV <= 1."""
    if metric in ("accuracy", "slot_type_f1", "map"):
        return (0.0, 1.0)
    if metric in ("per", "wer", "cer", "der", "updates"):
        return (0.0, math.inf)
    if metric == "mtwv":
        return (-math.inf, 1.0)
    return None


def accuracy_interval(correct, level: float = LEVEL) -> Interval:
    """Accuracy of per-item results ``correct [N]`` (bool) with its Wilson interval."""
    c = _as_bool(correct, "accuracy_interval")
    k, n = int(c.sum()), int(c.size)
    low, high = wilson_ci(k, n, level)
    return Interval(k / n, low, high, n)


def detectable_difference(
    n: int, p: float = 0.5, discordant: float | None = None, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest accuracy difference a paired test on ``n`` items detects with ``power`` at ``alpha``.

    Normal approximation to McNemar's test (Connor 1987, dropping the second-order term): with a
    discordant-pair share ``psi``, ``delta = (z_{1-alpha/2} + z_power) * sqrt(psi / n)``. Without a
    measured ``discordant`` share, ``psi = 2 p (1 - p)`` (two systems of accuracy ``p`` whose
    errors are independent), which is conservative for correlated systems.
    """
    if n <= 0:
        raise ValueError(f"detectable_difference: need n > 0, got {n}")
    psi = 2 * p * (1 - p) if discordant is None else float(discordant)
    z = _st.norm.ppf(1 - alpha / 2) + _st.norm.ppf(power)
    return float(z * math.sqrt(max(psi, 0.0) / n))


def format_score(value: float, low: float, high: float, n: int, digits: int = 3) -> str:
    """House style: ``0.868 [0.727, 0.942], n=38`` (``n.a.`` for an interval that does not exist)."""
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return f"{value:.{digits}f} [n.a.], n={n}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}], n={n}"
