"""Isotropy of a set of representations (rewiring paper, Sec. 5 "Isotropy"; Mu & Viswanath 2018).

Dimension legend: ``N`` vectors, ``D`` features.

``IS(V) = min_m Z(m) / max_m Z(m)``, ``Z(m) = sum_v exp(m^T v)``, with m ranging over the
eigenvectors of ``V^T V``. Both signs of every eigenvector are used, so the score does not
depend on the sign an eigen-solver happens to return. ``log Z`` is a logsumexp, so the
score stays exact where it is far below float range (the paper reports 1e-300 for wav2vec 2.0);
no mean-centering, as in the original definition.
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


def log_partition(V) -> np.ndarray:
    """``log Z(m)`` for every signed eigenvector m of ``V^T V``: V ``[N, D]`` -> ``[2D]``."""
    V = as_matrix(V)
    _, M = np.linalg.eigh(V.T @ V)  # columns are orthonormal eigenvectors (D, D)
    proj = V @ np.concatenate([M, -M], axis=1)  # (N, 2D): m^T v for both signs of every m
    return _logsumexp(proj, axis=0)


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

    def to_dict(self) -> dict:
        return asdict(self)


def isotropy_summary(V) -> IsotropySummary:
    """Both isotropy views of V ``[N, D]``: log10 IS (Mu & Viswanath) and mean pairwise cosine."""
    V = as_matrix(V)
    log_is = log_isotropy(V)
    return IsotropySummary(log10_isotropy=log_is * LOG10_E, isotropy=math.exp(log_is),
                           mean_cosine=mean_cosine(V) if len(V) > 1 else float("nan"), n=V.shape[0], dim=V.shape[1])
