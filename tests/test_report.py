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
