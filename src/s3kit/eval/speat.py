"""SpEAT: the Speech Embedding Association Test (social-bias paper, Sec. 2.2, eqs. 1-2).

Dimension legend: ``N`` items, ``D`` features, ``L`` layers, ``P`` permutations / bootstrap draws.
``X``, ``Y`` are the two target groups (e.g. female / male voices), ``A``, ``B`` the two
attribute sets (positive / negative valence), each ``[n, D]`` (numpy arrays or torch tensors).

* association (eq. 1): ``s(w) = mean_a cos(w, a) - mean_b cos(w, b)``;
* effect size (eq. 2): ``d = (mean_x s(x) - mean_y s(y)) / std_{w in X u Y} s(w)``, sample
  standard deviation (``ddof=1``) as in SpEAT's statistics code;
* one-sided permutation p-value on re-partitions of ``X u Y`` into sizes ``|X|``, ``|Y|``
  (statistic ``sum_{x in X'} s(x)``; exact when the number of partitions fits in
  ``n_permutations``, otherwise sampled with one add-one pseudo-count, ties counted as ``>=``);
* percentile bootstrap confidence interval of ``d``. ``resample`` says which stimuli are
  redrawn, and so which uncertainty the interval covers: ``"targets"`` (other voices of the
  same groups, attributes fixed: the question the permutation p answers), ``"attributes"``
  (other valence stimuli, targets fixed), or ``"both"`` (the default, and the interval a
  verdict needs: the attribute sets are samples too, and with a handful of attribute clips
  they often dominate the width).

Everything is computed in float64 from one cosine matrix ``[|X|+|Y|, |A|+|B|]``, so the
permutation and bootstrap loops are matrix operations over chunks of draws.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np

from s3kit.eval.isotropy import as_matrix

# Paper, Sec. 2.2: "d values larger than 0.20, 0.50 and 0.80 are viewed as small, medium and
# large biases"; a negative d is a reverse bias of the same magnitude.
MAGNITUDE_THRESHOLDS = ((0.8, "large"), (0.5, "medium"), (0.2, "small"))
# SpEAT's scripts draw one million permutations per test (REFERENCE-NOTES §C).
N_PERMUTATIONS = 1_000_000
N_BOOTSTRAP = 10_000
RESAMPLE = ("targets", "attributes", "both")  # what the bootstrap redraws (module docstring)
_CHUNK = 20_000  # draws per vectorised chunk: bounds memory at CHUNK x N numbers


def _as_matrix(x, name: str) -> np.ndarray:
    """Any array-like / tensor ``[n, D]`` -> float64 numpy ``[n, D]`` with a clear error."""
    return as_matrix(x, f"SpEAT set {name}")


def _unit(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm ``[n, D]``; all-zero rows stay zero (cosine 0, as sklearn)."""
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.where(norm > 0, norm, 1.0)


def _check_dims(**sets: np.ndarray) -> None:
    dims = {k: v.shape[1] for k, v in sets.items()}
    if len(set(dims.values())) != 1:
        raise ValueError(f"SpEAT sets have different feature sizes {dims}; use embeddings from one layer/model")


def association(w, A, B) -> np.ndarray:
    """Eq. (1): ``s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b)`` for each row of ``w``.

    w ``[N, D]``, A ``[Na, D]``, B ``[Nb, D]`` -> ``[N]`` float64.
    """
    w, A, B = _as_matrix(w, "w"), _as_matrix(A, "A"), _as_matrix(B, "B")
    _check_dims(w=w, A=A, B=B)
    w = _unit(w)
    return (w @ _unit(A).T).mean(1) - (w @ _unit(B).T).mean(1)


def _d_from_s(s_x: np.ndarray, s_y: np.ndarray) -> float:
    """Eq. (2) from associations ``s_x [Nx]``, ``s_y [Ny]``; sample std (ddof=1) over both."""
    std = np.concatenate([s_x, s_y]).std(ddof=1)
    if not std > 0:
        # All associations equal: no group difference can be measured.
        return 0.0
    return float((s_x.mean() - s_y.mean()) / std)


