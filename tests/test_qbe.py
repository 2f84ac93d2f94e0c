"""QbE: subsequence DTW, MTWV / MAP / EER against hand computations, the synthetic set end to end
(API and CLI), and the QUESST 2014 layout reader."""

import itertools
import json

import numpy as np
import pytest
import torch

from s3kit.eval.tasks.qbe import (
    QbEConfig, equal_error_rate, mean_average_precision, mtwv, qbe_scores, subsequence_dtw,
)


def brute_twv(scores, truth, beta):
    """TWV at every threshold by the definition (detect score >= θ), max with the empty system."""
    best = 0.0
    keep = truth.sum(1) > 0
    s, t = scores[keep], truth[keep]
    for theta in np.unique(s):
        det = s >= theta
        p_miss = 1 - (det & t).sum(1) / t.sum(1)
        p_fa = (det & ~t).sum(1) / (~t).sum(1)
        best = max(best, 1 - np.mean(p_miss + beta * p_fa))
    return best


def test_mtwv_hand_case():
    # 2 queries x 4 documents; beta = (1/1) * (1/0.5 - 1) = 1
    scores = np.array([[0.9, 0.8, 0.3, 0.1],
                       [0.7, 0.2, 0.6, 0.4]])
    truth = np.array([[1, 0, 1, 0],
                      [0, 0, 1, 1]], dtype=bool)
    # by hand: at θ = 0.6 -> q1 detects {0.9, 0.8}: hit 1/2, FA 1/2; q2 detects {0.7, 0.6}: hit 1/2, FA 1/2
    #   TWV = 1 - mean(0.5 + 0.5, 0.5 + 0.5) = 0
    # at θ = 0.9 -> q1: hit 1/2, FA 0; q2 nothing: miss 1 -> TWV = 1 - mean(0.5, 1) = 0.25
    # at θ = 0.3 -> q1 {0.9,0.8,0.3}: miss 0, FA 1/2; q2 {0.7,0.6,0.4}: miss 0, FA 1/2 -> TWV = 0.5
    # at θ = 0.1 / 0.2: FA 1 for one query each -> lower; best = 0.5 at θ = 0.3
    value, theta = mtwv(scores, truth, p_target=0.5, c_miss=1.0, c_fa=1.0)
    assert value == pytest.approx(0.5) and theta == pytest.approx(0.3)
    assert value == pytest.approx(brute_twv(scores, truth, 1.0))
    # SUPERB-sized beta (1249): any false alarm costs far more than a hit gains -> only θ = 0.9 pays
    value, theta = mtwv(scores, truth)
    assert theta == pytest.approx(0.9) and value == pytest.approx(1 - (0.5 + 1.0) / 2)
    # no detection at all is TWV 0: the maximum is never negative
    assert mtwv(-scores, truth)[0] >= 0.0


def test_mtwv_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 6, size=(3, 7)).astype(float)  # many ties
        truth = rng.random((3, 7)) < 0.4
        truth[0, 0] = True
        assert mtwv(scores, truth, 0.25)[0] == pytest.approx(brute_twv(scores, truth, 3.0))


def test_map_and_eer_hand_case():
    scores = np.array([[0.9, 0.8, 0.3, 0.1]])
    truth = np.array([[1, 0, 1, 0]], dtype=bool)
    assert mean_average_precision(scores, truth) == pytest.approx((1 / 1 + 2 / 3) / 2)
    perfect = np.array([[3.0, 2.0, 1.0, 0.0]])
    assert equal_error_rate(perfect, np.array([[1, 1, 0, 0]], dtype=bool)) == 0.0
    assert equal_error_rate(-perfect, np.array([[1, 1, 0, 0]], dtype=bool)) == 1.0


