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


def test_extract_matches_direct_run_and_resumes(tmp_path, manifest):
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
    assert len(after - before) == 1
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
