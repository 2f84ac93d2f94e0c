"""The findings ledger: what a paper claims, what a run measured, and a verdict computed from it.

Dimension legend: ``N`` test items, ``B`` bootstrap resamples, ``D`` embedding width.

Each row (:class:`Finding`) states a claim as a direction against a null value (``greater``:
the effect exceeds ``null``; ``less``; ``nonzero``; ``none``: no effect, for controls), the
measured effect with its 95 % interval and p-value of "effect = null". :func:`ledger` adjusts the
p-values with Holm over the whole ledger and computes every verdict with :func:`verdict`;
nothing is written by hand:

* ``supported``: the interval lies entirely on the claimed side of ``null`` and the adjusted p
  is below ``alpha`` (``none``: the interval contains ``null``);
* ``contradicted``: the interval lies entirely on the other side and the adjusted p is below
  ``alpha`` (``none``: an effect was found where there must be none); ``nonzero`` claims cannot be
  contradicted by a test of "effect = 0", only left unsupported;
* ``inconclusive``: anything else, including a row that could not be measured (effect None).

The estimators below resample test items (utterances, stimuli) with replacement; two systems
scored on the same items are resampled jointly (paired). p-values are two-sided bootstrap
p-values: twice the smaller share of replicates on either side of ``null``, add-one smoothed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from s3kit.eval import stats
from s3kit.eval.stats import LEVEL, holm

ALPHA = 0.05
DIRECTIONS = ("greater", "less", "nonzero", "none")
VERDICTS = ("supported", "contradicted", "inconclusive")
KEYS = ("paper", "claim", "metric", "effect", "ci_low", "ci_high", "p", "p_adjusted", "verdict", "n")


def _finite(*xs) -> bool:
    return all(x is not None and isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def verdict(ci_low, ci_high, p_adjusted, direction: str, null: float = 0.0, alpha: float = ALPHA) -> str:
    """``supported`` / ``contradicted`` / ``inconclusive`` from the interval and the adjusted p
    (rules in the module docstring)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r}: choose one of {DIRECTIONS}")
    if not _finite(ci_low, ci_high, p_adjusted):
        return "inconclusive"
    if ci_low > ci_high:
        raise ValueError(f"interval [{ci_low}, {ci_high}] is reversed")
    significant = p_adjusted < alpha
    above, below = ci_low > null, ci_high < null
    if direction == "greater":
        return "supported" if above and significant else "contradicted" if below and significant else "inconclusive"
    if direction == "less":
        return "supported" if below and significant else "contradicted" if above and significant else "inconclusive"
    if direction == "nonzero":
        return "supported" if (above or below) and significant else "inconclusive"
    if (above or below) and significant:  # "none": a control where nothing may be found
        return "contradicted"
    return "supported" if not (above or below) else "inconclusive"


@dataclass
class Finding:
    """One ledger row; ``p_adjusted`` and ``verdict`` are filled in by :func:`ledger`."""

    paper: str
    claim: str
    metric: str
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    p: float | None
    n: int
    direction: str = "greater"
    null: float = 0.0
    note: str = ""
    p_adjusted: float | None = None
    verdict: str = "inconclusive"

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"{self.claim}: direction {self.direction!r}: choose one of {DIRECTIONS}")

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def unmeasured(paper: str, claim: str, metric: str, why: str, direction: str = "greater") -> Finding:
    """A row this run could not measure: no effect, verdict ``inconclusive``, ``note`` says why."""
    return Finding(paper, claim, metric, None, None, None, None, 0, direction, note=why)


def ledger(findings: Sequence[Finding], alpha: float = ALPHA) -> list[dict]:
    """Holm-adjust the rows' p-values over the ledger (rows without a p are left out of the
    family) and compute each verdict; returns the rows as dicts (keys :data:`KEYS` and more)."""
    tested = [i for i, f in enumerate(findings) if _finite(f.p)]
    adjusted = holm([findings[i].p for i in tested]) if tested else []
    out = []
    for i, f in enumerate(findings):
        f.p_adjusted = adjusted[tested.index(i)] if i in tested else None
        f.verdict = verdict(f.ci_low, f.ci_high, f.p_adjusted, f.direction, f.null, alpha)
        out.append(f.as_dict())
    return out


