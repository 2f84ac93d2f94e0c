import json
import re

import pytest

from s3kit.cli import main
from s3kit.report import build_report


def _card(d, name, params, ks, per, dg):
    (d / "models" / name).mkdir(parents=True)
    card = {
        "name": name, "description": f"{name} model",
        "efficiency": {"params": params, "macs_per_second": 1e8, "latency_ms": 10.0, "rtf": 0.01},
        "probe": {"ks": {"metric": "accuracy", "score": ks, "updates_to_best": 100, "layer_weights": [0.2, 0.3, 0.5]},
                  "pr": {"metric": "per", "score": per, "updates_to_best": 50}},
        "bias": {"gender": {"d": dg, "p": 0.01, "ci_low": dg - 0.1, "ci_high": dg + 0.1, "magnitude": "large",
                            "per_layer": [dg, dg / 2, 0.1]}},
        "isotropy": 0.25,
    }
    (d / "models" / name / "card.json").write_text(json.dumps(card))


def test_report_has_a_row_per_model_and_every_image_exists(tmp_path):
    _card(tmp_path, "teacher", 2_000_000, 0.91, 0.31, 0.9)
    _card(tmp_path, "student", 500_000, 0.85, 0.42, 0.4)
    page = build_report(tmp_path)
    text = page.read_text()
    # one row per model in each of the three tables
    assert text.count("<td>teacher</td>") == 3 and text.count("<td>student</td>") == 3
    assert "<td>0.910</td>" in text and "<td>0.420</td>" in text
    # SpEAT: d with its interval, p and the Holm p over the two tests shown (0.01 x 2)
    assert "<td>0.90 [0.80, 1.00] (p=0.010, Holm p=0.020)</td>" in text
    images = re.findall(r"src='([^']+)'", text)
    assert {"plots/score_vs_params.png", "plots/layer_weights.png", "plots/speat_d.png"} <= set(images)
    for img in images:
        data = (page.parent / img).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    md = (page.parent / "index.md").read_text()
    assert "| teacher | 2.00 |" in md


def test_report_cli_and_missing_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no model cards" in capsys.readouterr().err
    _card(tmp_path, "m", 10, 0.5, 0.5, 0.0)
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report" / "index.html").exists()