def test_subsequence_dtw_hand_case():
    # query of 2 frames in a document of 4: the cheapest path may start anywhere
    cost = torch.tensor([[[5.0, 0.0, 5.0, 5.0],
                          [5.0, 5.0, 1.0, 5.0]]])
    # (0,1) -> (1,2) diagonal: 0 + 1 = 1, divided by Tq = 2
    assert subsequence_dtw(cost).item() == pytest.approx(0.5)
    # the (i-1, j-2) step lets the query skip a document frame
    cost = torch.tensor([[[0.0, 9.0, 9.0], [9.0, 9.0, 0.0]]])
    assert subsequence_dtw(cost).item() == pytest.approx(0.0)
    # but a query frame can never be skipped: no (i-2, .) step
    cost = torch.tensor([[[0.0, 9.0], [9.0, 9.0], [9.0, 0.0]]])
    assert subsequence_dtw(cost).item() == pytest.approx(9.0 / 3)


def test_embedded_query_scores_highest():
    g = torch.Generator().manual_seed(0)
    docs = [torch.randn(40, 8, generator=g) for _ in range(6)]
    query = docs[3][10:22].clone() + 0.05 * torch.randn(12, 8, generator=g)
    short = torch.randn(3, 8, generator=g)  # under min_query_frames: all zeros
    scores = qbe_scores([query, short], docs, QbEConfig())
    assert int(scores[0].argmax()) == 3 and scores[0, 3] > 1.5  # z-normalised across documents
    assert torch.equal(scores[1], torch.zeros(6))


@pytest.fixture(scope="module")
def qbe_set(tmp_path_factory):
    from s3kit.data.synth_tasks import synthesize_qbe

    return synthesize_qbe(tmp_path_factory.mktemp("qbe"), seed=0)


def test_synthetic_qbe_end_to_end(qbe_set, tmp_path):
    from s3kit.data.manifest import get_label, load_cuts
    from s3kit.eval.probe import ProbeConfig, run_probe

    docs, dev, test = (load_cuts(qbe_set[k]) for k in ("qbe_docs", "qbe_dev", "qbe_test"))
    doc_speakers = {c.supervisions[0].speaker for c in docs}
    assert not doc_speakers & {c.supervisions[0].speaker for c in [*dev, *test]}  # held-out query voices
    for q in [*dev, *test]:  # every hit really contains the term; no other document does
        term = q.supervisions[0].text
        assert sorted(get_label(q, "qbe_hits")) == sorted(d.id for d in docs if term in d.supervisions[0].text.split())
    cfg = ProbeConfig(cache_dir=str(tmp_path / "cache"), progress=False)
    r = run_probe("mfcc", "qbe", qbe_set["qbe_docs"], qbe_set["qbe_dev"], qbe_set["qbe_test"], cfg)
    assert r.metric == "mtwv" and r.higher_is_better and 0.0 <= r.test <= 1.0
    assert r.extra["beta"] == pytest.approx(1249.0)
    # chance MAP: 2 relevant of 24 documents ranked at random (expected AP, exact by enumeration of ranks)
    n, k = 24, 2
    chance = np.mean([np.mean([(i + 1) / (p + 1) for i, p in enumerate(sorted(pos))])
                      for pos in itertools.combinations(range(n), k)])
    assert r.extra["test_map"] > chance + 0.15, (r.extra, chance)
    # per-query predictions reproduce the scores; the intervals bracket them (n: queries with a true document)
    from s3kit.eval.probe import score_interval, score_items

    assert [i["id"] for i in r.predictions] == [c.id for c in test] and r.n == len(test)
    assert score_items(r.predictions) == pytest.approx(r.test) and r.ci_low <= r.test <= r.ci_high
    assert score_interval(r.predictions, seed=r.seed).ci_high == pytest.approx(r.ci_high)
    lo, hi = r.extra["test_map_ci"]
    assert lo <= r.extra["test_map"] <= hi


