"""Low-resource table (rewiring Table 2) with intervals and paired tests: known answers on planted runs."""

import math

import pytest

from s3kit.eval import lowres
from s3kit.methods import rewire

Z = 1.959963984540054  # z_{0.975}
T1 = 12.706204736174707  # t_{0.975} with 1 degree of freedom


def _wilson(k, n):
    p, z2 = k / n, Z * Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return centre - half, centre + half


def _items(correct):
    return [{"id": f"c{i}", "reference": "a", "hypothesis": "a" if c else "b", "correct": bool(c)}
            for i, c in enumerate(correct)]


def _row(fraction, model, seed, items, **extra):
    acc = sum(i["correct"] for i in items) / len(items)
    return {"fraction": fraction, "model": model, "seed": seed, "task": "ks", "metric": "accuracy",
            "higher_is_better": True, "test": acc, "dev": acc, "updates_to_best": 100 * (seed + 1), "updates": 300,
            "num_train": 10, "predictions": items, **extra}


def _planted():
    """20 test items. At 10 %: the base gets 5 right, the rewired model those 5 and 10 more (all
    discordant pairs favour it). At 100 %: both models answer identically."""
    base_low = _items([1] * 5 + [0] * 15)
    rew_low = _items([1] * 15 + [0] * 5)
    same = _items([1, 0] * 10)
    return [_row(0.1, "base", 0, base_low), _row(0.1, "rewired", 0, rew_low),
            _row(1.0, "base", 0, same), _row(1.0, "rewired", 0, list(same))]


def test_one_seed_scores_carry_the_wilson_interval_of_their_items():
    s = {(e["fraction"], e["model"]): e for e in lowres.summarise_low_resource(_planted())}
    e = s[(0.1, "rewired")]
    lo, hi = _wilson(15, 20)  # hand formula: [0.5313, 0.8881]
    assert e["test"] == 0.75 and e["n"] == 20 and e["n_seeds"] == 1 and e["interval"] == "items"
    assert e["ci_low"] == pytest.approx(lo, abs=1e-9) and e["ci_high"] == pytest.approx(hi, abs=1e-9)
    assert (round(lo, 4), round(hi, 4)) == (0.5313, 0.8881)
    assert lowres.score_cell(e) == "75.00 [53.13, 88.81], n=20"
    assert e["test_std"] is None and e["updates_to_best_ci_low"] is None


def test_planted_difference_found_and_identical_runs_not_significant():
    comps = {c["fraction"]: c for c in lowres.compare_low_resource(_planted())}
    hit, same = comps[0.1], comps[1.0]
    assert hit["model"] == "rewired" and hit["reference"] == "base"  # the first model is the reference
    assert hit["diff"] == pytest.approx(0.5) and hit["test"] == "exact McNemar"
    assert hit["p"] == pytest.approx(2 * 0.5 ** 10)  # 10 discordant pairs, all one way
    assert hit["p_holm"] == pytest.approx(2 * 2 * 0.5 ** 10) and hit["significant"]  # Holm over 2 fractions
    assert hit["ci_low"] > 0
    assert same["diff"] == 0 and same["p"] == 1.0 and same["p_holm"] == 1.0 and not same["significant"]
    md = lowres.table2(_planted())
    assert "| 10% | KS | rewired − base | +50.00 [" in md
    assert "| 0.004 |" in md  # Holm p of the planted difference
    assert "| 100% | KS | rewired − base | +0.00 [+0.00, +0.00], n=20 | 1.000 (exact McNemar) | n.s. (1.000) |" in md


