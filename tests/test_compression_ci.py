"""Compression study evidence: probe scores with n and interval, SpEAT d with the targets-and-attributes
interval, each model against the base with a paired test (known answers on planted results)."""

import pytest

from s3kit.eval import compression as cs
from s3kit.eval.probe import write_predictions
from tests.test_lowres import _items, _wilson



def _row(method, step, correct, out, removed=0, speat=None):
    rel = f"predictions/{method}-{step}.jsonl.gz"
    write_predictions(_items(correct), out / rel)
    k, n = sum(correct), len(correct)
    lo, hi = _wilson(k, n)
    return {"method": method, "step": step, "params": 1000 - removed, "params_removed": removed, "heads": 4,
            "ffn": 64, "latency_ms": 1.0, "probe": k / n, "probe_metric": "accuracy", "probe_higher_is_better": True,
            "probe_n": n, "probe_ci_low": lo, "probe_ci_high": hi, "probe_predictions": rel, "speat": speat or {}}


def _planted(tmp_path):
    """Base 15 of 20 right; head-1 answers identically; head-2 loses the 10 items (all discordant
    pairs favour the base)."""
    base = [1] * 15 + [0] * 5
    speat = {"gender": {"d": 0.5, "p": 0.01, "p_holm": 0.02, "ci_low": 0.2, "ci_high": 0.9, "n_x": 8, "n_y": 8,
                        "n_a": 4, "n_b": 4, "resample": "both"}}
    return {"model": "m", "loss": "distill", "notes": [], "config": {"seed": 0},
            "base": _row("base", 0, base, tmp_path, speat=speat),
            "rows": [_row("head", 1, list(base), tmp_path, 100), _row("head", 2, [1] * 5 + [0] * 15, tmp_path, 200)]}


def test_paired_probe_comparison_finds_the_planted_loss_and_not_the_identical_model(tmp_path):
    rep = _planted(tmp_path)
    comps = {c["model"]: c for c in cs.probe_comparisons(rep, tmp_path)}
    same, worse = comps["head-1"], comps["head-2"]
    assert same["diff"] == 0 and same["p"] == 1.0 and same["p_holm"] == 1.0
    assert worse["diff"] == pytest.approx(-0.5) and worse["n"] == 20
    assert worse["p"] == pytest.approx(2 * 0.5 ** 10)  # exact McNemar: 10 discordant pairs, all for the base
    assert worse["p_holm"] == pytest.approx(2 * 2 * 0.5 ** 10)  # Holm over the 2 compressed models
    assert worse["ci_high"] < 0


def test_table_and_csv_show_intervals(tmp_path):
    rep = _planted(tmp_path)
    rep["probe_vs_base"] = cs.probe_comparisons(rep, tmp_path)
    md = cs.table(rep)
    lo, hi = _wilson(15, 20)  # [0.5313, 0.8881]
    assert f"75.0 [{100 * lo:.1f}, {100 * hi:.1f}]" == "75.0 [53.1, 88.8]"
    assert "| head | 0.00 → 0.00 / 0.00 | 1 → 1 / 1 | 75.0 [53.1, 88.8] | 75.0 [53.1, 88.8] / 25.0 [11.2, 46.9] |" in md
    assert "n=20 test items" in md and "bootstrap interval over targets and attributes" in md
    assert "| head-1 | 100 | 75.0 [53.1, 88.8] | +0.0 [+0.0, +0.0] | 1.000 | n.s. (1.000) |" in md
    assert "| head-2 | 200 | 25.0 [11.2, 46.9] | -50.0 [" in md and "| 0.004 |" in md
    assert "0.50 [0.20, 0.90] (0.020)" in md
    head, base_line = cs.to_csv(rep).splitlines()[:2]
    cols = dict(zip(head.split(","), base_line.split(",")))
    assert cols["probe_n"] == "20" and float(cols["probe_ci_low"]) == pytest.approx(lo)
    assert (cols["d_gender"], cols["d_ci_low_gender"], cols["d_ci_high_gender"], cols["p_holm_gender"]) == \
        ("0.5", "0.2", "0.9", "0.02")


def test_error_bars_are_the_interval_around_d():
    xs, ys, (below, above) = cs._with_errors([(1.0, {"d": 0.5, "ci_low": 0.2, "ci_high": 0.9}),
                                              (2.0, {"d": 0.1, "ci_low": None, "ci_high": None}),
                                              (3.0, {"d": 0.1, "ci_low": 0.2, "ci_high": 0.4})])
    assert xs == [1.0, 2.0, 3.0] and ys == [0.5, 0.1, 0.1]
    assert below == pytest.approx([0.3, 0.0, 0.0]) and above == pytest.approx([0.4, 0.0, 0.3])


def test_study_rows_carry_probe_interval_and_speat_interval_over_targets_and_attributes(tmp_path, monkeypatch):
    from s3kit.data.manifest import save_cuts
    from s3kit.eval import speat as speat_mod
    from s3kit.eval.probe import read_predictions, score_interval
    from s3kit.testing import tiny_hf_dir, tone_cuts

    calls = []
    real = speat_mod.speat

    def spy(*a, **k):
        calls.append(k)
        return real(*a, **k)

    monkeypatch.setattr(speat_mod, "speat", spy)
    stimuli = tone_cuts(tmp_path / "audio", n=8, classes=4, key="group", seconds=(0.3, 0.5))
    names = {"class0": "pleasant", "class1": "unpleasant", "class2": "female", "class3": "male"}
    for c in stimuli:
        c.supervisions[0].custom["group"] = names[c.supervisions[0].custom["group"]]
    data = {}
    for split, n, seed in (("train", 12, 0), ("dev", 6, 1), ("test", 10, 2)):
        data[split] = save_cuts(tone_cuts(tmp_path / split, n=n, classes=2, seconds=(0.3, 0.5), seed=seed),
                                tmp_path / f"kw_{split}.jsonl.gz")
    cfg = cs.StudyConfig(methods=("head",), steps_per_prune=1, max_prunes=1, latency_seconds=0.2, latency_repeats=1,
                         n_permutations=50, n_bootstrap=200, probe_updates=5, progress=False, device="cpu")
    model = tiny_hf_dir(tmp_path / "m", heads=4, ffn=64)
    rep = cs.study(model, stimuli, tmp_path / "out", cfg, stimuli=stimuli, probe_task="ks", probe_data=data)
    assert calls and all(k["resample"] == "both" and k["n_bootstrap"] == 200 for k in calls)
    for r in (rep["base"], *rep["rows"]):
        items = read_predictions(tmp_path / "out" / r["probe_predictions"])
        iv = score_interval(items)
        assert r["probe_n"] == 10 == len(items) and r["probe"] == pytest.approx(iv.value)
        assert (r["probe_ci_low"], r["probe_ci_high"]) == pytest.approx((iv.ci_low, iv.ci_high))
        g = r["speat"]["gender"]
        assert g["resample"] == "both" and g["ci_low"] <= g["ci_high"] and 0 <= g["p"] <= g["p_holm"] <= 1
    (c,) = rep["probe_vs_base"]
    assert c["model"] == "head-1" and c["diff"] == pytest.approx(rep["rows"][0]["probe"] - rep["base"]["probe"])
    assert "probe − base" in (tmp_path / "out" / "table.md").read_text()
