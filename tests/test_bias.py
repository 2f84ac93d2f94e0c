import json

import numpy as np
import pytest
import torch

from s3kit.eval.bias import bias, load_stimuli, parse_tests, stimulus_sets
from s3kit.eval.embed import utterance_embeddings
from s3kit.testing import sine, tiny_hf_dir, write_wav
from s3kit.upstream.base import Hidden, Upstream, full_lengths


class FrameEnergy(Upstream):
    """Fake upstream: 2 'layers' of 100 Hz frames; layer 0 = [mean, 1], layer 1 = [rms, id-ish]."""

    name = "frame-energy"
    frame_rate = 100.0
    hidden_sizes = [2, 2]

    def num_frames(self, lengths):
        return lengths // 160

    def forward(self, wavs, lengths=None):
        lengths = full_lengths(wavs, lengths)
        T = wavs.shape[1] // 160
        frames = wavs[:, : T * 160].reshape(len(wavs), T, 160)
        s0 = torch.stack([frames.mean(-1), torch.ones_like(frames[..., 0])], -1)
        s1 = torch.stack([frames.pow(2).mean(-1).sqrt(), torch.arange(T, dtype=wavs.dtype).expand(len(wavs), T)], -1)
        return Hidden([s0, s1], self.num_frames(lengths), self.frame_rate)


