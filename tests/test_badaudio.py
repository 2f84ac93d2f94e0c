"""Bad audio: `s3kit data check` finds it, `on_bad_audio="skip"` leaves it out of a run and records it."""

import json

import numpy as np
import pytest
import torch

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


class EnergyMethod(torch.nn.Module):
    """Regresses a waveform's log energy from its first 400 samples: a method on AudioBatch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(400, 1)

    def step(self, batch):
        x = batch.wavs[:, :400]
        target = torch.log((x ** 2).mean(1, keepdim=True) + 1e-6)
        return {"loss": ((self.net(x) - target) ** 2).mean()}


def _train_cfg(out, **kw):
    from s3kit.train import TrainConfig

    base = dict(out_dir=str(out), total_steps=6, lr=1e-3, warmup=0.0, log_every=2, save_every=3, progress=False,
                device="cpu")
    return TrainConfig(**{**base, **kw})


def test_training_run_with_a_bad_file_finishes_and_records_the_skip(tmp_path):
    from s3kit.testing import tone_cuts
    from s3kit.train import train

    good = list(tone_cuts(tmp_path / "good", n=40, seconds=(0.3, 0.5)))
    cuts, bad = bad_audio_cuts(tmp_path / "bad", n_good=0, kinds=("truncated",))
    from lhotse import CutSet

    cuts = CutSet.from_cuts(good + list(cuts))  # 1 bad of 41 (2.4 %)
    out = tmp_path / "run"
    res = train(EnergyMethod(), make_loader(cuts, max_duration=2.0, seed=0), _train_cfg(out, total_steps=12, max_bad_share=0.05))
    assert res.step == 12 and res.skipped_audio == 1  # 12 batches > one epoch
    listed = [json.loads(line) for line in (out / "skipped_audio.jsonl").read_text().splitlines()]
    assert [r["cut"] for r in listed] == ["bad_truncated"] and "bad_truncated.flac" in listed[0]["file"]
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert [(int(r[0]), float(r[3])) for r in rows if r[2] == "skipped_audio"][-1] == (12, 1.0)
    # TrainConfig.on_bad_audio="error" (or an explicit loader policy) stops at the file instead
    with pytest.raises(AudioError, match="bad_truncated"):
        train(EnergyMethod(), make_loader(cuts, max_duration=2.0, seed=0),
              _train_cfg(tmp_path / "run2", total_steps=12, on_bad_audio="error"))
    # the share limit (1 % by default) stops the same run
    with pytest.raises(BadAudioShareError, match="skipped 1 of 41"):
        train(EnergyMethod(), make_loader(cuts, max_duration=2.0, seed=0), _train_cfg(tmp_path / "run3", total_steps=12))


def test_share_limit_stops_a_training_run_on_mostly_bad_data(tmp_path):
    from s3kit.train import train

    cuts, bad = bad_audio_cuts(tmp_path / "wav", n_good=2)  # 6 bad of 8
    with pytest.raises(BadAudioShareError, match="of 8 cuts"):
        train(EnergyMethod(), make_loader(cuts, max_duration=2.0, seed=0), _train_cfg(tmp_path / "run"))
    listed = (tmp_path / "run" / "skipped_audio.jsonl").read_text().splitlines()
    assert 1 <= len(listed) <= len(bad)


def _ddp_worker(rank: int, world: int, port: int, root: str):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from s3kit.data.manifest import load_cuts
    from s3kit.train import setup_distributed, teardown_distributed, train

    setup_distributed("cpu")  # before the loader, so lhotse shards the cuts per rank
    results = {}
    for policy in ("skip", "error"):  # one process group for both runs: spawning costs more than training
        loader = make_loader(load_cuts(f"{root}/cuts.jsonl.gz"), max_duration=1.0, max_cuts=2, seed=0)
        result = results[policy] = {}
        try:
            res = train(EnergyMethod(), loader, _train_cfg(f"{root}/{policy}", total_steps=8, on_bad_audio=policy,
                                                           max_bad_share=0.5))
            result.update(step=res.step, skipped=res.skipped_audio, own=len(loader.bad_audio))
        except Exception as e:  # noqa: BLE001 - the test reads what each rank saw
            result.update(error=f"{type(e).__name__}: {e}")
    with open(f"{root}/rank{rank}.json", "w") as f:
        json.dump(results, f)
    teardown_distributed()
    os._exit(0)  # results are on disk: skip interpreter teardown, where gloo threads can still abort


def test_ddp_ranks_skip_consistently_and_stop_together(tmp_path):
    """2 gloo ranks: with skip both finish every step and count every bad cut; with error both stop
    (the rank without the bad file too) instead of one hanging in the gradient all-reduce."""
    import socket

    import torch.multiprocessing as mp
    from lhotse import CutSet

    from s3kit.testing import tone_cuts

    good = list(tone_cuts(tmp_path / "good", n=10, seconds=(0.3, 0.5)))
    bad_cuts, _ = bad_audio_cuts(tmp_path / "bad", n_good=0, kinds=("missing",))
    save_cuts(CutSet.from_cuts(good + list(bad_cuts)), tmp_path / "cuts.jsonl.gz")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    skip = [r["skip"] for r in results]
    assert [r.get("step") for r in skip] == [8, 8], skip
    assert [r["skipped"] for r in skip] == [1, 1]  # the total over ranks, on every rank
    assert sorted(r["own"] for r in skip) == [0, 1]  # one rank's shard held the bad cut
    listed = [line for p in (tmp_path / "skip").glob("skipped_audio*.jsonl") for line in p.read_text().splitlines()]
    assert len(listed) == 1 and "bad_missing" in listed[0]
    errors = [r["error"]["error"] if "error" in r["error"] else "" for r in results]
    assert all("bad_missing" in e for e in errors), errors
    assert sum("every rank stops" in e for e in errors) == 1


def test_cli_distill_with_a_bad_training_file_finishes_and_lists_it(tmp_path, capsys):
    """The real command: teacher cache and training loop both skip the truncated file; the default
    share limit (1 %) stops the same run with a message that says what to do."""
    from lhotse import CutSet

    from s3kit.testing import tiny_hf_dir, tone_cuts

    good = list(tone_cuts(tmp_path / "good", n=12, seconds=(0.5, 0.9)))
    bad, _ = bad_audio_cuts(tmp_path / "bad", n_good=0, kinds=("truncated",))
    train_m = save_cuts(CutSet.from_cuts(good + list(bad)), tmp_path / "train.jsonl.gz")
    teacher = tiny_hf_dir(tmp_path / "teacher", kind="hubert", layers=4, seed=1)
    base = ["distill", "distilhubert", "--teacher", str(teacher), "--manifest", str(train_m)]
    keys = ["layers=2", "targets=[2,4]", "train.progress=false", "max_duration=4", "train.log_every=1",
            "train.total_steps=6"]
    out = tmp_path / "run"
    assert main([*base, "--out", str(out), "--max-bad-share", "0.1", *keys]) == 0
    listed = [json.loads(line) for line in (out / "skipped_audio.jsonl").read_text().splitlines()]
    assert [r["cut"] for r in listed] == ["bad_truncated"]
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert [float(r[3]) for r in rows if r[2] == "skipped_audio"][-1] == 1.0
    assert main([*base, "--out", str(tmp_path / "run2"), *keys]) == 2
    assert "skipped 1 of 13 cuts" in capsys.readouterr().err


def test_cli_probe_skips_bad_training_audio_and_stops_on_a_bad_test_file(tmp_path, capsys):
    from lhotse import CutSet

    from s3kit.testing import tone_cuts

    good = list(tone_cuts(tmp_path / "train", n=30, seconds=(0.3, 0.5)))
    bad, _ = bad_audio_cuts(tmp_path / "bad", n_good=0, kinds=("non_finite",))
    train = save_cuts(CutSet.from_cuts(good + list(bad)), tmp_path / "train.jsonl.gz")
    dev = save_cuts(tone_cuts(tmp_path / "dev", n=6, seconds=(0.3, 0.5), seed=1), tmp_path / "dev.jsonl.gz")
    args = ["probe", "--upstream", "mfcc", "--task", "ks", "--train", str(train), "--dev", str(dev),
            "--max-updates", "10", "--eval-every", "5", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    out = tmp_path / "probe"
    assert main([*args, "--test", str(dev), "--out", str(out), "--max-bad-share", "0.05"]) == 0
    result = json.loads((out / "results.json").read_text())["runs"][0]
    assert result["num_train"] == 30 and [r["cut"] for r in result["skipped_audio"]] == ["bad_non_finite"]
    listed = [json.loads(line) for line in (out / "skipped_audio.jsonl").read_text().splitlines()]
    assert [(r["split"], r["cut"]) for r in listed] == [("train", "bad_non_finite")]
    # a test split must stay complete: the same bad file there stops the probe, naming it
    test = save_cuts(CutSet.from_cuts(list(load_cuts(dev)) + list(bad)), tmp_path / "test.jsonl.gz")
    capsys.readouterr()
    assert main([*args, "--test", str(test), "--out", str(tmp_path / "p2"), "--max-bad-share", "0.05"]) == 2
    assert "bad_non_finite" in capsys.readouterr().err


def test_a_consistent_8khz_stereo_recording_is_not_bad(tmp_path):
    """Only a *mismatch* with the manifest is a problem: an 8 kHz stereo file described as such loads
    (downmixed, resampled to 16 kHz) and passes `data check`."""
    from lhotse import Recording

    from s3kit.data.loader import load_cut_audio
    from s3kit.testing import sine

    wav = np.stack([sine(300.0, 1.0, 0.3, sr=8000), sine(500.0, 1.0, 0.3, sr=8000)], axis=1)
    cut = Recording.from_file(write_wav(tmp_path / "a.wav", wav, sr=8000), recording_id="a").to_cut()
    assert load_cut_audio(cut).shape == (16000,)
    assert check_cut(cut) == []


def test_cli_bias_stops_on_a_corrupt_stimulus_or_drops_it_for_every_upstream(tmp_path, capsys):
    from tests.test_bias import _stimuli

    stimuli = _stimuli(tmp_path)  # 6 female, 6 male, 6 positive, 6 negative, 1 young
    corrupt = np.full(8000, np.nan, dtype=np.float32)
    write_wav(tmp_path / "wav" / "female0.wav", corrupt, subtype="FLOAT")
    args = ["bias", "--upstream", "mfcc", "fbank", "--stimuli", str(stimuli), "--tests", "gender",
            "--n-permutations", "100", "--layer-permutations", "10", "--layer-bootstrap", "0", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "err")]) == 2
    assert "female0.wav" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main([*args, "--out", str(out), "--on-bad-audio", "skip", "--max-bad-share", "0.1"]) == 0
    report = json.loads((out / "bias.json").read_text())
    assert report["tests"]["gender"]["n_x"] == 5 and report["tests"]["gender"]["n_y"] == 6
    assert len(report["upstreams"]) == 2
    listed = [json.loads(line) for line in (out / "skipped_audio.jsonl").read_text().splitlines()]
    assert len(listed) == 1 and listed[0]["file"].endswith("female0.wav")


def test_cli_pretrain_melhubert_skips_a_bad_file_in_targets_stats_and_training(tmp_path):
    from lhotse import CutSet

    from s3kit.methods.pretrain import load_units
    from s3kit.testing import tone_cuts

    good = list(tone_cuts(tmp_path / "good", n=12, seconds=(0.5, 0.9)))
    bad, _ = bad_audio_cuts(tmp_path / "bad", n_good=0, kinds=("empty",))
    manifest = save_cuts(CutSet.from_cuts(good + list(bad)), tmp_path / "train.jsonl.gz")
    out = tmp_path / "run"
    model = "model={num_layers: 2, hidden_size: 32, ffn_size: 64, num_heads: 2, pos_conv_kernel: 16, pos_conv_groups: 4}"
    rc = main(["pretrain", "melhubert", "--manifest", str(manifest), "--out", str(out), "--steps", "8", "--device", "cpu",
               "--max-bad-share", "0.1", "num_clusters=4", "max_frames=40", "max_duration=4", model,
               "train.progress=false", "train.log_every=1"])
    assert rc == 0
    assert sorted(load_units(out / "targets" / "units.safetensors").ids) == sorted(c.id for c in good)
    listed = [json.loads(line)["cut"] for line in (out / "skipped_audio.jsonl").read_text().splitlines()]
    assert listed == ["bad_empty"]