def test_several_seeds_t_interval_and_pooled_paired_test():
    # two seeds: base 4/10 and 6/10 right, rewired 9/10 both times, on the same items
    base = [_items([1] * 4 + [0] * 6), _items([0] * 4 + [1] * 6)]
    rew = [_items([1] * 9 + [0]), _items([0] + [1] * 9)]
    rows = [_row(0.1, "base", s, base[s]) for s in (0, 1)] + [_row(0.1, "rewired", s, rew[s]) for s in (0, 1)]
    s = {e["model"]: e for e in lowres.summarise_low_resource(rows)}
    b = s["base"]
    sd = math.sqrt(((0.4 - 0.5) ** 2 + (0.6 - 0.5) ** 2) / 1)
    assert b["test"] == pytest.approx(0.5) and b["test_std"] == pytest.approx(sd) and b["interval"] == "seeds"
    # the t interval 0.5 ± T1 * sd / sqrt(2) = [-0.77, 1.77], clipped to an accuracy's range [0, 1]
    assert 0.5 - T1 * sd / math.sqrt(2) < 0 and b["ci_low"] == 0.0
    assert 0.5 + T1 * sd / math.sqrt(2) > 1 and b["ci_high"] == 1.0
    assert lowres.score_cell(b) == "50.00 [0.00, 100.00], 2 seeds"
    assert [p["seed"] for p in b["per_seed"]] == [0, 1] and b["per_seed"][1]["n"] == 10
    assert b["per_seed"][0]["ci_low"] == pytest.approx(_wilson(4, 10)[0])
    assert b["updates_to_best"] == 150 and b["updates_to_best_ci_low"] == 0.0  # 150 - T1 * 50 < 0, clipped
    assert b["updates_to_best_ci_high"] == pytest.approx(150 + T1 * 50)
    (c,) = lowres.compare_low_resource(rows)
    assert c["diff"] == pytest.approx(0.9 - 0.5) and c["seeds"] == [0, 1] and "2 seeds pooled" in c["test"]
    assert c["ci_low"] > 0 and c["p"] < 0.05 and c["significant"]
    assert [round(p["diff"], 6) for p in c["per_seed"]] == [0.5, 0.3]
    # the same runs for both models: no difference at all
    twin = [_row(0.1, "base", s, base[s]) for s in (0, 1)] + [_row(0.1, "copy", s, base[s]) for s in (0, 1)]
    (c,) = lowres.compare_low_resource(twin)
    assert c["diff"] == 0 and c["p"] == 1.0 and not c["significant"]


def test_predictions_given_separately_and_row_intervals_preferred():
    rows = _planted()
    flat = lowres.flat_predictions(rows)
    bare = lowres.strip_predictions(rows)
    assert all("predictions" not in r for r in bare) and len(flat) == 80
    assert lowres.table2(bare, flat) == lowres.table2(rows)
    # a row that carries its own interval (ProbeResult's) keeps it
    rows[0]["n"], rows[0]["ci_low"], rows[0]["ci_high"] = 20, 0.1, 0.2
    e = lowres.summarise_low_resource(rows)[0]
    assert (e["ci_low"], e["ci_high"]) == (0.1, 0.2)
    # no per-item results at all: the score stays, marked without an interval, and nothing is compared
    e = lowres.summarise_low_resource(bare[:1])[0]
    assert e["ci_low"] is None and lowres.score_cell(e) == "25.00 [n.a.], 1 seed"
    assert lowres.compare_low_resource(bare) == []
    with pytest.raises(ValueError, match="fraction, model and seed"):
        lowres.items_by_run(bare, [{"id": "c0", "correct": True}])


def test_section_tables_carry_intervals_and_tests():
    tabs = lowres.section_tables(_planted())
    assert [len(t["rows"]) for t in tabs] == [4, 2]
    assert tabs[0]["rows"][1][4] == "75.00 [53.13, 88.81], n=20"
    assert tabs[1]["rows"][1][-1].startswith("n.s.")


def test_rewire_reexports_the_eval_module():
    assert rewire.table2 is lowres.table2 and rewire.summarise_low_resource is lowres.summarise_low_resource
    assert rewire.low_resource is lowres.low_resource and rewire.FRACTIONS == (0.01, 0.05, 0.1)


def test_error_rate_tasks_pool_edits_over_seeds():
    def per(errors):
        return [{"id": f"u{i}", "errors": e, "ref_length": 4} for i, e in enumerate(errors)]

    pooled = lowres.pool_seeds([per([1, 0, 2]), per([3, 0, 0])])
    assert pooled == [{"id": "u0", "errors": 4, "ref_length": 8}, {"id": "u1", "errors": 0, "ref_length": 8},
                      {"id": "u2", "errors": 2, "ref_length": 8}]
    r = lowres.paired_seeds([per([1, 0, 2]), per([3, 0, 0])], [per([0, 0, 0]), per([0, 0, 0])])
    assert r.diff == pytest.approx(6 / 24)  # PER 0.25 vs 0: A minus B in the metric's units
    with pytest.raises(ValueError, match="different test items"):
        lowres.pool_seeds([per([1]), [{"id": "x", "errors": 0, "ref_length": 4}]])
