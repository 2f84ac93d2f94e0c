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
    assert "<td>0.910</td>" in text and "<td>0.420</td>" in text and "0.900 (0.010)" in text
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