def test_cli_qbe(qbe_set, tmp_path):
    from s3kit.cli import main

    data = qbe_set["qbe_docs"].parent  # qbe_docs / qbe_dev / qbe_test: docs -> train, test
    out = tmp_path / "out"
    rc = main(["probe", "--upstream", "mfcc", "--task", "qbe", "--data", str(data), "--out", str(out),
               "--cache-dir", str(tmp_path / "cache"), "progress=false"])
    assert rc == 0
    rows = json.loads((out / "results.json").read_text())["runs"]
    assert rows[0]["task"] == "qbe" and "test_map" in rows[0]["extra"]
    assert rows[0]["n"] > 0 and rows[0]["ci_low"] <= rows[0]["test"] <= rows[0]["ci_high"]
    # `s3kit compare` on QbE runs: an identical copy is not different
    import shutil

    shutil.copytree(out, tmp_path / "again")
    assert main(["compare", str(out), str(tmp_path / "again"), "--out", str(tmp_path / "cmp")]) == 0
    (row,) = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    assert row["metric"] == "mtwv" and row["higher_is_better"] and row["diff"] == 0 and row["p"] == 1.0
    assert row["n"] == rows[0]["n"] and not row["significant"]


def quesst_fixture(root):
    from s3kit.testing import write_wav

    rng = np.random.default_rng(0)
    for i in range(1, 5):
        write_wav(root / "Audio" / f"quesst14_{i:05d}.wav", 0.1 * rng.standard_normal(4000).astype(np.float32))
    for split in ("dev", "eval"):
        for i in range(1, 3):
            write_wav(root / f"{split}_queries" / f"quesst14_{split}_{i:04d}.wav", 0.1 * rng.standard_normal(1600).astype(np.float32))
    sc = root / "scoring"
    (sc / "groundtruth_quesst14_dev").mkdir(parents=True)
    (sc / "groundtruth_quesst14_eval").mkdir(parents=True)
    langs = ["nnenglish", "nnenglish", "albanian", "nnenglish"]
    (sc / "language_key_utterances.lst").write_text(
        "".join(f"quesst14Database/Audio/quesst14_{i:05d}.wav {langs[i - 1]}\n" for i in range(1, 5)))
    for split in ("dev", "eval"):
        (sc / f"language_key_{split}.lst").write_text(
            f"quesst14Database/{split}_queries/quesst14_{split}_0001.wav nnenglish\n"
            f"quesst14Database/{split}_queries/quesst14_{split}_0002.wav basque\n")
    (sc / "groundtruth_quesst14_dev" / "quesst14_dev.rttm").write_text(
        "LEXEME quesst14_00002 1 0.10 0.05 quesst14_dev_0001 <NA> <NA> <NA>\n"
        "LEXEME quesst14_00003 1 0.10 0.05 quesst14_dev_0001 <NA> <NA> <NA>\n")  # 00003 is not English
    (sc / "groundtruth_quesst14_eval" / "quesst14_eval.rttm").write_text(
        "LEXEME quesst14_00004 1 0.00 0.05 quesst14_eval_0001 <NA> <NA> <NA>\n")
    return root


def test_quesst14_layout(tmp_path):
    from s3kit.data.manifest import get_label
    from s3kit.data.recipes import RecipeError, prepare

    root = quesst_fixture(tmp_path / "quesst14Database")
    splits = prepare("quesst14", root, tmp_path / "out")
    assert sorted(c.id for c in splits["docs"]) == ["quesst14_00001", "quesst14_00002", "quesst14_00004"]
    (dev,) = list(splits["dev"])
    assert dev.id == "quesst14_dev_0001" and get_label(dev, "qbe_hits") == ["quesst14_00002"]
    assert get_label(next(iter(splits["eval"])), "qbe_hits") == ["quesst14_00004"]
    assert (tmp_path / "out" / "quesst14_eval.jsonl.gz").exists()
    rttm = root / "scoring" / "groundtruth_quesst14_dev" / "quesst14_dev.rttm"
    rttm.write_text("LEXEME quesst14_00002 1 0.10\n")
    with pytest.raises(RecipeError, match=f"{rttm}:1"):
        prepare("quesst14", root, tmp_path / "out2")
