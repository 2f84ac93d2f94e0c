"""Per-item results, intervals and paired tests of the SD, SF, QbE and ENV / MUS tasks: item
scores against the corpus metrics and hand computations, a planted difference found, identical
runs not different, and ``s3kit compare`` over their ``predictions.jsonl.gz``."""

import numpy as np
import pytest

from s3kit.eval import stats
from s3kit.eval.probe import compare_items, item_kind, score_interval, score_items

# ----------------------------------------------------------------------------------- SD


def _sd_case():
    from pyannote.core import Annotation, Segment

    from s3kit.eval.tasks.sd import activity_to_annotation

    ref1 = Annotation(uri="u1")
    ref1[Segment(0, 10)] = "A"
    ref1[Segment(5, 15)] = "B"
    active = np.zeros((15, 2), dtype=bool)
    active[:12, 0] = True
    active[12:, 1] = True
    hyp1 = activity_to_annotation(active, frame_rate=1.0, uri="u1")
    ref2 = Annotation(uri="u2")
    ref2[Segment(0, 4)] = "C"
    active = np.zeros((6, 1), dtype=bool)
    active[:6, 0] = True  # 0-6 s: C's 4 s right, 2 s false alarm
    hyp2 = activity_to_annotation(active, frame_rate=1.0, uri="u2")
    return [ref1, ref2], [hyp1, hyp2], [15.0, 6.0]


def test_sd_items_sum_to_the_corpus_der():
    from s3kit.eval.tasks.sd import diarization_error_rate, diarization_items

    refs, hyps, durations = _sd_case()
    items = diarization_items(["u1", "u2"], refs, hyps, durations)
    # by hand: u1 (test_tasks.test_der_hand_case) 5 s missed + 2 s confusion of 20 s speech; u2 2 s false alarm of 4 s
    assert [i["errors"] for i in items] == pytest.approx([7.0, 2.0])
    assert [i["ref_length"] for i in items] == pytest.approx([20.0, 4.0])
    assert items[0]["missed"] == pytest.approx(5.0) and items[0]["confusion"] == pytest.approx(2.0)
    assert items[1]["false_alarm"] == pytest.approx(2.0)
    assert items[0]["reference"] == "A 0.00-10.00, B 5.00-15.00"
    assert item_kind(items) == "rate"
    # DER = sum / sum = 9 / 24, the pyannote corpus DER
    assert score_items(items) == pytest.approx(9 / 24)
    assert score_items(items) == pytest.approx(diarization_error_rate(refs, hyps, durations)["der"])
    iv = score_interval(items)
    assert iv.n == 2 and iv.value == pytest.approx(9 / 24) and iv.ci_low <= 9 / 24 <= iv.ci_high


def test_sd_paired_bootstrap_finds_a_planted_difference():
    rng = np.random.default_rng(0)
    ref_len = rng.uniform(5, 15, 40)
    good = [{"id": f"r{k}", "errors": 0.1 * r, "ref_length": r} for k, r in enumerate(ref_len)]
    bad = [{"id": f"r{k}", "errors": 0.4 * r, "ref_length": r} for k, r in enumerate(ref_len)]
    res = compare_items(bad, good)
    assert res.diff == pytest.approx(0.3) and res.ci_low > 0 and res.p < 0.01
    same = compare_items(good, [dict(i) for i in good])
    assert same.diff == 0 and same.p == 1.0


# ----------------------------------------------------------------------------------- SF


def _sf_case():
    refs = [[("time", "noon"), ("room", "kitchen")], [], [("city", "paris")]]
    hyps = [[("time", "moon")], [], [("date", "today")]]
    return refs, hyps


def test_sf_items_hand_case():
    from s3kit.eval.tasks.sf import slot_items, slot_type_f1, slot_value_cer, utterance_f1, value_cer_interval

    refs, hyps = _sf_case()
    items = slot_items(["a", "b", "c"], refs, hyps)
    assert [(i["tp"], i["fp"], i["fn"]) for i in items] == [(1, 0, 1), (0, 0, 0), (0, 1, 1)]
    assert utterance_f1(items).tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert item_kind(items) == "f1"
    assert score_items(items) == pytest.approx(slot_type_f1(refs, hyps)) and score_items(items) == pytest.approx(5 / 9)
    assert [i["value_errors"] for i in items] == [8, 0, 5] and [i["value_chars"] for i in items] == [11, 0, 5]
    cer = value_cer_interval(items)
    assert cer.value == pytest.approx(slot_value_cer(refs, hyps)) and cer.value == pytest.approx(13 / 16)
    assert items[0]["reference"] == "time=noon; room=kitchen" and items[0]["hypothesis"] == "time=moon"


