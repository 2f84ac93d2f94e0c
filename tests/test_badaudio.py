"""Bad audio: `s3kit data check` finds it, `on_bad_audio="skip"` leaves it out of a run and records it."""

import json

import numpy as np
import pytest

from s3kit.audio import AudioError
from s3kit.cli import main
from s3kit.data.badaudio import BadAudio, BadAudioShareError
from s3kit.data.check import CheckConfig, check_cut, check_cuts
from s3kit.data.loader import make_loader
from s3kit.data.manifest import load_cuts, save_cuts
from s3kit.testing.factories import bad_audio_cuts, write_wav

# what `data check` must call each damaged file of the factory (a cut may have more problems, e.g.
# the empty file also no longer lasts what the manifest says)
EXPECTED = {"truncated": "unreadable", "missing": "missing", "empty": "empty", "non_finite": "non_finite",
            "channels": "channels", "sample_rate": "sample_rate"}


@pytest.fixture()
def corpus(tmp_path):
    cuts, bad = bad_audio_cuts(tmp_path / "wav", n_good=4)
    return save_cuts(cuts, tmp_path / "cuts.jsonl.gz"), cuts, bad


def test_data_check_reports_every_bad_file_with_its_reason(tmp_path, corpus, capsys):
    path, cuts, bad = corpus
    report = tmp_path / "report" / "check.jsonl"
    clean = tmp_path / "clean.jsonl.gz"
    rc = main(["data", "check", str(path), "--out", str(clean), "--report", str(report), "--jobs", "2"])
    assert rc == 1
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    found: dict[str, set] = {}
    for line in lines:
        assert set(line) == {"cut", "file", "problem", "reason"} and line["reason"]
        found.setdefault(line["cut"], set()).add(line["problem"])
    assert set(found) == set(bad)  # every bad cut, and no good one
    for cut_id, kind in bad.items():
        assert EXPECTED[kind] in found[cut_id], (cut_id, found[cut_id])
    files = {line["cut"]: line["file"] for line in lines}
    assert files["bad_missing"].endswith("bad_missing.wav")
    table = report.with_suffix(".md").read_text()
    assert "10 cuts" in table and "6 bad, 4 good" in table
    assert "6 bad, 4 good" in capsys.readouterr().out
    kept = load_cuts(clean)
    assert sorted(c.id for c in kept) == sorted(c.id for c in cuts if c.id not in bad)
    # the clean manifest passes: exit code 0, empty report
    assert main(["data", "check", str(clean), "--report", str(report)]) == 0
    assert report.read_text() == ""


def test_check_cut_silent_clipped_short_and_truncated_wav(tmp_path):
    from lhotse import Recording

    def cut_of(name, wav):
        return Recording.from_file(write_wav(tmp_path / f"{name}.wav", wav), recording_id=name).to_cut()

    rng = np.random.default_rng(0)
    speechy = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    kinds = lambda cut, **kw: {p.problem for p in check_cut(cut, CheckConfig(**kw))}  # noqa: E731
    assert kinds(cut_of("good", speechy)) == set()
    assert kinds(cut_of("silent", np.zeros(16000, np.float32))) == {"silent"}
    clipped = speechy.copy()
    clipped[:800] = 1.0  # 5 % at full scale
    assert kinds(cut_of("clipped", clipped)) == {"clipped"}
    assert kinds(cut_of("clipped2", clipped), max_clipped=0.06) == set()  # the threshold is an option
    assert kinds(cut_of("short", speechy[:300])) == {"too_short"}  # 300 samples < one 400-sample window
    assert kinds(cut_of("short2", speechy[:1600]), min_duration=0.2) == {"too_short"}  # a receptive field
    cut = cut_of("trunc", speechy)
    path = tmp_path / "trunc.wav"
    path.write_bytes(path.read_bytes()[:44 + 16000])  # header + half the samples
    assert kinds(cut) == {"truncated", "duration"}


def test_loader_skip_drops_bad_cuts_records_them_and_error_names_the_file(corpus):
    _, cuts, bad = corpus
    with pytest.raises(AudioError, match=r"bad_\w+"):
        for _ in make_loader(cuts, max_duration=30.0, shuffle=False):
            pass
    loader = make_loader(cuts, max_duration=30.0, shuffle=False, on_bad_audio="skip", max_bad_share=0.9)
    ids = [i for batch in loader for i in batch.ids]
    assert sorted(ids) == sorted(c.id for c in cuts if c.id not in bad)
    assert set(loader.bad_audio.skipped) == set(bad)
    ids2 = [i for batch in loader for i in batch.ids]  # a second epoch: same cuts, logged once
    assert ids2 == ids and len(loader.bad_audio) == len(bad)


def test_share_limit_stops_a_mostly_bad_corpus(corpus):
    _, cuts, bad = corpus  # 6 bad of 10
    loader = make_loader(cuts, max_duration=1.5, shuffle=False, on_bad_audio="skip", max_bad_share=0.5)
    with pytest.raises(BadAudioShareError, match=r"skipped 6 of 10 cuts \(60.0 %\).*data check"):
        for _ in loader:
            pass
    # the limit counts distinct cuts of the whole manifest: 1 of 100 passes 1 %, 2 of 100 stop
    b = BadAudio("skip", 0.01, total=100)
    b.record([{"cut": "a", "file": "a.wav", "reason": "x"}] * 2)
    with pytest.raises(BadAudioShareError):
        b.record([{"cut": "b", "file": "b.wav", "reason": "x"}])


def test_extract_skip_writes_exactly_the_good_cuts(tmp_path, corpus, capsys):
    from s3kit.extract import load_features
    from s3kit.testing import tiny_hf_dir

    path, cuts, bad = corpus
    model = tiny_hf_dir(tmp_path / "m", kind="hubert")
    base = ["extract", "--upstream", str(model), "--manifest", str(path), "--layers", "0", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "err")]) == 2  # default: error, names file and cut
    assert "(cut bad_" in capsys.readouterr().err
    out = tmp_path / "feats"
    assert main([*base, "--out", str(out), "--on-bad-audio", "skip", "--max-bad-share", "0.7"]) == 0
    assert sorted(load_features(out)) == sorted(c.id for c in cuts if c.id not in bad)
    listed = [json.loads(line) for line in (out / "skipped_audio.jsonl").read_text().splitlines()]
    assert sorted(r["cut"] for r in listed) == sorted(bad)
    assert all(r["file"] and r["reason"] for r in listed)
    # the default share (1 %) stops this corpus with a clear message
    assert main([*base, "--out", str(tmp_path / "f2"), "--on-bad-audio", "skip"]) == 2
    assert "corpus or its manifest is broken" in capsys.readouterr().err
