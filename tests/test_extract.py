import json

import pytest
import torch

from s3kit import load_upstream
from s3kit.cli import main
from s3kit.data.loader import make_loader
from s3kit.data.manifest import save_cuts
from s3kit.extract import ExtractConfig, extract, load_features
from s3kit.testing import tiny_hf_dir, tone_cuts


@pytest.fixture()
def manifest(tmp_path):
    cuts = tone_cuts(tmp_path / "wav", n=5, seconds=(0.4, 1.2))
    return save_cuts(cuts, tmp_path / "cuts.jsonl.gz"), cuts


def test_loader_batches_by_duration(manifest):
    _, cuts = manifest
    seen = []
    for batch in make_loader(cuts, max_duration=2.0, shuffle=True, seed=1):
        assert batch.lengths.sum().item() <= 2.0 * 16000
        assert batch.wavs.shape == (len(batch), int(batch.lengths.max()))
        for i, n in enumerate(batch.lengths.tolist()):
            assert batch.wavs[i, n:].abs().sum() == 0
        seen += batch.ids
    assert sorted(seen) == sorted(c.id for c in cuts)
    with pytest.raises(ValueError, match="shorter than the longest utterance"):
        make_loader(cuts, max_duration=0.5)


def test_extract_matches_direct_run_and_resumes(tmp_path, manifest, monkeypatch):
    monkeypatch.setattr("s3kit.extract.SHARD_BYTES", 1)  # one shard per batch, so resuming has work to skip
    path, cuts = manifest
    up = load_upstream(tiny_hf_dir(tmp_path / "m", kind="hubert"))
    out = extract(up, path, tmp_path / "feats", ExtractConfig(layers=[0, 2], pool="none", dtype="float32", max_duration=2.0), progress=False)
    feats = load_features(out)
    assert sorted(feats) == sorted(c.id for c in cuts)
    cut = cuts[0]
    wav = torch.from_numpy(cut.load_audio()[0])[None]
    with torch.no_grad():
        h = up(wav)
    ref = torch.stack([h.states[0][0], h.states[2][0]])
    torch.testing.assert_close(feats[cut.id], ref, atol=1e-4, rtol=0)
    # resume: drop one shard from the index and rerun -> only that shard is recomputed
    lines = (out / "index.jsonl").read_text().splitlines()
    (out / "index.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    missing = json.loads(lines[-1])["ids"]
    before = {p.name for p in (out / "shards").iterdir()}
    extract(up, path, out, ExtractConfig(layers=[0, 2], pool="none", dtype="float32", max_duration=2.0), progress=False)
    after = {p.name for p in (out / "shards").iterdir()}
    assert len(after - before) == 1 and sum(len(json.loads(line)["ids"]) for line in lines) == len(cuts)
    assert sorted(load_features(out)) == sorted(c.id for c in cuts)
    new = json.loads((out / "index.jsonl").read_text().splitlines()[-1])
    assert sorted(new["ids"]) == sorted(missing)
    with pytest.raises(ValueError, match="other settings"):
        extract(up, path, out, ExtractConfig(layers=[1]), progress=False)


def test_cli_extract_pooled_fp16(tmp_path, manifest):
    path, cuts = manifest
    model = tiny_hf_dir(tmp_path / "m", kind="wav2vec2")
    rc = main(["extract", "--upstream", str(model), "--manifest", str(path), "--out", str(tmp_path / "o"), "--layers", "1,2"])
    assert rc == 0
    feats = load_features(tmp_path / "o")
    f = feats[cuts[1].id]
    assert f.dtype == torch.float16 and f.shape == (2, 32)


def test_cli_reports_user_errors_without_traceback(tmp_path, capsys):
    rc = main(["extract", "--upstream", str(tmp_path / "x.ckpt"), "--manifest", "m.jsonl.gz", "--out", str(tmp_path)])
    assert rc == 2
    assert "no such upstream directory" in capsys.readouterr().err


def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "extract" in capsys.readouterr().out


def test_inference_plan_per_device_and_sorted_batches_padding(manifest):
    from s3kit.data.loader import PaddingStats, inference_plan, sorted_batches

    _, cuts = manifest
    assert inference_plan("cpu").max_cuts == 1
    assert inference_plan(torch.device("cuda"), 30.0).max_cuts is None
    assert inference_plan("cpu", max_cuts=4).max_cuts == 4
    small = inference_plan("cpu", 60.0, cpu_batch_seconds=16.0)  # an upstream that batches on CPU too
    assert small.max_cuts is None and small.max_duration == 16.0
    assert inference_plan("cpu", 8.0, cpu_batch_seconds=16.0).max_duration == 8.0
    assert inference_plan("cpu", cpu_batch_seconds=16.0, max_cuts=1).max_cuts == 1
    stats = PaddingStats()
    batches = list(sorted_batches(cuts, inference_plan("cuda", max_duration=2.0), stats))
    durations = {c.id: c.duration for c in cuts}
    ids = [i for b in batches for i in b.ids]
    assert sorted(ids) == sorted(durations)
    assert [durations[i] for i in ids] == sorted(durations.values(), reverse=True)  # longest first
    real = sum(int(b.lengths.sum()) for b in batches)
    padded = sum(b.wavs.numel() for b in batches)
    assert len(batches) < len(cuts) and all(sum(durations[i] for i in b.ids) <= 2.0 for b in batches)
    assert stats.share == pytest.approx(1 - real / padded) and stats.share > 0
    one = PaddingStats()
    assert len(list(sorted_batches(cuts, inference_plan("cpu"), one))) == len(cuts) and one.share == 0.0


def test_small_fbank_models_batch_on_cpu_and_cnn_models_do_not(tmp_path):
    from s3kit.data.loader import cpu_batch_seconds_of
    from s3kit.models.kws_student import KWSStudent, KWSStudentUpstream, config_for
    from s3kit.models.melhubert import MelHubert, MelHubertConfig, MelHubertUpstream

    assert cpu_batch_seconds_of(KWSStudentUpstream(KWSStudent(config_for("small")))) == 16.0  # 1.6 M
    tiny = MelHubertConfig(num_layers=2, hidden_size=64, ffn_size=128, num_heads=2, pos_conv_groups=2)
    assert cpu_batch_seconds_of(MelHubertUpstream(MelHubert(tiny))) == 16.0
    big = MelHubertUpstream(MelHubert(MelHubertConfig()))  # Base shape, ~90 M
    assert cpu_batch_seconds_of(big) is None
    assert cpu_batch_seconds_of(load_upstream(tiny_hf_dir(tmp_path / "m", kind="hubert"))) is None  # waveform CNN
    assert cpu_batch_seconds_of(load_upstream("fbank")) is None


def test_batched_plan_gives_the_one_by_one_features_in_manifest_order(tmp_path, manifest):
    """Length-sorted padded batches (the CUDA plan, forced here on CPU) with a group-norm CNN give
    the features of the one-utterance plan; the feature cache lists ids in manifest order."""
    from s3kit.eval.embed import utterance_embeddings
    from s3kit.eval.features_cache import extract_features

    path, cuts = manifest
    up = load_upstream(tiny_hf_dir(tmp_path / "m", kind="hubert", norm="group"))
    one = extract(up, path, tmp_path / "one", ExtractConfig(pool="none", dtype="float32"), progress=False)
    many = extract(up, path, tmp_path / "many", ExtractConfig(pool="none", dtype="float32", max_cuts=8,
                                                              max_duration=10.0), progress=False)
    assert len((many / "index.jsonl").read_text().splitlines()) == 1
    a, b = load_features(one), load_features(many)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=0)
    cache = extract_features(up, cuts, tmp_path / "cache", pooled=True, progress=False)
    assert cache.ids == [c.id for c in cuts]
    emb = utterance_embeddings(up, cuts, device="cpu", progress=False)
    for row, c in enumerate(cuts):
        torch.testing.assert_close(torch.from_numpy(emb[row]), a[c.id].mean(1), atol=1e-4, rtol=0)