def effect_size(X, Y, A, B) -> float:
    """Eq. (2): SpEAT effect size ``d`` of targets X ``[Nx, D]``, Y ``[Ny, D]`` vs attributes
    A ``[Na, D]``, B ``[Nb, D]``. Positive d: X is closer to A (and Y to B) than the reverse."""
    _validate_sizes(X, Y)
    return _d_from_s(association(X, A, B), association(Y, A, B))


def _validate_sizes(X, Y) -> None:
    if len(X) + len(Y) < 3:
        raise ValueError(f"SpEAT needs at least 3 target items in X u Y for a sample std, got {len(X)} + {len(Y)}")


def _permutation_p_from_s(s: np.ndarray, n_x: int, n_permutations: int, seed: int) -> tuple[float, bool, int]:
    """One-sided p of ``sum(s[:n_x])`` among re-partitions of ``s [N]`` into sizes n_x, N - n_x.

    Returns ``(p, exact, partitions_counted)``.
    """
    N = len(s)
    n_y = N - n_x
    total = s.sum()
    observed = s[:n_x].sum()
    # Float sums over different orders differ by ~1e-16 relative; equal partitions must tie.
    tol = 1e-9 * max(1.0, float(np.abs(s).sum()))
    n_partitions = math.comb(N, n_x)
    if n_partitions <= n_permutations:
        # Exact: enumerate the smaller side and get sum over X' = total - sum over Y' if needed.
        k, from_y = (n_x, False) if n_x <= n_y else (n_y, True)
        count = 0
        combos = itertools.combinations(range(N), k)
        while True:
            chunk = np.fromiter(itertools.chain.from_iterable(itertools.islice(combos, _CHUNK)), dtype=np.int64)
            if chunk.size == 0:
                break
            stats = s[chunk.reshape(-1, k)].sum(1)  # k >= 1: both sets are non-empty
            if from_y:
                stats = total - stats
            count += int((stats >= observed - tol).sum())
        # The observed partition is among those enumerated, so p >= 1 / n_partitions.
        return count / n_partitions, True, n_partitions
    # Sampled: n_permutations - 1 random partitions plus the observed one (add-one smoothing).
    rng = np.random.default_rng(seed)
    draws = n_permutations - 1
    count = 0
    done = 0
    while done < draws:
        c = min(_CHUNK, draws - done)
        keys = rng.random((c, N), dtype=np.float32)
        # The n_x smallest keys of each row choose X' uniformly among all subsets of size n_x.
        idx = np.argpartition(keys, n_x - 1, axis=1)[:, :n_x]
        count += int((s[idx].sum(1) >= observed - tol).sum())
        done += c
    return (1 + count) / n_permutations, False, n_permutations


def permutation_p(X, Y, A, B, n_permutations: int = N_PERMUTATIONS, seed: int = 0) -> float:
    """One-sided permutation p-value of ``d >= observed`` (REFERENCE-NOTES §C).

    X ``[Nx, D]``, Y ``[Ny, D]``, A ``[Na, D]``, B ``[Nb, D]``. Targets are re-partitioned into
    sizes ``Nx``, ``Ny``; the statistic ``sum_{x in X'} s(x)`` orders partitions exactly as the
    mean difference of eq. (2) does. Exact when ``C(Nx+Ny, Nx) <= n_permutations``.
    """
    _validate_sizes(X, Y)
    s = association(np.concatenate([_as_matrix(X, "X"), _as_matrix(Y, "Y")]), A, B)
    return _permutation_p_from_s(s, len(X), n_permutations, seed)[0]


def _check_resample(resample: str) -> None:
    if resample not in RESAMPLE:
        raise ValueError(f"resample={resample!r}: choose one of {', '.join(RESAMPLE)}")


