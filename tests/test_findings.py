"""The findings ledger: verdicts computed from interval and adjusted p, Holm over the ledger, and
the estimators (paired item bootstrap, retained fraction, SpEAT with targets and attributes resampled)."""

import math

import numpy as np
import pytest

from s3kit.eval import findings as fd
from s3kit.eval.stats import holm


@pytest.mark.parametrize("ci, p, direction, null, want", [
    ((0.02, 0.10), 0.001, "greater", 0.0, "supported"),
    ((0.02, 0.10), 0.20, "greater", 0.0, "inconclusive"),  # interval clear of 0 but not after Holm
    ((-0.10, -0.02), 0.001, "greater", 0.0, "contradicted"),
    ((-0.01, 0.10), 0.001, "greater", 0.0, "inconclusive"),
    ((-0.10, -0.02), 0.001, "less", 0.0, "supported"),
    ((0.02, 0.10), 0.001, "less", 0.0, "contradicted"),
    ((0.55, 0.90), 0.01, "greater", 0.5, "supported"),  # retained fraction above one half
    ((0.30, 0.45), 0.01, "greater", 0.5, "contradicted"),
    ((-0.04, 0.01), 0.01, "greater", -0.05, "supported"),  # "does not drop by more than 0.05"
    ((-1.9, -0.3), 0.001, "nonzero", 0.0, "supported"),
    ((-1.9, 0.3), 0.001, "nonzero", 0.0, "inconclusive"),
    ((0.3, 1.9), 0.9, "nonzero", 0.0, "inconclusive"),
    ((-0.5, 0.6), 0.8, "none", 0.0, "supported"),  # a control where nothing may be found: nothing found
    ((0.2, 0.6), 0.001, "none", 0.0, "contradicted"),
    ((0.2, 0.6), 0.3, "none", 0.0, "inconclusive"),
])
def test_verdict_rule_on_hand_made_cases(ci, p, direction, null, want):
    assert fd.verdict(ci[0], ci[1], p, direction, null) == want


def test_unmeasurable_rows_are_inconclusive_and_bad_input_is_refused():
    assert fd.verdict(None, None, None, "greater") == "inconclusive"
    assert fd.verdict(0.1, 0.2, math.nan, "greater") == "inconclusive"
    with pytest.raises(ValueError, match="direction"):
        fd.verdict(0.1, 0.2, 0.01, "bigger")
    with pytest.raises(ValueError, match="reversed"):
        fd.verdict(0.2, 0.1, 0.01, "greater")


def test_ledger_adjusts_with_holm_over_measured_rows_and_keeps_the_keys():
    rows = [fd.Finding("P", "a", "m", 0.1, 0.05, 0.15, 0.01, 100),
            fd.Finding("P", "b", "m", 0.1, 0.05, 0.15, 0.04, 100),
            fd.unmeasured("P", "c", "m", "no codebook"),
            fd.Finding("P", "d", "m", -0.1, -0.2, -0.05, 0.03, 100, "less")]
    out = fd.ledger(rows)
    want = holm([0.01, 0.04, 0.03])
    assert [r["p_adjusted"] for r in out] == [want[0], want[1], None, want[2]]
    assert want == pytest.approx([0.03, 0.06, 0.06])
    # b's interval excludes 0 but its adjusted p (0.06) does not clear 0.05
    assert [r["verdict"] for r in out] == ["supported", "inconclusive", "inconclusive", "inconclusive"]
    for r in out:
        assert set(fd.KEYS) <= set(r)
    assert out[2]["note"] == "no codebook" and out[2]["effect"] is None


def test_two_sided_p():
    assert fd.two_sided_p(np.ones(99)) == pytest.approx(2 / 100)  # all on one side: add-one floor
    assert fd.two_sided_p(np.r_[-np.ones(50), np.ones(50)]) == 1.0
    assert fd.two_sided_p(np.zeros(10)) == 1.0
    assert fd.two_sided_p(np.arange(100.0), null=89.5) == pytest.approx(2 * 11 / 101)


def _items(correct, errors=None):
    """(ids, values, weights) as item_values gives them: accuracy or (errors, ref length) items."""
    ids = [f"u{i}" for i in range(len(correct))]
    if errors is None:
        return ids, np.asarray(correct, float), np.ones(len(correct))
    return ids, np.asarray(errors, float), np.asarray(correct, float)


