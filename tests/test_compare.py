"""``s3kit compare``: paired tests between probe runs (planted difference found, identical runs not)."""

import json
import shutil

import pytest

from s3kit.cli import main
from s3kit.data.manifest import save_cuts
from tests.test_probe import tone_splits

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Probe runs on one tone test set: mfcc (and a copy of its run), fbank barely trained (near chance),
    and mfcc on another test set."""
    root = tmp_path_factory.mktemp("compare")
    for tag, per_class, seed in (("tones", (12, 4, 6), 0), ("other", (6, 2, 2), 1)):
        for name, cuts in zip(("train", "dev", "test"), tone_splits(root / tag, per_class=per_class, seed=seed)):
            save_cuts(cuts, root / "data" / f"{tag}_{name}.jsonl.gz")
    common = ["--task", "ks", "--data", str(root / "data"), "--cache-dir", str(root / "cache"), "progress=false"]
    plans = {
        "mfcc": ["--upstream", "mfcc", "--subset", "tones", "--lr", "1e-2", "--max-updates", "60", "--eval-every", "20"],
        # the planted worse model: one update at a vanishing learning rate leaves the probe at its random init
        "fbank_untrained": ["--upstream", "fbank", "--subset", "tones", "--lr", "1e-7", "--max-updates", "1"],
        "mfcc_other_test": ["--upstream", "mfcc", "--subset", "other", "--lr", "1e-2", "--max-updates", "20"],
    }
    for name, args in plans.items():
        assert main(["probe", *args, "--out", str(root / name), *common]) == 0
    shutil.copytree(root / "mfcc", root / "mfcc_again")  # two identical runs
    return root


def test_compare_finds_the_planted_difference_and_not_a_difference_between_identical_runs(runs, tmp_path):
    from s3kit.eval.stats import holm, mcnemar_exact

    out = tmp_path / "cmp"
    rc = main(["compare", str(runs / "mfcc"), str(runs / "mfcc_again"), str(runs / "fbank_untrained"),
               "--reference", "mfcc", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "compare.json").read_text())
    rows = {r["model"]: r for r in report["rows"]}
    assert report["reference"] == "mfcc" and set(rows) == {"mfcc_again", "fbank_untrained"}
    same, bad = rows["mfcc_again"], rows["fbank_untrained"]
    # identical runs: no difference, p = 1, marked not significant
    assert same["diff"] == 0 and same["p"] == 1.0 and not same["significant"]
    # the planted difference: the untrained probe is far worse, with an interval below 0 and a small adjusted p
    assert bad["score"]["value"] < 0.5 < bad["reference_score"]["value"]
    assert bad["diff"] == pytest.approx(bad["score"]["value"] - bad["reference_score"]["value"])
    assert bad["ci_high"] < 0 and bad["significant"] and bad["test"] == "exact McNemar"
    # p is McNemar on the per-item results in predictions.jsonl.gz; Holm over the two rows
    from s3kit.eval.probe import read_predictions

    a = [r["correct"] for r in read_predictions(runs / "fbank_untrained" / "predictions.jsonl.gz")]
    b = [r["correct"] for r in read_predictions(runs / "mfcc" / "predictions.jsonl.gz")]
    assert bad["p"] == pytest.approx(mcnemar_exact(a, b))
    assert [same["p_holm"], bad["p_holm"]] == pytest.approx(holm([same["p"], bad["p"]]))
    md = (out / "compare.md").read_text()
    assert md.count("| n.s. |") == 1 and "| ks accuracy ↑ | 1 | 0 | fbank_untrained |" in md
    assert f"{bad['diff']:+.3f}" in md and "| +0.000 [+0.000, +0.000] |" in md and ", n=24 |" in md


def test_compare_refuses_different_test_items_naming_the_first(runs, tmp_path, capsys):
    from s3kit.eval.compare import compare_runs

    with pytest.raises(ValueError, match=r"mfcc_other_test vs mfcc.*(test items|item 0 differs)"):
        compare_runs([runs / "mfcc", runs / "mfcc_other_test"])
    assert main(["compare", str(runs / "mfcc"), str(runs / "mfcc_other_test"), "--out", str(tmp_path)]) == 2
    assert "same test set" in capsys.readouterr().err
    with pytest.raises(ValueError, match="matches no run"):
        compare_runs([runs / "mfcc", runs / "mfcc_again"], reference="nope")
    assert main(["compare", str(runs / "mfcc"), str(tmp_path / "missing")]) == 2  # no predictions: one line