def _bootstrap_d(cos_xy_a: np.ndarray, cos_xy_b: np.ndarray, n_x: int, n: int, seed: int,
                 resample: str = "both") -> np.ndarray:
    """``[n]`` bootstrap replicates of d from cosines ``[N, Na]`` and ``[N, Nb]`` of X u Y,
    redrawing targets (within X and within Y), attributes (within A and within B) or both."""
    return _bootstrap_d_paired([(cos_xy_a, cos_xy_b)], n_x, n, seed, resample)[0]


def _bootstrap_d_paired(cosines: list[tuple[np.ndarray, np.ndarray]], n_x: int, n: int, seed: int,
                        resample: str = "both") -> np.ndarray:
    """``[M, n]`` bootstrap replicates of d for ``M`` models' cosines ``(cos_a [N, Na], cos_b [N, Nb])``
    of the same stimuli, every resample applied to all models alike (a paired bootstrap)."""
    _check_resample(resample)
    resample_attributes = resample in ("attributes", "both")
    resample_targets = resample in ("targets", "both")
    rng = np.random.default_rng(seed)
    N, n_a = cosines[0][0].shape
    n_b = cosines[0][1].shape[1]
    n_y = N - n_x
    out = np.empty((len(cosines), n))
    done = 0
    while done < n:
        c = min(_CHUNK // 4, n - done)
        if resample_attributes:
            # Multinomial counts / size = the weights of a with-replacement resample: [Na, c].
            w_a = rng.multinomial(n_a, np.full(n_a, 1.0 / n_a), size=c).T / n_a
            w_b = rng.multinomial(n_b, np.full(n_b, 1.0 / n_b), size=c).T / n_b
        # Resample targets within each group; counts [c, N] weight the rows of s.
        if resample_targets:
            counts = np.concatenate([rng.multinomial(n_x, np.full(n_x, 1.0 / n_x), size=c),
                                     rng.multinomial(n_y, np.full(n_y, 1.0 / n_y), size=c)], axis=1).astype(np.float64)
        else:
            counts = np.ones((c, N))
        for m, (cos_xy_a, cos_xy_b) in enumerate(cosines):
            if resample_attributes:
                s = cos_xy_a @ w_a - cos_xy_b @ w_b  # (N, c)
            else:
                s = np.repeat((cos_xy_a.mean(1) - cos_xy_b.mean(1))[:, None], c, axis=1)
            s = s.T  # (c, N)
            mean_x = (counts[:, :n_x] * s[:, :n_x]).sum(1) / n_x
            mean_y = (counts[:, n_x:] * s[:, n_x:]).sum(1) / n_y
            mean_all = (counts * s).sum(1) / N
            var = (counts * (s - mean_all[:, None]) ** 2).sum(1) / (N - 1)  # ddof=1 over the resample
            std = np.sqrt(var)
            out[m, done:done + c] = np.where(std > 0, (mean_x - mean_y) / np.where(std > 0, std, 1.0), 0.0)
        done += c
    return out


def bootstrap_d(X, Y, A, B, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, resample: str = "both"
                ) -> tuple[float, np.ndarray]:
    """d of eq. (2) and its ``[n_bootstrap]`` bootstrap replicates.

    Each replicate redraws, with replacement within its set, the targets X, Y (``"targets"``),
    the attributes A, B (``"attributes"``) or all four (``"both"``) and recomputes eq. (2).
    Shapes as :func:`effect_size`.
    """
    _check_resample(resample)
    _validate_sizes(X, Y)
    X, Y, A, B = (_as_matrix(v, k) for v, k in ((X, "X"), (Y, "Y"), (A, "A"), (B, "B")))
    _check_dims(X=X, Y=Y, A=A, B=B)
    W = _unit(np.concatenate([X, Y]))
    cos_a, cos_b = W @ _unit(A).T, W @ _unit(B).T
    s = cos_a.mean(1) - cos_b.mean(1)
    return _d_from_s(s[: len(X)], s[len(X):]), _bootstrap_d(cos_a, cos_b, len(X), n_bootstrap, seed, resample)


def bootstrap_ci(X, Y, A, B, n_bootstrap: int = N_BOOTSTRAP, level: float = 0.95, seed: int = 0,
                 resample: str = "both") -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of d at ``level`` (replicates of :func:`bootstrap_d`)."""
    if not 0 < level < 1:
        raise ValueError(f"bootstrap level must be in (0, 1), got {level}")
    _, reps = bootstrap_d(X, Y, A, B, n_bootstrap, seed, resample)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def magnitude(d: float) -> str:
    """Paper Sec. 2.2 label of ``|d|``: negligible / small / medium / large."""
    for threshold, label in MAGNITUDE_THRESHOLDS:
        if abs(d) >= threshold:
            return label
    return "negligible"


@dataclass
class SpeatResult:
    """One SpEAT test: effect size, one-sided permutation p-value, bootstrap interval."""

    d: float
    p_value: float
    ci_low: float
    ci_high: float
    magnitude: str
    n_x: int
    n_y: int
    n_a: int
    n_b: int
    exact: bool  # p from full enumeration rather than sampled partitions
    n_permutations: int  # partitions counted (all of them when exact)
    level: float = 0.95
    resample: str = "both"  # what the interval's bootstrap redrew: targets, attributes or both

    @property
    def p(self) -> float:
        return self.p_value

    def to_dict(self) -> dict:
        return asdict(self)


def speat(X, Y, A, B, n_permutations: int = N_PERMUTATIONS, n_bootstrap: int = N_BOOTSTRAP,
          seed: int = 0, level: float = 0.95, resample: str = "both") -> SpeatResult:
    """Full SpEAT test of targets X ``[Nx, D]``, Y ``[Ny, D]`` against attributes A ``[Na, D]``,
    B ``[Nb, D]``: d (eq. 2), one-sided permutation p, percentile bootstrap CI at ``level``.

    ``resample``: which stimuli the bootstrap redraws, ``"targets"``, ``"attributes"`` or
    ``"both"`` (module docstring); comparing the three says where the uncertainty of d comes
    from. The permutation p re-partitions the targets with the attributes fixed.
    ``n_bootstrap=0`` skips the interval (NaN bounds).
    """
    _check_resample(resample)
    _validate_sizes(X, Y)
    X, Y, A, B = (_as_matrix(v, k) for v, k in ((X, "X"), (Y, "Y"), (A, "A"), (B, "B")))
    _check_dims(X=X, Y=Y, A=A, B=B)
    W = _unit(np.concatenate([X, Y]))
    cos_a, cos_b = W @ _unit(A).T, W @ _unit(B).T  # (N, Na), (N, Nb)
    s = cos_a.mean(1) - cos_b.mean(1)
    n_x = len(X)
    d = _d_from_s(s[:n_x], s[n_x:])
    p, exact, counted = _permutation_p_from_s(s, n_x, n_permutations, seed)
    if n_bootstrap > 0:
        reps = _bootstrap_d(cos_a, cos_b, n_x, n_bootstrap, seed + 1, resample)
        lo, hi = (float(q) for q in np.quantile(reps, [(1 - level) / 2, (1 + level) / 2]))
    else:
        lo = hi = float("nan")
    return SpeatResult(d=d, p_value=p, ci_low=lo, ci_high=hi, magnitude=magnitude(d), n_x=n_x, n_y=len(Y),
                       n_a=len(A), n_b=len(B), exact=exact, n_permutations=counted, level=level,
                       resample=resample)


@dataclass
class LayerwiseSpeat:
    """SpEAT on layered embeddings: the paper's headline (time mean, then layer mean) and per layer."""

    aggregate: SpeatResult
    per_layer: list[SpeatResult]

    def to_dict(self) -> dict:
        return {"aggregate": self.aggregate.to_dict(), "per_layer": [r.to_dict() for r in self.per_layer]}


def _as_layered(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        a = a[:, None, :]
    if a.ndim != 3:
        raise ValueError(f"SpEAT set {name}: expected [n, L, D] (or [n, D]) embeddings, got shape {a.shape}")
    return a


def speat_layers(X, Y, A, B, n_permutations: int = N_PERMUTATIONS, n_bootstrap: int = N_BOOTSTRAP,
                 seed: int = 0, level: float = 0.95, layer_permutations: int | None = None,
                 layer_bootstrap: int | None = None, resample: str = "both") -> LayerwiseSpeat:
    """SpEAT on time-averaged per-layer embeddings ``[n, L, D]`` for each of X, Y, A, B.

    ``aggregate`` tests the mean over layers (paper Sec. 2.2: "averaging the embeddings within
    each layer along time, followed by aggregating these averaged embeddings across all layers");
    ``per_layer[l]`` tests layer l alone, with ``layer_permutations`` / ``layer_bootstrap``
    draws (default: the same as the aggregate).
    """
    X, Y, A, B = (_as_layered(v, k) for v, k in ((X, "X"), (Y, "Y"), (A, "A"), (B, "B")))
    layers = {v.shape[1] for v in (X, Y, A, B)}
    if len(layers) != 1:
        raise ValueError(f"SpEAT sets have different layer counts {sorted(layers)}")
    n_perm_l = n_permutations if layer_permutations is None else layer_permutations
    n_boot_l = n_bootstrap if layer_bootstrap is None else layer_bootstrap
    aggregate = speat(X.mean(1), Y.mean(1), A.mean(1), B.mean(1), n_permutations, n_bootstrap, seed, level, resample)
    per_layer = [speat(X[:, l], Y[:, l], A[:, l], B[:, l], n_perm_l, n_boot_l, seed, level, resample)
                 for l in range(X.shape[1])]
    return LayerwiseSpeat(aggregate=aggregate, per_layer=per_layer)


def speat_difference(first: tuple, second: tuple, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0,
                     level: float = 0.95, resample: str = "both"):
    """d of one model minus d of another on the same stimuli, with a paired bootstrap interval and p.

    ``first`` and ``second`` are ``(X, Y, A, B)`` embeddings of the same stimuli by two models
    (rows in the same order; widths may differ). Each resample draws one set of stimulus indices
    (within X, Y, and / or A, B as ``resample`` says) and applies it to both models, so what the
    stimuli share cancels. Returns :class:`s3kit.eval.stats.PairedBootstrap` (``diff``,
    ``ci_low``, ``ci_high``, two-sided ``p``, ``n`` = target stimuli, ``rate_a`` / ``rate_b`` = the
    two d's).
    """
    from s3kit.eval.stats import _paired_result

    _check_resample(resample)
    cos = []
    for model in (first, second):
        X, Y, A, B = (_as_matrix(v, k) for v, k in zip(model, "XYAB"))
        _check_dims(X=X, Y=Y, A=A, B=B)
        W = _unit(np.concatenate([X, Y]))
        cos.append((W @ _unit(A).T, W @ _unit(B).T, len(X)))
    (ca1, cb1, n_x), (ca2, cb2, n_x2) = cos
    if ca1.shape[0] != ca2.shape[0] or n_x != n_x2 or ca1.shape[1] != ca2.shape[1] or cb1.shape[1] != cb2.shape[1]:
        raise ValueError("speat_difference: the two models must embed the same stimuli (same set sizes)")
    n_y = ca1.shape[0] - n_x
    _validate_sizes(range(n_x), range(n_y))
    d1 = _d_from_s(ca1.mean(1)[:n_x] - cb1.mean(1)[:n_x], ca1.mean(1)[n_x:] - cb1.mean(1)[n_x:])
    d2 = _d_from_s(ca2.mean(1)[:n_x] - cb2.mean(1)[:n_x], ca2.mean(1)[n_x:] - cb2.mean(1)[n_x:])
    reps = _bootstrap_d_paired([(ca1, cb1), (ca2, cb2)], n_x, n_bootstrap, seed, resample)
    return _paired_result(d1 - d2, reps[0] - reps[1], level, n_x + n_y, d1, d2)