def test_item_values_average_seeds_per_item():
    lines = [{"seed": s, "id": f"u{i}", "correct": c} for s, row in enumerate([[1, 0, 1], [1, 1, 0]])
             for i, c in enumerate(row)]
    ids, v, w = fd.item_values(lines)
    assert ids == ["u0", "u1", "u2"] and v.tolist() == [1.0, 0.5, 0.5] and w.tolist() == [1, 1, 1]
    per = [{"seed": s, "id": "a", "errors": e, "ref_length": 10} for s, e in enumerate([2, 4])]
    _, v, w = fd.item_values(per)
    assert v.tolist() == [3.0] and w.tolist() == [10.0]
    with pytest.raises(ValueError, match="different numbers of seeds"):
        fd.item_values(lines[:-1])


def test_planted_difference_is_found_and_identical_systems_are_not():
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.8
    b = a & (rng.random(400) < 0.8)  # B loses ~20 % of A's hits: a true difference of ~0.16
    est = fd.difference(_items(a), _items(b), n_bootstrap=1000)
    assert est.value == pytest.approx(a.mean() - b.mean())
    assert est.ci_low > 0.1 and est.p < 0.01 and est.n == 400
    same = fd.difference(_items(a), _items(a), n_bootstrap=1000)
    assert same.value == 0 and same.p == 1.0
    with pytest.raises(ValueError, match="same test items"):
        fd.difference(_items(a), (["x"] * 400, *_items(a)[1:]))


def test_retained_fraction_hand_computed():
    # accuracies: floor 0.25, teacher 0.75, student 0.625 -> (0.625 - 0.25) / 0.5 = 0.75
    floor = _items([1, 0, 0, 0] * 50)
    teacher = _items([1, 1, 1, 0] * 50)
    student = _items([1, 1, 0, 0] * 25 + [1, 1, 1, 0] * 25)
    est = fd.retained(student, teacher, floor, n_bootstrap=500)
    assert est.value == pytest.approx(0.75)
    assert est.ci_low < 0.75 < est.ci_high
    # error rates: PER floor 0.9, teacher 0.5, student 0.6 -> 0.75 as well
    ref = [10] * 20
    per = lambda e: _items(ref, [e] * 20)  # noqa: E731
    assert fd.retained(per(6), per(5), per(9), n_bootstrap=50).value == pytest.approx(0.75)


def _speat_sets(rng, n, shift):
    """Embeddings where X sits towards A and Y towards B by ``shift`` (0: no association)."""
    d = 16
    axis = np.zeros(d)
    axis[0] = 1.0
    base = rng.normal(size=(4 * n, d)) * 0.5 + 3 * np.eye(d)[1]
    base[:n] += shift * axis        # X
    base[n:2 * n] -= shift * axis   # Y
    base[2 * n:3 * n] += axis       # A
    base[3 * n:] -= axis            # B
    idx = [np.arange(k * n, (k + 1) * n) for k in range(4)]
    return base, idx


def test_speat_interval_detects_a_planted_association_and_not_an_absent_one():
    rng = np.random.default_rng(1)
    emb, (x, y, a, b) = _speat_sets(rng, 30, shift=1.0)
    planted = fd.speat_interval(emb, x, y, a, b, n_bootstrap=300)
    assert planted.value > 1.0 and planted.ci_low > 0 and planted.p < 0.01
    emb0, sets0 = _speat_sets(rng, 30, shift=0.0)
    null = fd.speat_interval(emb0, *sets0, n_bootstrap=300)
    assert null.ci_low < 0 < null.ci_high
    # paired change: the same stimuli under a model without the association
    change = fd.speat_interval(emb0, x, y, a, b, n_bootstrap=300, baseline=emb)
    assert change.value < -1.0 and change.ci_high < 0
    assert fd.speat_interval(emb, x, y, a, b, n_bootstrap=50, baseline=emb).value == 0.0


def test_isotropy_difference_sign():
    rng = np.random.default_rng(2)
    iso = rng.normal(size=(200, 8))
    aniso = iso * np.r_[10.0, np.ones(7) * 0.1] + 5.0  # one dominant direction and a common offset
    est = fd.isotropy_difference(iso, aniso, n_bootstrap=100)
    assert est.value > 0 and est.ci_low > 0