# ----------------------------------------------------------------------------- estimators


two_sided_p = stats.bootstrap_p  # the ledger's p: the same two-sided bootstrap p as every paired test


@dataclass(frozen=True)
class Estimate:
    """A statistic, its percentile interval and two-sided p against ``null`` over ``n`` items."""

    value: float
    ci_low: float
    ci_high: float
    p: float
    n: int


def _estimate(value: float, replicates: np.ndarray, null: float, n: int, level: float) -> Estimate:
    r = replicates[np.isfinite(replicates)]
    if r.size == 0:
        return Estimate(value, math.nan, math.nan, math.nan, n)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(r, [tail, 100 - tail])
    return Estimate(float(value), float(low), float(high), two_sided_p(r, null), int(n))


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, null: float = 0.0, n_bootstrap: int = 2000,
              seed: int = 0, level: float = LEVEL) -> Estimate:
    """``statistic(idx [N]) -> float`` on the items and on ``n_bootstrap`` resamples of them."""
    if n <= 0:
        raise ValueError(f"bootstrap: need at least one item, got {n}")
    rng = np.random.default_rng(seed)
    value = float(statistic(np.arange(n)))
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = np.array([statistic(rng.integers(0, n, n)) for _ in range(n_bootstrap)], dtype=float)
    return _estimate(value, reps, null, n, level)


