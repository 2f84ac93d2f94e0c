"""Stratified subsets are exact on a known set; speaker-disjoint splits share no speaker."""

from __future__ import annotations

from collections import Counter

import pytest
from lhotse import CutSet, MonoCut, SupervisionSegment
from lhotse.testing.dummies import dummy_recording

from s3kit.data.manifest import get_label, save_cuts
from s3kit.data.subsets import speaker_disjoint_split, stratified_quota, stratified_subset


def known_set(per_class=(("yes", 50), ("no", 30), ("up", 20)), speakers=10):
    cuts, i = [], 0
    for word, n in per_class:
        for _ in range(n):
            rec = dummy_recording(i, duration=1.0)
            sup = SupervisionSegment(id=f"s{i}", recording_id=rec.id, start=0, duration=1.0, speaker=f"spk{i % speakers}", custom={"keyword": word})
            cuts.append(MonoCut(id=f"c{i:04d}", start=0, duration=1.0, channel=0, recording=rec, supervisions=[sup]))
            i += 1
    return CutSet.from_cuts(cuts)


@pytest.mark.parametrize("fraction, expected", [(0.1, {"yes": 5, "no": 3, "up": 2}), (0.05, {"yes": 3, "no": 1, "up": 1}), (0.5, {"yes": 25, "no": 15, "up": 10})])
def test_stratified_subset_exact(fraction, expected):
    sub = stratified_subset(known_set(), fraction, key="keyword", seed=0)
    assert dict(Counter(get_label(c, "keyword") for c in sub)) == expected
    assert len(sub) == round(fraction * 100)


def test_stratified_quota_largest_remainder():
    # 1 % of {a: 150, b: 150, c: 100} = 4: floors 1/1/1, one extra to the largest remainder (a or b, .5)
    quota = stratified_quota({"a": 150, "b": 150, "c": 100}, 0.01)
    assert sum(quota.values()) == 4 and quota["c"] == 1 and sorted([quota["a"], quota["b"]]) == [1, 2]


def test_subset_is_seeded_and_order_preserving():
    cuts = known_set()
    a = [c.id for c in stratified_subset(cuts, 0.1, seed=3)]
    assert a == [c.id for c in stratified_subset(cuts, 0.1, seed=3)]
    assert a != [c.id for c in stratified_subset(cuts, 0.1, seed=4)]
    assert a == sorted(a)
    for seed in range(20):  # property: for any seed, each class keeps its quota and no cut twice
        sub = stratified_subset(cuts, 0.2, seed=seed)
        assert Counter(get_label(c, "keyword") for c in sub) == Counter({"yes": 10, "no": 6, "up": 4})
        assert len({c.id for c in sub}) == 20


def test_subset_errors():
    with pytest.raises(ValueError, match="fraction"):
        stratified_subset(known_set(), 0.0)
    with pytest.raises(ValueError, match="no 'emotion' label"):
        stratified_subset(known_set(), 0.1, key="emotion")


def test_speaker_disjoint_split():
    cuts = known_set(speakers=20)
    for seed in range(10):
        train, dev, test = speaker_disjoint_split(cuts, (0.8, 0.1, 0.1), seed=seed)
        spk = [{get_label(c, "speaker") for c in part} for part in (train, dev, test)]
        assert not (spk[0] & spk[1]) and not (spk[0] & spk[2]) and not (spk[1] & spk[2])
        assert len(train) + len(dev) + len(test) == 100
        assert (len(train), len(dev), len(test)) == (80, 10, 10)  # 20 speakers x 5 cuts: exact
    a = speaker_disjoint_split(cuts, seed=1)
    assert [c.id for c in a[1]] == [c.id for c in speaker_disjoint_split(cuts, seed=1)[1]]


def test_speaker_disjoint_too_few_speakers():
    with pytest.raises(ValueError, match="2 speakers cannot fill 3"):
        speaker_disjoint_split(known_set(speakers=2), (0.8, 0.1, 0.1))


def test_cli_subset_and_split(tmp_path):
    import argparse

    from s3kit.commands import data as cmd
    from s3kit.data.manifest import load_cuts

    path = save_cuts(known_set(speakers=20), tmp_path / "all.jsonl.gz")
    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    args = parser.parse_args(["data", "subset", str(path), str(tmp_path / "sub.jsonl.gz"), "--fraction", "0.1"])
    assert args.func(args) == 0
    assert len(load_cuts(tmp_path / "sub.jsonl.gz")) == 10
    args = parser.parse_args(["data", "split", str(path), str(tmp_path / "splits"), "--seed", "0"])
    assert args.func(args) == 0
    assert [len(load_cuts(tmp_path / "splits" / f"{s}.jsonl.gz")) for s in ("train", "dev", "test")] == [80, 10, 10]
