"""Isotropy of a set of representations (rewiring paper, Sec. 5 "Isotropy"; Mu & Viswanath 2018).

Dimension legend: ``N`` vectors, ``D`` features.

``IS(V) = min_m Z(m) / max_m Z(m)``, ``Z(m) = sum_v exp(m^T v)``, with m ranging over the D
eigenvectors of ``V^T V``: one vector per eigen-direction, as Mu & Viswanath and the widely
used implementation evaluate it. (Taking both signs of every eigenvector instead roughly
doubles log IS for data with a common offset: N(3 e1, I) gives -2.6 instead of -1.3 log10.)

An eigen-solver returns each eigenvector with an arbitrary sign, and ``Z(m) != Z(-m)``, so the
sign is fixed here: each m is oriented so that its projections sum to >= 0,
``m^T sum_v v >= 0`` (towards the data's mean; an exact tie takes the sign that makes m's
largest-magnitude entry positive). Flipping V flips every m, so ``IS(-V) == IS(V)``. How far
other signs could move the score is computed exactly by :func:`log_isotropy_sign_range`
(reported in :class:`IsotropySummary`): any choice of signs lies between its two ends, and
the lower end is never below the both-signs value. Within a repeated eigenvalue the
eigenvectors themselves are not unique; real embeddings rarely have one.

``log Z`` is a logsumexp, so the score stays exact where it is far below float range (the
paper reports 1e-300 for wav2vec 2.0); no mean-centering, as in the original definition.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

LOG10_E = math.log10(math.e)


def as_matrix(x, what: str = "isotropy") -> np.ndarray:
    """Any array-like / tensor ``[N, D]`` -> float64 numpy ``[N, D]``; errors start with ``what``."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{what}: expected a non-empty [N, D] matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what}: input contains NaN or inf")
    return a


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def eigen_directions(V) -> np.ndarray:
    """``[D, D]`` orthonormal eigenvectors of ``V^T V`` (columns), each oriented so that
    ``m^T sum_v v >= 0``; an exact tie makes m's largest-magnitude entry positive."""
    V = as_matrix(V)
    _, M = np.linalg.eigh(V.T @ V)  # (D, D), columns orthonormal, signs arbitrary
    proj_sum = V.sum(0) @ M  # (D,) sum over v of m^T v
    tol = 1e-12 * np.abs(V @ M).sum(0)  # rounding level of each sum
    top = M[np.abs(M).argmax(0), np.arange(M.shape[1])]  # (D,) largest-magnitude entry of each m
    sign = np.where(np.abs(proj_sum) > tol, np.sign(proj_sum), np.sign(top))
    return M * np.where(sign == 0, 1.0, sign)


def log_partition(V) -> np.ndarray:
    """``log Z(m)`` for every oriented eigenvector m of ``V^T V``: V ``[N, D]`` -> ``[D]``."""
    V = as_matrix(V)
    return _logsumexp(V @ eigen_directions(V), axis=0)  # (N, D) projections -> (D,)


def log_isotropy_sign_range(V) -> tuple[float, float]:
    """Lowest and highest natural-log IS over all ``2^D`` sign choices of the eigenvectors.

    With ``a_i = log Z(m_i)``, ``b_i = log Z(-m_i)``, ``lo_i = min(a_i, b_i)``, ``hi_i =
    max(a_i, b_i)``: the lowest is ``min_{i != j} lo_i - hi_j`` (both ends in different
    directions); the highest takes, for each candidate maximum t, the larger of each direction's
    values that is ``<= t`` and keeps the best ``min - t``. Exact, ``O(D^2)``.
    """
    V = as_matrix(V)
    P = V @ eigen_directions(V)  # (N, D)
    ab = np.stack([_logsumexp(P, axis=0), _logsumexp(-P, axis=0)])  # (2, D)
    lo, hi = ab.min(0), ab.max(0)
    D = len(lo)
    if D == 1:
        return 0.0, 0.0
    pair = lo[:, None] - hi[None, :]  # (D, D): lo_i - hi_j
    np.fill_diagonal(pair, np.inf)
    lowest = float(pair.min())
    t = np.unique(ab)  # candidate maxima
    t = t[t >= lo.max()]  # every direction needs a value <= t
    chosen = np.where(hi[None, :] <= t[:, None], hi[None, :], lo[None, :])  # (C, D)
    highest = float((chosen.min(1) - t).max())
    return lowest, highest


def log_isotropy(V) -> float:
    """Natural log of IS(V) (<= 0; 0 means perfectly isotropic). V ``[N, D]``."""
    log_z = log_partition(V)
    return float(log_z.min() - log_z.max())


def log10_isotropy(V) -> float:
    """``log10 IS(V)`` (<= 0): the paper's "order of 1e-300" is -300 here. V ``[N, D]``."""
    return log_isotropy(V) * LOG10_E


def isotropy(V) -> float:
    """IS(V) in [0, 1]. Underflows to 0.0 below ~1e-308: report :func:`log10_isotropy` then."""
    return math.exp(log_isotropy(V))


def mean_cosine(V) -> float:
    """Mean pairwise cosine over distinct rows of V ``[N, D]`` (0 isotropic-ish, 1 one direction)."""
    V = as_matrix(V)
    N = len(V)
    if N < 2:
        raise ValueError("mean_cosine needs at least 2 vectors")
    norm = np.linalg.norm(V, axis=1, keepdims=True)
    U = V / np.where(norm > 0, norm, 1.0)
    # sum_{i != j} u_i.u_j = |sum_i u_i|^2 - sum_i |u_i|^2
    total = float(np.square(U.sum(0)).sum() - np.square(U).sum())
    return total / (N * (N - 1))


@dataclass
class IsotropySummary:
    log10_isotropy: float
    isotropy: float
    mean_cosine: float
    n: int
    dim: int
    # log10 IS over every other choice of eigenvector signs: how far a solver's signs could move it
    log10_isotropy_sign_range: tuple[float, float]

    def to_dict(self) -> dict:
        return asdict(self)


def isotropy_summary(V) -> IsotropySummary:
    """Both isotropy views of V ``[N, D]``: log10 IS (Mu & Viswanath) and mean pairwise cosine."""
    V = as_matrix(V)
    log_is = log_isotropy(V)
    lowest, highest = log_isotropy_sign_range(V)
    return IsotropySummary(log10_isotropy=log_is * LOG10_E, isotropy=math.exp(log_is),
                           mean_cosine=mean_cosine(V) if len(V) > 1 else float("nan"), n=V.shape[0], dim=V.shape[1],
                           log10_isotropy_sign_range=(lowest * LOG10_E, highest * LOG10_E))
