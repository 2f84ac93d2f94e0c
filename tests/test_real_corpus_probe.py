"""Each real-corpus task end to end on its tiny fixture in the real layout:
data reader (s3kit data prepare) -> frozen-upstream probe -> score files."""

import json

import pytest

from s3kit.data.recipes import prepare
from s3kit.eval.probe import ProbeConfig, run_probe, write_results
from tests.test_recipes import (fsc_fixture, iemocap_fixture, librispeech_fixture, speechcommands_fixture,
                                voxceleb_fixture)

CASES = {
    # task: (corpus, fixture, train, dev, test, number of classes / tokens the probe must know)
    "ks": ("speechcommands_superb", speechcommands_fixture, "train", "valid", "test", 4),  # yes no _unknown_ _silence_
    "ic": ("slu", fsc_fixture, "train", "valid", "test", None),
    "sid": ("voxceleb", voxceleb_fixture, "train", "dev", "test", 3),
    "er": ("iemocap", iemocap_fixture, "fold1_train", "fold1_dev", "fold1_test", None),
    "asr": ("librispeech", librispeech_fixture, "train-clean-100", "dev-clean", "dev-clean", None),
    "pr": ("librispeech", librispeech_fixture, "train-clean-100", "dev-clean", "dev-clean", None),
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_reader_probe_score_file(tmp_path, task):
    corpus, fixture, tr, dv, te, _ = CASES[task]
    splits = prepare(corpus, fixture(tmp_path / "corpus"), tmp_path / "manifests", **({"phones": True} if task == "pr" else {}))
    cfg = ProbeConfig(max_updates=4, eval_every=2, batch_size=4, cache_dir=str(tmp_path / "cache"), progress=False,
                      lstm_hidden=16)
    result = run_probe("mfcc", task, splits[tr], splits[dv], splits[te], cfg)
    paths = write_results([result], tmp_path / "out")
    saved = json.loads(paths["json"].read_text())
    row = saved["runs"][0]
    assert row["task"] == task and row["num_train"] == len(splits[tr])
    assert 0.0 <= row["test"] and (row["test"] <= 1.0 or result.metric in ("per", "wer"))
    assert row["updates"] == 4 and 1 <= row["updates_to_best"] <= 4
    assert task.upper() in paths["markdown"].read_text().upper()


def test_librispeech_phones_come_from_the_transcript(tmp_path):
    from s3kit.data.manifest import get_label
    from s3kit.data.tts import phonemize

    splits = prepare("librispeech", librispeech_fixture(tmp_path / "corpus"), tmp_path / "m", phones=True)
    cut = sorted(splits["dev-clean"], key=lambda c: c.id)[0]
    assert get_label(cut, "text") == "HELLO WORLD NUMBER 0"
    assert get_label(cut, "phones").split() == phonemize("hello world number 0")
    assert get_label(cut, "phones").split()[:2] == ["h", "ə"]