def test_report_renders_extra_sections_with_their_plots(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _card(tmp_path, "teacher", 2_000_000, 0.91, 0.31, 0.9)
    fig = plt.figure()
    plt.plot([0, 1], [1, 0])
    (tmp_path / "rewiring").mkdir()
    fig.savefig(tmp_path / "rewiring" / "tsne_rewired.png")
    plt.close(fig)
    (tmp_path / "sections").mkdir()
    (tmp_path / "sections" / "rewiring.json").write_text(json.dumps({
        "title": "Rewiring", "text": "teacher vs rewired",
        "tables": [{"title": "Low-resource KS", "header": ["fraction", "model", "acc"],
                    "rows": [["10%", "teacher", "0.412"], ["10%", "rewired", "0.523"]]}],
        "plots": [{"caption": "t-SNE rewired", "file": "rewiring/tsne_rewired.png"},  # relative to the run
                  {"caption": "gone", "file": str(tmp_path / "missing.png")}],
    }))
    page = build_report(tmp_path)
    text = page.read_text()
    assert "<h2>Rewiring</h2>" in text and "<td>0.523</td>" in text
    images = re.findall(r"src='([^']+)'", text)
    sec = [i for i in images if "tsne_rewired" in i]
    assert len(sec) == 1 and (page.parent / sec[0]).read_bytes()[:4] == b"\x89PNG"
    assert "gone" not in text  # a plot whose file is missing is left out, not a broken image
    md = (page.parent / "index.md").read_text()
    assert "| 10% | rewired | 0.523 |" in md
    (tmp_path / "sections" / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        build_report(tmp_path)
    (tmp_path / "sections" / "bad.json").write_text(json.dumps({"title": "x", "tables": [{"title": "t"}]}))
    with pytest.raises(ValueError, match=r"bad.json.*lacks \['header', 'rows'\]"):
        build_report(tmp_path)


def _items(n_right: int, n: int = 40, offset: int = 0) -> list[dict]:
    return [{"id": f"u{k}", "reference": "yes", "hypothesis": "yes" if (k + offset) % n < n_right else "no",
             "correct": (k + offset) % n < n_right} for k in range(n)]


def test_report_compares_each_model_with_the_teacher_from_per_item_predictions(tmp_path):
    from s3kit.eval.probe import write_predictions
    from s3kit.eval.stats import detectable_difference, holm, mcnemar_exact, wilson_ci

    items = {"teacher": _items(36), "copy": _items(36), "weak": _items(10), "shifted": _items(36, offset=3)}
    for name, its in items.items():
        k = sum(i["correct"] for i in its)
        lo, hi = wilson_ci(k, len(its))
        d = tmp_path / "models" / name
        d.mkdir(parents=True)
        (d / "card.json").write_text(json.dumps({"name": name, "probe": {"ks": {
            "metric": "accuracy", "score": k / len(its), "n": len(its), "ci_low": lo, "ci_high": hi}}}))
        write_predictions(its, d / "predictions" / "ks.jsonl.gz")
    (tmp_path / "models" / "other").mkdir()  # a model scored on other items: named, not compared
    (tmp_path / "models" / "other" / "card.json").write_text(json.dumps({"name": "other", "probe": {"ks": {
        "metric": "accuracy", "score": 0.5}}}))
    write_predictions([{**i, "id": "x" + i["id"]} for i in _items(20)], tmp_path / "models" / "other" / "predictions" / "ks.jsonl.gz")
    # several probe seeds in one file: the lowest seed's rows are compared (seed 1 here is all wrong)
    write_predictions([{**i, "seed": 1, "correct": False} for i in items["copy"]] + [{**i, "seed": 0} for i in items["copy"]],
                      tmp_path / "models" / "copy" / "predictions" / "ks.jsonl.gz")
    md = (build_report(tmp_path).parent / "index.md").read_text()
    assert "| teacher | 0.900 [0.769, 0.960], n=40 |" in md
    p = {n: mcnemar_exact([i["correct"] for i in items[n]], [i["correct"] for i in items["teacher"]])
         for n in ("copy", "shifted", "weak")}  # cards in name order: copy, other, shifted, teacher, weak
    q = dict(zip(p, holm(list(p.values()))))
    assert q["weak"] < 0.05 <= q["shifted"] and p["copy"] == 1.0
    assert "## Probing: each model against teacher" in md
    assert f"| weak | -0.650 [" in md and f"Holm p={q['weak']:.1e} |" in md
    assert "| copy | +0.000 [+0.000, +0.000], Holm p=1.000 n.s. |" in md
    assert f"| shifted | +0.000 [" in md and f"Holm p={q['shifted']:.3f} n.s. |" in md
    assert "| other | – |" in md and "other KS: not compared" in md and "test item 0 differs" in md
    # the smallest detectable difference: delta = (z_0.975 + z_0.8) sqrt(psi / n) with psi the discordant share
    # of the teacher (0.9) and a model at 0.9 - delta with independent errors
    from scipy.stats import norm

    from s3kit.report.build import detectable_accuracy_difference

    delta = detectable_accuracy_difference(40, 0.9)
    q = 0.9 - delta
    assert delta == pytest.approx((norm.ppf(0.975) + norm.ppf(0.8)) * ((0.9 * (1 - q) + q * 0.1) / 40) ** 0.5, abs=1e-6)
    assert delta > detectable_difference(40, p=0.9)  # the alternative lies nearer 0.5: more discordance
    assert detectable_accuracy_difference(40, 1.0) == pytest.approx((norm.ppf(0.975) + norm.ppf(0.8)) ** 2 / 40)
    assert f"KS (n=40): {delta:.3f}" in md


def test_demo_probe_stage_cards_carry_intervals_and_predictions_for_the_report(tmp_path):
    """stage_probe on two classical upstreams over tone clips: each card's KS score has n and its
    Wilson interval, the per-item predictions lie next to the card, and the report compares the
    student with the teacher from them."""
    from s3kit.data.manifest import save_cuts
    from s3kit.demo import DemoConfig, stage_probe
    from s3kit.eval.probe import read_predictions
    from s3kit.eval.stats import wilson_ci
    from s3kit.testing import tone_cuts

    data = {}
    for split, n, seed in (("train", 24, 0), ("dev", 8, 1), ("test", 16, 2)):
        path = tmp_path / f"kw_{split}.jsonl.gz"
        save_cuts(tone_cuts(tmp_path / split, n=n, classes=2, seconds=(0.4, 0.6), seed=seed), path)
        data[f"keywords_{split}"] = str(path)
    cfg = DemoConfig(out=str(tmp_path), probe_updates=30, device="cpu", tasks=["ks"])
    models = {n: {"upstream": u, "description": n, "source": u} for n, u in (("teacher", "mfcc"), ("student", "fbank"))}
    stage_probe(tmp_path, cfg, data, models)
    for name in models:
        card = json.loads((tmp_path / "models" / name / "card.json").read_text())["probe"]["ks"]
        items = read_predictions(tmp_path / "models" / name / "predictions" / "ks.jsonl.gz")
        seeds = sorted({i["seed"] for i in items})
        assert len(seeds) == cfg.probe_seeds and len(items) == 16 * len(seeds)
        k = {s: sum(i["correct"] for i in items if i["seed"] == s) for s in seeds}
        # the card: the mean over seeds, n test items, an item-bootstrap interval around it;
        # each seed's own score with its Wilson interval
        assert card["n"] == 16 and card["score"] == pytest.approx(sum(k.values()) / (16 * len(seeds)))
        assert card["ci_low"] <= card["score"] <= card["ci_high"]
        for entry in card["per_seed"]:
            assert entry["score"] == pytest.approx(k[entry["seed"]] / 16)
            assert (entry["ci_low"], entry["ci_high"]) == pytest.approx(wilson_ci(k[entry["seed"]], 16))
    md = (build_report(tmp_path).parent / "index.md").read_text()
    assert "## Probing: each model against teacher" in md and "| student | " in md and "Holm p=" in md


def test_report_bias_table_against_the_teacher(tmp_path):
    from s3kit.eval.stats import holm

    _card(tmp_path, "teacher", 2_000_000, 0.91, 0.31, 0.9)
    _card(tmp_path, "student", 500_000, 0.85, 0.42, 0.4)
    _card(tmp_path, "pruned", 400_000, 0.80, 0.45, 0.85)
    for name, diff, p in (("student", -0.5, 0.001), ("pruned", -0.05, 0.6)):
        path = tmp_path / "models" / name / "card.json"
        card = json.loads(path.read_text())
        card["bias"]["gender"]["vs_reference"] = {"reference": "teacher", "diff": diff, "ci_low": diff - 0.2,
                                                  "ci_high": diff + 0.2, "p": p}
        path.write_text(json.dumps(card))
    md = (build_report(tmp_path).parent / "index.md").read_text()
    q = holm([0.6, 0.001])  # cards in name order: pruned, student
    assert "## Social bias: each model against teacher" in md
    assert f"| student | -0.50 [-0.70, -0.30], Holm p={q[1]:.3f} |" in md
    assert f"| pruned | -0.05 [-0.25, +0.15], Holm p={q[0]:.3f} n.s. |" in md