def test_sf_interval_is_the_utterance_bootstrap_of_the_mean_f1():
    from s3kit.eval.tasks.sf import utterance_f1

    rng = np.random.default_rng(1)
    items = [{"id": f"u{k}", "tp": int(rng.integers(0, 3)), "fp": int(rng.integers(0, 2)), "fn": int(rng.integers(0, 2))}
             for k in range(30)]
    f1 = utterance_f1(items)
    iv = score_interval(items, seed=3)
    ref = stats.bootstrap_stat(lambda idx: f1[idx].mean(), len(f1), seed=3)  # the same draws, one at a time
    assert iv.n == 30 and iv.value == pytest.approx(ref.value)
    assert (iv.ci_low, iv.ci_high) == pytest.approx((ref.ci_low, ref.ci_high))


def test_sf_paired_test_planted_difference_and_identical_runs():
    perfect = [{"id": f"u{k}", "tp": 2, "fp": 0, "fn": 0} for k in range(40)]
    worse = [{"id": f"u{k}", "tp": 0 if k % 2 else 2, "fp": 1 if k % 2 else 0, "fn": 2 if k % 2 else 0}
             for k in range(40)]  # half the utterances get every slot type wrong
    res = compare_items(worse, perfect)
    assert res.diff == pytest.approx(-0.5) and res.rate_a == pytest.approx(0.5) and res.rate_b == 1.0
    assert res.ci_high < 0 and res.p < 0.01
    same = compare_items(worse, [dict(i) for i in worse])
    assert same.diff == 0 and same.p == 1.0 and same.ci_low == same.ci_high == 0


# ----------------------------------------------------------------------------------- QbE


