import math

import numpy as np
import pytest
import torch

import itertools

from s3kit.eval.isotropy import (
    eigen_directions,
    isotropy,
    isotropy_summary,
    log10_isotropy,
    log_isotropy_sign_range,
    log_partition,
    mean_cosine,
)


def _reference_log10_is(V: np.ndarray) -> float:
    """Independent Mu & Viswanath: general ``eig`` (not ``eigh``), one vector per direction,
    oriented towards the data sum, plain ``exp`` sums (inputs kept small enough not to overflow)."""
    _, vecs = np.linalg.eig(V.T @ V)
    zs = []
    for i in range(vecs.shape[1]):
        m = np.real(vecs[:, i]) / np.linalg.norm(np.real(vecs[:, i]))
        if sum(float(v @ m) for v in V) < 0:
            m = -m
        zs.append(math.fsum(math.exp(float(v @ m)) for v in V))
    return math.log10(min(zs) / max(zs))


def test_plus_minus_basis_is_exactly_isotropic():
    V = np.concatenate([np.eye(5), -np.eye(5)])
    # Every eigenvector e_i (either sign): Z = e + 1/e + 8 ones.
    np.testing.assert_allclose(np.exp(log_partition(V)), math.e + 1 / math.e + 8, rtol=1e-12)
    assert isotropy(V) == pytest.approx(1.0, abs=1e-12)
    assert log10_isotropy(V) == pytest.approx(0.0, abs=1e-12)


def test_hand_value_one_direction():
    # V = {(1,0), (2,0)}: V^T V = diag(5, 0); one eigenvector per direction, e1 oriented to the
    # data (projections 1 + 2 > 0), e2 (projections 0, 0) by its largest entry.
    # Z(e1) = e + e^2, Z(e2) = 2  => IS = 2 / (e + e^2). (Both signs would give Z(-e1)/Z(e1) = e^-3.)
    V = np.array([[1.0, 0.0], [2.0, 0.0]])
    assert log10_isotropy(V) == pytest.approx(math.log10(2 / (math.e + math.e**2)), abs=1e-12)
    assert sorted(np.exp(log_partition(V))) == pytest.approx([2.0, math.e + math.e**2], rel=1e-12)


def test_hand_value_two_directions_diagonal():
    # V = {(1,0), (0,2)}: eigenvectors e1, e2, both oriented +. Z(e1) = e + 1, Z(e2) = 1 + e^2.
    V = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert log10_isotropy(V) == pytest.approx(math.log10((math.e + 1) / (1 + math.e**2)), abs=1e-12)
    # Other signs: Z(-e1) = e^-1 + 1, Z(-e2) = 1 + e^-2; the four choices give these extremes.
    choices = [math.log(min(a, b) / max(a, b)) for a in (math.e + 1, 1 / math.e + 1) for b in (1 + math.e**2, 1 + math.e**-2)]
    assert log_isotropy_sign_range(V) == pytest.approx((min(choices), max(choices)), abs=1e-12)


@pytest.mark.parametrize("offset, expected", [(3.0, -1.32), (10.0, -4.37)])
def test_offset_gaussian_on_the_papers_scale(offset, expected):
    # N(offset e1, I): Z(e1) ~ N e^(offset + 1/2), the other directions ~ N e^(1/2), so
    # log IS ~ -offset nats = -offset / ln 10 (-1.30, -4.34). The both-signs form gave about
    # twice that (-2.58, -8.84): the measurement.
    rng = np.random.default_rng(0)
    V = rng.normal(size=(1000, 8))
    V[:, 0] += offset
    lg = log10_isotropy(V)
    assert lg == pytest.approx(expected, abs=0.05)
    assert lg == pytest.approx(-offset * math.log10(math.e), abs=0.1)
    lowest, highest = (x * math.log10(math.e) for x in log_isotropy_sign_range(V))
    assert lowest <= lg <= highest and highest - lowest < 0.1  # a solver's signs move it little here
    if offset == 3.0:  # small enough for plain exp sums
        assert lg == pytest.approx(_reference_log10_is(V), abs=1e-9)


def test_matches_independent_computation_and_brute_force_sign_range():
    rng = np.random.default_rng(3)
    for trial in range(5):
        V = rng.normal(size=(40, 5)) * rng.uniform(0.2, 2.0, size=5) + rng.normal(size=5)
        assert log10_isotropy(V) == pytest.approx(_reference_log10_is(V), abs=1e-9)
        # every one of the 2^5 sign choices, evaluated directly
        M = eigen_directions(V)
        values = []
        for signs in itertools.product((1.0, -1.0), repeat=5):
            z = [math.fsum(math.exp(float(v @ (s * M[:, i]))) for v in V) for i, s in enumerate(signs)]
            values.append(math.log(min(z) / max(z)))
        assert log_isotropy_sign_range(V) == pytest.approx((min(values), max(values)), abs=1e-9)
        assert values[0] == pytest.approx(math.log(10 ** log10_isotropy(V)), abs=1e-9)  # all + = oriented


def test_gaussian_cloud_near_one_and_line_tiny():
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(5000, 8))
    assert log10_isotropy(cloud) > -0.3
    line = np.outer(rng.uniform(1, 2, size=200), rng.normal(size=8)) + 0.01 * rng.normal(size=(200, 8))
    assert log10_isotropy(line) < -3
    assert mean_cosine(line) > 0.99 and abs(mean_cosine(cloud)) < 0.02


def test_large_norms_no_overflow_or_underflow():
    rng = np.random.default_rng(1)
    direction = rng.normal(size=16)
    V = 1e3 * (direction + 0.01 * rng.normal(size=(100, 16)))  # |v| ~ 4e3: exp(m^T v) overflows
    lg = log10_isotropy(V)
    assert math.isfinite(lg) and lg < -300  # far below float range, still a finite log
    assert isotropy(V) == 0.0  # the plain score underflows, which is why the log is reported
    s = isotropy_summary(torch.tensor(V))
    assert s.log10_isotropy == pytest.approx(lg) and s.n == 100 and s.dim == 16


def test_sign_invariance_and_errors():
    rng = np.random.default_rng(2)
    V = rng.normal(size=(50, 4)) + 1.0
    # Flipping all vectors flips every oriented eigenvector too, so the score is unchanged.
    assert log10_isotropy(-V) == pytest.approx(log10_isotropy(V), abs=1e-9)
    # ... and so is a solver's sign: the orientation is fixed by the data, not by eigh.
    M = eigen_directions(V)
    assert np.all(V.sum(0) @ M >= 0)
    with pytest.raises(ValueError, match="NaN"):
        log10_isotropy(np.array([[np.nan, 1.0]]))
