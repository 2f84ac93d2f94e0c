import math

import numpy as np
import pytest
import torch

from s3kit.eval.isotropy import isotropy, isotropy_summary, log10_isotropy, log_partition, mean_cosine


def test_plus_minus_basis_is_exactly_isotropic():
    V = np.concatenate([np.eye(5), -np.eye(5)])
    # Every signed eigenvector e_i: Z = e + 1/e + 8 ones.
    np.testing.assert_allclose(np.exp(log_partition(V)), math.e + 1 / math.e + 8, rtol=1e-12)
    assert isotropy(V) == pytest.approx(1.0, abs=1e-12)
    assert log10_isotropy(V) == pytest.approx(0.0, abs=1e-12)


def test_hand_value_one_direction():
    # V = {(1,0), (2,0)}: V^T V = diag(5, 0); eigenvectors +-e1, +-e2.
    # Z(e1) = e + e^2, Z(-e1) = e^-1 + e^-2, Z(+-e2) = 2  => IS = Z(-e1) / Z(e1) = e^-3.
    V = np.array([[1.0, 0.0], [2.0, 0.0]])
    assert log10_isotropy(V) == pytest.approx(-3 * math.log10(math.e), abs=1e-12)


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
    # Flipping all vectors maps Z(m) to Z(-m): the signed set is the same, so the score is too.
    assert log10_isotropy(-V) == pytest.approx(log10_isotropy(V), abs=1e-9)
    with pytest.raises(ValueError, match="NaN"):
        log10_isotropy(np.array([[np.nan, 1.0]]))