def _stimuli(tmp_path, n=6, balanced=False):
    """CSV stimulus set: gender targets differ in pitch, positive valence shares the female pitch.
    ``balanced``: both target groups alternate between the two pitches (no association to find)."""
    rows = ["path,concept,group"]
    rng = np.random.default_rng(0)
    spec = [("gender", "female", 300), ("gender", "male", 120), ("valence", "positive", 300), ("valence", "negative", 120)]
    for concept, group, f0 in spec:
        for i in range(n):
            if balanced and concept == "gender":
                f0 = (300, 120)[i % 2]
            wav = sine(f0 * rng.uniform(0.95, 1.05), seconds=rng.uniform(0.5, 0.9), amplitude=0.3)
            wav = wav + 0.01 * rng.normal(size=wav.shape).astype(np.float32)
            write_wav(tmp_path / "wav" / f"{group}{i}.wav", wav)
            rows.append(f"wav/{group}{i}.wav,{concept},{group}")
    # a row for a test we did not ask for, and a young/old pair of only one item each
    write_wav(tmp_path / "wav" / "young0.wav", sine(200, 0.5))
    rows.append("wav/young0.wav,age,young")
    (tmp_path / "speat.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "speat.csv"


def test_stimulus_sets_and_csv(tmp_path):
    cuts = load_stimuli(_stimuli(tmp_path))
    targets, A, B = stimulus_sets(cuts, parse_tests("gender,age"))
    assert [len(v) for v in targets["gender"]] == [6, 6] and len(A) == 6 and len(B) == 6
    assert [len(v) for v in targets["age"]] == [1, 0]
    (tmp_path / "bad.csv").write_text("file,concept\nx.wav,a\n")
    with pytest.raises(ValueError, match="bad.csv:1"):
        load_stimuli(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="unknown bias test"):
        parse_tests("gendr")


def test_role_labels_and_directory_of_csvs(tmp_path):
    # Recipe-style CSVs: concept names the clip, group its SpEAT role; two CSVs share a clip.
    for name in ("us", "kr", "p", "n", "x"):
        write_wav(tmp_path / f"{name}.wav", sine(200, 0.3))
    (tmp_path / "native.csv").write_text("path,concept,group\nus.wav,US,target_x\nkr.wav,Korean,target_y\n"
                                         "p.wav,pleasant,attribute_a\nn.wav,unpleasant,attribute_b\n")
    (tmp_path / "other.csv").write_text("path,concept,group\nus.wav,abled,target_x\nx.wav,disabled,target_y\n")
    cuts = load_stimuli(tmp_path)
    assert len(cuts) == 6 and len(set(cuts.ids)) == 6
    targets, A, B = stimulus_sets(cuts, parse_tests("gender,native"))
    ids = list(cuts.ids)
    assert [ids[i] for i in targets["native"][0]] == ["native:us"] and len(A) == len(B) == 1
    assert [ids[i] for i in targets["roles"][0]] == ["other:us"]  # unclaimed role targets
    assert targets["gender"] == ([], [])
    custom, _, _ = stimulus_sets(cuts, parse_tests("ability=abled/disabled"))
    assert [len(v) for v in custom["ability"]] == [1, 1] and "roles" in custom  # US/Korean unclaimed


def test_utterance_embeddings_order_and_pooling(tmp_path):
    cuts = load_stimuli(_stimuli(tmp_path, n=3))
    emb = utterance_embeddings(FrameEnergy(), cuts, max_duration=1.5, device="cpu", progress=False)
    assert emb.shape == (len(cuts), 2, 2)
    for i, cut in enumerate(cuts):  # rows follow the manifest whatever the batching
        wav = cut.load_audio()[0]
        T = len(wav) // 160
        frames = wav[: T * 160].reshape(T, 160)
        np.testing.assert_allclose(emb[i, 0], [frames.mean(), 1.0], atol=1e-5)
        np.testing.assert_allclose(emb[i, 1], [np.sqrt((frames**2).mean(1)).mean(), (T - 1) / 2], rtol=1e-4)


def test_bias_command_tiny_hubert(tmp_path):
    from s3kit.cli import main

    stimuli = _stimuli(tmp_path)
    model = tiny_hf_dir(tmp_path / "tiny", layers=2, hidden=32)
    out = tmp_path / "out"
    rc = main(["bias", "--upstream", str(model), "--stimuli", str(stimuli), "--out", str(out), "--tests", "gender,age",
               "--n-permutations", "2000", "--n-bootstrap", "200", "--layer-permutations", "500",
               "--layer-bootstrap", "0", "--device", "cpu", "--tsne"])
    assert rc == 0
    report = json.loads((out / "bias.json").read_text())
    up = report["upstreams"][0]
    assert list(up["results"]) == ["gender"] and "age" in report["skipped"][0]
    agg = up["results"]["gender"]["aggregate"]
    assert len(up["results"]["gender"]["per_layer"]) == up["num_layers"] == 3
    assert agg["exact"] and agg["n_permutations"] == 924  # C(12, 6) <= 2000: enumerated
    assert agg["ci_low"] <= agg["d"] <= agg["ci_high"]
    # Planted: the female targets share pitch with the positive stimuli.
    assert agg["d"] > 0.8 and agg["p_value"] < 0.05
    assert up["results"]["gender"]["per_layer"][0]["ci_low"] is None  # no per-layer bootstrap -> null
    assert np.isfinite(up["isotropy"]["log10_isotropy"]) and up["isotropy"]["log10_isotropy"] <= 0
    # one headline test: Holm p = p; per layer, Holm over the table's 3 tests
    from s3kit.eval.stats import holm

    assert agg["p_holm"] == agg["p_value"]
    layers = up["results"]["gender"]["per_layer"]
    assert [r["p_holm"] for r in layers] == pytest.approx(holm([r["p_value"] for r in layers]))
    src = agg["ci_by_resample"]
    assert src["both"] == [agg["ci_low"], agg["ci_high"]] and src["targets"][0] <= agg["d"] <= src["targets"][1]
    md = (out / "bias.md").read_text()
    assert "| upstream | gender: d [CI] (p, Holm p) | log10 IS |" in md and "d per layer" in md
    assert "Where the uncertainty of d comes from" in md and "Holm p=" in md
    for png in ("d_per_layer.png", "tsne_tiny.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_balanced_stimuli_show_no_bias_and_a_planted_one_shows(tmp_path):
    kw = dict(tests="gender", n_permutations=2000, n_bootstrap=1000, layer_permutations=200, layer_bootstrap=0,
              device="cpu")
    planted = bias(["mfcc"], _stimuli(tmp_path / "p"), tmp_path / "po", **kw)["upstreams"][0]["results"]["gender"]
    balanced = bias(["mfcc"], _stimuli(tmp_path / "b", balanced=True), tmp_path / "bo", **kw)
    b = balanced["upstreams"][0]["results"]["gender"]["aggregate"]
    a = planted["aggregate"]
    assert a["p_holm"] < 0.05 and a["ci_low"] > 0  # detected: small adjusted p, interval above 0
    assert b["p_holm"] > 0.05 and b["ci_low"] < 0 < b["ci_high"]  # not detected
    assert "n.s." in (tmp_path / "bo" / "bias.md").read_text()


def test_bias_errors_without_attributes(tmp_path):
    write_wav(tmp_path / "a.wav", sine(200, 0.5))
    (tmp_path / "s.csv").write_text("path,concept,group\na.wav,gender,female\n")
    with pytest.raises(ValueError, match="positive and negative attribute"):
        bias(["unused"], tmp_path / "s.csv", tmp_path / "out")


def test_upstreams_compared_with_the_reference_on_the_same_stimuli(tmp_path):
    from s3kit.eval.stats import holm

    stimuli = _stimuli(tmp_path)
    kw = dict(tests="gender", n_permutations=500, n_bootstrap=500, layer_permutations=100, layer_bootstrap=0,
              device="cpu")
    report = bias(["mfcc", "mfcc", "fbank"], stimuli, tmp_path / "out", names=["a", "a_again", "f"], reference="a", **kw)
    comps = {c["upstream"]: c for c in report["comparisons"]}
    assert set(comps) == {"a_again", "f"} and all(c["reference"] == "a" for c in comps.values())
    same = comps["a_again"]  # the same model twice: no difference, p = 1
    assert same["diff"] == 0 and same["ci_low"] == same["ci_high"] == 0 and same["p"] == 1.0
    d = {u["name"]: u["results"]["gender"]["aggregate"]["d"] for u in report["upstreams"]}
    assert comps["f"]["diff"] == pytest.approx(d["f"] - d["a"])
    assert [comps["a_again"]["p_holm"], comps["f"]["p_holm"]] == pytest.approx(holm([same["p"], comps["f"]["p"]]))
    assert "## Each upstream against a" in (tmp_path / "out" / "bias.md").read_text()
    with pytest.raises(ValueError, match="reference 'zzz'"):
        bias(["mfcc"], stimuli, tmp_path / "out2", reference="zzz", **kw)