def item_values(lines: Sequence[dict]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-item results of one system over its seeds (prediction lines with ``seed``, ``id`` and
    ``correct`` or ``errors`` + ``ref_length``) -> ``(ids, values [N], weights [N])``: the mean
    over seeds of correct (weights 1) or of the edit count (weights = reference length), so that
    ``values.sum() / weights.sum()`` is the seed-mean score."""
    by_id: dict[str, list[dict]] = {}
    for line in lines:
        by_id.setdefault(line["id"], []).append(line)
    if not by_id:
        raise ValueError("item_values: no prediction lines")
    ids = list(by_id)
    seeds = {len(v) for v in by_id.values()}
    if len(seeds) != 1:
        raise ValueError(f"item_values: items scored by different numbers of seeds {sorted(seeds)}")
    first = by_id[ids[0]][0]
    if "correct" in first:
        values = np.array([np.mean([bool(x["correct"]) for x in by_id[i]]) for i in ids])
        weights = np.ones(len(ids))
    else:
        values = np.array([np.mean([x["errors"] for x in by_id[i]]) for i in ids], dtype=float)
        weights = np.array([by_id[i][0]["ref_length"] for i in ids], dtype=float)
    return ids, values, weights


def _aligned(*systems: tuple[list[str], np.ndarray, np.ndarray]) -> None:
    ids = systems[0][0]
    for other in systems[1:]:
        if other[0] != ids:
            raise ValueError("systems were not scored on the same test items in the same order")


def rate(values: np.ndarray, weights: np.ndarray, idx: np.ndarray) -> float:
    return float(values[idx].sum() / weights[idx].sum())


def difference(a, b, null: float = 0.0, n_bootstrap: int = 2000, seed: int = 0) -> Estimate:
    """Score of A minus score of B (``item_values`` triples on the same items), items resampled jointly."""
    _aligned(a, b)
    (_, va, wa), (_, vb, wb) = a, b
    return bootstrap(lambda idx: rate(va, wa, idx) - rate(vb, wb, idx), len(va), null, n_bootstrap, seed)


def retained(student, teacher, floor, null: float = 0.5, n_bootstrap: int = 2000, seed: int = 0) -> Estimate:
    """Share of the teacher's gain over ``floor`` (its random initialisation) that the student keeps:
    ``(student - floor) / (teacher - floor)``, for accuracies and for error rates alike (both signs
    flip together), items resampled jointly for the three systems."""
    _aligned(student, teacher, floor)
    (_, vs, ws), (_, vt, wt), (_, vf, wf) = student, teacher, floor

    def stat(idx):
        f = rate(vf, wf, idx)
        gain = rate(vt, wt, idx) - f
        return (rate(vs, ws, idx) - f) / gain if gain != 0 else math.nan

    return bootstrap(stat, len(vs), null, n_bootstrap, seed)


# ----------------------------------------------------------------------------- SpEAT


def speat_interval(emb: np.ndarray, x, y, a, b, n_bootstrap: int = 2000, seed: int = 0, level: float = LEVEL,
                   baseline: np.ndarray | None = None) -> Estimate:
    """d with the interval that resamples targets AND attributes (each set within itself) and the
    bootstrap p of d = 0 (:func:`s3kit.eval.speat.bootstrap_d`). With ``baseline`` (the same
    stimuli embedded by another model, ``[N, D']``): d(emb) - d(baseline), the same resample
    applied to both (:func:`s3kit.eval.speat.speat_difference`)."""
    from s3kit.eval.speat import bootstrap_d, speat_difference

    sets = [np.asarray(s, dtype=int) for s in (x, y, a, b)]
    for s, name in zip(sets, "xyab"):
        if len(s) < 2:
            raise ValueError(f"SpEAT set {name} has {len(s)} stimuli; need at least 2")
    n = sum(len(s) for s in sets)
    if baseline is None:
        d, reps = bootstrap_d(*(emb[s] for s in sets), n_bootstrap=n_bootstrap, seed=seed, resample="both")
        return _estimate(d, reps, 0.0, n, level)
    r = speat_difference(tuple(emb[s] for s in sets), tuple(baseline[s] for s in sets), n_bootstrap, seed, level, "both")
    return Estimate(float(r.diff), float(r.ci_low), float(r.ci_high), float(r.p), n)


def isotropy_difference(emb_a: np.ndarray, emb_b: np.ndarray, n_bootstrap: int = 2000, seed: int = 0) -> Estimate:
    """log10 isotropy of ``emb_a [N, D]`` minus that of ``emb_b [N, D']`` (the same N items), items resampled jointly."""
    from s3kit.eval.isotropy import log10_isotropy

    if len(emb_a) != len(emb_b):
        raise ValueError(f"isotropy_difference: {len(emb_a)} and {len(emb_b)} items; need the same items")
    return bootstrap(lambda idx: log10_isotropy(emb_a[idx]) - log10_isotropy(emb_b[idx]), len(emb_a), 0.0,
                     n_bootstrap, seed)


def finding(paper: str, claim: str, metric: str, est: Estimate, direction: str = "greater", null: float = 0.0,
            note: str = "") -> Finding:
    """A :class:`Finding` from an :class:`Estimate` (whose p was computed against the same ``null``)."""
    return Finding(paper, claim, metric, est.value, est.ci_low, est.ci_high, est.p, est.n, direction, null, note)


def markdown_table(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the ledger for a report section."""
    def f(v, digits=3):
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.2e}" if v != 0 and abs(v) < 1e-3 else f"{v:.{digits}f}"
        return str(v)

    header = ["paper", "claim", "metric", "effect [95 % CI]", "p", "p (Holm)", "n", "verdict"]
    out = []
    for r in rows:
        effect = "not measured" if r["effect"] is None else f"{f(r['effect'])} [{f(r['ci_low'])}, {f(r['ci_high'])}]"
        out.append([r["paper"], r["claim"], r["metric"], effect, f(r["p"]), f(r["p_adjusted"]), str(r["n"]),
                    r["verdict"]])
    return header, out


__all__ = ["ALPHA", "DIRECTIONS", "Estimate", "Finding", "KEYS", "VERDICTS", "bootstrap", "difference", "finding",
           "isotropy_difference", "item_values", "ledger", "markdown_table", "rate", "retained",
           "speat_interval", "two_sided_p", "unmeasured", "verdict"]