def test_qbe_items_mtwv_and_map_hand_case():
    from s3kit.eval.tasks.qbe import map_interval, query_items

    scores = np.array([[0.9, 0.8, 0.3, 0.1],
                       [0.7, 0.2, 0.6, 0.4]])
    truth = np.array([[1, 0, 1, 0],
                      [0, 0, 1, 1]], dtype=bool)
    docs = ["d0", "d1", "d2", "d3"]
    # beta 1: MTWV 0.5 at θ = 0.3 (tests/test_qbe.py::test_mtwv_hand_case)
    items = query_items(["q0", "q1"], docs, scores, truth, beta=1.0, threshold=0.3)
    assert item_kind(items) == "detection" and items[0]["targets"] == [0, 2] and items[1]["reference"] == "d2 d3"
    assert items[0]["hypothesis"] == "d0 d1 d2" and items[1]["hypothesis"] == "d0 d2 d3"
    assert score_items(items) == pytest.approx(0.5)
    # AP q0: hits at ranks 1, 3 -> (1 + 2/3) / 2; q1: ranks 2, 3 -> (1/2 + 2/3) / 2
    assert map_interval(items).value == pytest.approx(((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    # beta 1249: only θ = 0.9 pays -> 1 - (0.5 + 1) / 2
    assert score_items(query_items(["q0", "q1"], docs, scores, truth, beta=1249.0)) == pytest.approx(0.25)


def test_qbe_resampled_mtwv_is_the_mtwv_of_the_pooled_resampled_queries():
    from s3kit.eval.tasks.qbe import _mtwv_of, mtwv, mtwv_items, query_items, twv_table

    rng = np.random.default_rng(0)
    for trial in range(15):
        scores = rng.integers(0, 8, size=(6, 9)).astype(np.float32) / 3  # ties, and float32 like qbe_scores
        truth = rng.random((6, 9)) < 0.3
        truth[0, 0] = True
        truth[5] = False  # a query without a true document: left out, as mtwv does
        p_target = [0.25, 0.1, 0.5][trial % 3]
        beta = 1 / p_target - 1
        items = query_items([f"q{k}" for k in range(6)], [f"d{j}" for j in range(9)], scores, truth, beta)
        assert mtwv_items(items) == pytest.approx(mtwv(scores, truth, p_target)[0])
        keep = truth.any(1)
        table = twv_table(scores, truth, beta)
        for idx in rng.integers(0, keep.sum(), size=(5, keep.sum())):  # a query drawn twice counts twice
            counts = np.bincount(idx, minlength=keep.sum())
            pooled = mtwv(scores[keep][idx], truth[keep][idx], p_target)[0]
            assert _mtwv_of(table, counts) == pytest.approx(pooled)


def test_qbe_item_scores_keep_order_and_ties():
    from s3kit.eval.tasks.qbe import mean_average_precision, mtwv, mtwv_items, query_items

    rng = np.random.default_rng(2)
    scores = rng.standard_normal((5, 50)).astype(np.float32)
    scores[:, 10] = scores[:, 11]  # a tie
    truth = rng.random((5, 50)) < 0.1
    truth[:, 3] = True
    items = query_items([f"q{k}" for k in range(5)], [f"d{j}" for j in range(50)], scores, truth, beta=20.0)
    back = np.array([i["scores"] for i in items])
    assert np.array_equal(back.astype(np.float32), scores)  # shortest float32 text: exact round trip
    assert mtwv_items(items) == pytest.approx(mtwv(scores, truth, 1 / 21)[0])
    assert mean_average_precision(back, truth) == mean_average_precision(scores, truth)


def test_qbe_paired_test_planted_difference_and_identical_runs():
    from s3kit.eval.tasks.qbe import query_items

    rng = np.random.default_rng(3)
    q, n = 30, 40
    truth = np.zeros((q, n), dtype=bool)
    for k in range(q):
        truth[k, rng.choice(n, 2, replace=False)] = True
    good = rng.standard_normal((q, n)) + 6 * truth  # true documents far above the rest
    chance = rng.standard_normal((q, n))
    ids, docs = [f"q{k}" for k in range(q)], [f"d{j}" for j in range(n)]
    a, b = query_items(ids, docs, good, truth, 9.0), query_items(ids, docs, chance, truth, 9.0)
    assert score_items(a) > 0.8 and score_items(b) < 0.3
    res = compare_items(b, a)
    assert res.diff == pytest.approx(score_items(b) - score_items(a)) and res.ci_high < 0 and res.p < 0.01
    iv = score_interval(a)
    assert iv.n == q and iv.ci_low <= iv.value <= iv.ci_high <= 1.0
    same = compare_items(a, [dict(i) for i in a])
    assert same.diff == 0 and same.p == 1.0
    with pytest.raises(ValueError, match="different MTWV costs"):
        compare_items(a, query_items(ids, docs, good, truth, 99.0))


def test_item_kind_names_what_is_missing():
    with pytest.raises(ValueError, match="has none of correct"):
        item_kind([{"id": "x", "score": 1.0}])


# ----------------------------------------------------------------------------------- s3kit compare


def test_compare_runs_over_task_predictions(tmp_path):
    """``s3kit compare`` reads SD / SF / QbE predictions: metric names, direction and a planted difference."""
    from s3kit.eval.compare import compare_runs
    from s3kit.eval.probe import write_results
    from s3kit.eval.tasks.common import TaskResult
    from s3kit.eval.tasks.qbe import query_items

    rng = np.random.default_rng(4)
    truth = rng.random((25, 30)) < 0.07
    truth[:, 0] = True
    ids, docs = [f"q{k}" for k in range(25)], [f"d{j}" for j in range(30)]
    ref_len = rng.uniform(5, 15, 30)

    def run(name, good):
        items = {
            "sd": [{"id": f"r{k}", "reference": "", "hypothesis": "", "errors": (0.1 if good else 0.5) * r,
                    "ref_length": r} for k, r in enumerate(ref_len)],
            "sf": [{"id": f"u{k}", "reference": "", "hypothesis": "", "tp": 1 if good or k % 3 else 0,
                    "fp": 0, "fn": 0 if good or k % 3 else 1} for k in range(30)],
            "qbe": query_items(ids, docs, rng.standard_normal(truth.shape) + (6 if good else 0) * truth, truth, 9.0),
        }
        results = []
        for task, its in items.items():
            iv = score_interval(its)
            results.append(TaskResult(task=task, upstream=name, metric="x", higher_is_better=True, test=iv.value,
                                      dev=0.0, updates_to_best=0, updates=0, lr=0.0, fraction=1.0, seed=0,
                                      num_train=0, layers=[0], layer_weights=[1.0], curve=[], n=iv.n,
                                      ci_low=iv.ci_low, ci_high=iv.ci_high, predictions=its))
        write_results(results, tmp_path / name)

    run("good", True)
    run("bad", False)
    report = compare_runs([tmp_path / "good", tmp_path / "bad"], reference="good")
    rows = {r["task"]: r for r in report["rows"]}
    assert {t: (rows[t]["metric"], rows[t]["higher_is_better"]) for t in rows} == {
        "sd": ("der", False), "sf": ("slot_type_f1", True), "qbe": ("mtwv", True)}
    assert rows["sd"]["diff"] == pytest.approx(0.4) and rows["sd"]["significant"]
    assert rows["sf"]["diff"] == pytest.approx(-10 / 30) and rows["sf"]["significant"]
    assert rows["qbe"]["diff"] < 0 and rows["qbe"]["ci_high"] < 0 and rows["qbe"]["significant"]
    assert all(r["test"] == "paired bootstrap" for r in rows.values())
