"""KWS evaluation: FAR at fixed FRR on hand-made scores, fine-tune -> evaluate -> ONNX end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from s3kit.eval.kws import (
    baseline_frr,
    det_curve,
    detection_at,
    far_at_frr,
    frr_far,
    relative_far,
    threshold_at_frr,
)

POS = np.array([0.9, 0.8, 0.7, 0.4, 0.2])
NEG = np.array([0.85, 0.6, 0.5, 0.3, 0.1, 0.05])
SCORES = np.concatenate([POS, NEG])
IS_POS = np.array([True] * 5 + [False] * 6)


@pytest.mark.parametrize("max_frr,th,frr,far", [
    (0.0, 0.2, 0.0, 4 / 6),  # keep every positive: threshold = lowest positive
    (0.2, 0.4, 0.2, 3 / 6),  # one miss allowed: threshold = 2nd lowest positive
    (0.3, 0.4, 0.2, 3 / 6),  # floor(0.3 * 5) = 1 miss
    (0.4, 0.7, 0.4, 1 / 6),
    (1.0, math.inf, 1.0, 0.0),  # reject everything
])
def test_far_at_frr_hand_made(max_frr, th, frr, far):
    assert threshold_at_frr(SCORES, IS_POS, max_frr) == th
    got_far, got_frr, got_th = far_at_frr(SCORES, IS_POS, max_frr)
    assert (got_far, got_frr, got_th) == pytest.approx((far, frr, th))


def test_frr_far_and_det_curve():
    assert frr_far(SCORES, IS_POS, 0.5) == pytest.approx((2 / 5, 3 / 6))  # accept when score >= θ
    th, frr, far = det_curve(SCORES, IS_POS, np.array([0.0, 0.5, 0.85, np.inf]))
    np.testing.assert_allclose(frr, [0, 2 / 5, 4 / 5, 1])
    np.testing.assert_allclose(far, [1, 3 / 6, 1 / 6, 0])
    th, frr, far = det_curve(SCORES, IS_POS)
    assert np.all(np.diff(frr) >= 0) and np.all(np.diff(far) <= 0)
    with pytest.raises(ValueError, match="positives and negatives"):
        frr_far(POS, np.ones(5, bool), 0.5)


def test_relative_far_at_baseline_frr():
    classes = ["yes", "no", "_unknown_"]
    labels = np.array([0, 0, 1, 1, 2, 2])
    base = np.zeros((6, 3))
    base[:, 0] = [0.9, 0.45, 0.6, 0.2, 0.5, 0.1]
    base[:, 1] = [0.05, 0.3, 0.8, 0.35, 0.4, 0.1]
    better = base.copy()
    better[:, 0] = [0.9, 0.7, 0.75, 0.2, 0.5, 0.1]
    better[:, 1] = [0.05, 0.3, 0.8, 0.6, 0.4, 0.1]
    op = baseline_frr(base, labels, classes, threshold=0.4)
    # yes: positives 0.9, 0.45 both >= 0.4 -> FRR 0; no: 0.8 kept, 0.35 rejected -> FRR 1/2
    assert op == {"yes": 0.0, "no": 0.5}  # _unknown_ is never detected
    b = detection_at(base, labels, classes, op)
    # yes at FRR <= 0: θ = 0.45, negatives 0.6, 0.5 accepted -> 2/4; no at FRR <= 1/2: θ = 0.8 -> 0
    assert b.per_keyword["yes"]["far"] == 0.5 and b.per_keyword["no"]["far"] == 0.0 and b.far == 0.25
    g = detection_at(better, labels, classes, op)
    # yes: θ = 0.7, negative 0.75 accepted -> 1/4; no: θ = 0.8 -> 0; mean 0.125
    assert g.far == 0.125 and relative_far(g.far, b.far) == 0.5 and relative_far(b.far, b.far) == 1.0
    assert all(g.per_keyword[k]["frr"] <= op[k] for k in op)
    # the operating point can also be a target FRR
    assert baseline_frr(base, labels, classes, target_frr=0.5) == {"yes": 0.5, "no": 0.5}
    assert math.isnan(relative_far(0.1, 0.0))


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def kws_run(tmp_path_factory):
    """A tiny student (no KD), fine-tuned for a few steps on 3-class tones."""
    from s3kit.eval.kws import FinetuneConfig, finetune
    from s3kit.methods.dvcc import DVCCConfig, distill_dvcc
    from s3kit.testing import tone_cuts, write_wav
    from s3kit.train.trainer import TrainConfig

    root = tmp_path_factory.mktemp("kws")
    cuts = tone_cuts(root / "audio", n=18, classes=3, seconds=(0.5, 0.9), seed=1)
    cuts = cuts.map(_relabel).to_eager()
    train, test = cuts.subset(first=12), cuts.filter(lambda c: int(c.id[3:]) >= 12).to_eager()
    from lhotse import CutSet, Recording

    noise_path = write_wav(root / "noise" / "n0.wav", (0.2 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32))
    noise = CutSet.from_cuts([Recording.from_file(noise_path).to_cut()])
    stu = distill_dvcc(None, train, DVCCConfig(student="tiny", loss="none", codebook="none",
                                               train=TrainConfig(out_dir=str(root / "stu"))))
    runs = {}
    for name, steps in (("baseline", 2), ("longer", 25)):
        cfg = FinetuneConfig(batch_size=12, train=TrainConfig(out_dir=str(root / name), total_steps=steps, lr=3e-3,
                                                               warmup=0, progress=False, save_every=steps))
        runs[name] = finetune(stu.checkpoint, train, cfg).checkpoint
    return root, runs, test, noise


def _relabel(cut):
    names = {"class0": "yes", "class1": "no", "class2": "_unknown_"}
    cut.supervisions[0].custom["keyword"] = names[cut.supervisions[0].custom["keyword"]]
    return cut


def test_finetune_evaluate_table(kws_run):
    from s3kit.eval.kws import evaluate

    root, runs, test, noise = kws_run
    res = evaluate(runs, test, noise, baseline="baseline", out_dir=root / "eval")
    assert res["models"]["baseline"]["normal"]["relative_far"] == pytest.approx(1.0) or \
        math.isnan(res["models"]["baseline"]["normal"]["relative_far"])
    assert set(res["models"]["longer"]) >= {"normal", "playback", "params"}
    assert res["models"]["longer"]["normal"]["accuracy"] >= 0.5  # 3 tone classes, chance 1/3
    table = (root / "eval" / "table.md").read_text()
    assert "| Method | Model Size | Rel. FAR Normal | Rel. FAR Playback" in table and "| longer |" in table
    assert (root / "eval" / "det.png").stat().st_size > 1000
    assert json.loads((root / "eval" / "results.json").read_text())["baseline"] == "baseline"


def test_onnx_export_parity_and_int8(kws_run, tmp_path):
    from s3kit.eval.kws import export_onnx, onnx_accuracy

    root, runs, test, _ = kws_run
    info = export_onnx(runs["longer"], tmp_path / "onnx")
    print(f"\nONNX fp32 max |diff| {info['max_abs_diff_fp32']:.2e}, int8 {info['max_abs_diff_int8']:.2e}; "
          f"sizes {info['onnx_bytes']} / {info['onnx_int8_bytes']} bytes")
    assert info["max_abs_diff_fp32"] < 1e-4
    assert info["max_abs_diff_int8"] < 0.2
    acc32 = onnx_accuracy(info["onnx"], runs["longer"], test)
    acc8 = onnx_accuracy(info["onnx_int8"], runs["longer"], test)
    assert acc32["agreement"] == 1.0 and acc32["accuracy_onnx"] == acc32["accuracy_torch"]
    assert abs(acc8["accuracy_onnx"] - acc8["accuracy_torch"]) <= 1 / acc8["n"] + 1e-9  # within one utterance
    # dynamic time axis: a 2.5 s input runs
    import onnxruntime as ort

    sess = ort.InferenceSession(info["onnx"], providers=["CPUExecutionProvider"])
    out = sess.run(None, {"fbank": np.random.randn(2, 250, 64).astype(np.float32)})[0]
    assert out.shape == (2, 3) and np.allclose(out.sum(1), 1, atol=1e-5)


def test_finetune_rejects_unknown_label(kws_run):
    from s3kit.eval.kws import KWSClassifier, KWSFinetune
    from s3kit.models.kws_student import KWSStudent, config_for

    _, _, test, _ = kws_run
    m = KWSFinetune(KWSClassifier(KWSStudent(config_for("tiny")), 2), ["yes", "no"])
    with pytest.raises(ValueError, match="not one of the training classes"):
        m.targets(list(test), torch.device("cpu"))


def test_cli_distill_dvcc_finetune_export(kws_run, tmp_path, capsys):
    import argparse

    from s3kit.cli import main
    from s3kit.commands.kws import register_dvcc
    from s3kit.data.manifest import save_cuts

    root, runs, test, _ = kws_run
    manifest = save_cuts(test, tmp_path / "test.jsonl.gz")
    # `s3kit distill dvcc` as the distill command will host it
    parser = argparse.ArgumentParser()
    register_dvcc(parser.add_subparsers(dest="method"))
    args = parser.parse_args(["dvcc", "--manifest", str(manifest), "--out", str(tmp_path / "d"),
                              "student=tiny", "loss=none", "codebook=none"])
    assert args.func(args) == 0
    student = tmp_path / "d" / "student"
    assert (student / "model.safetensors").exists()
    assert main(["kws", "finetune", "--student", str(student), "--manifest", str(manifest), "--out",
                 str(tmp_path / "f"), "batch_size=8", "train.total_steps=1", "train.progress=false"]) == 0
    ckpt = next((tmp_path / "f" / "checkpoints").iterdir())
    assert main(["kws", "export", str(ckpt), str(tmp_path / "onnx"), "--test", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert '"max_abs_diff_fp32"' in out and '"accuracy_int8"' in out
    assert main(["kws", "evaluate", "--model", f"a={ckpt}", "--model", f"b={runs['longer']}", "--test",
                 str(manifest), "--out", str(tmp_path / "e"), "target_frr=null", "threshold=0.4"]) == 0
    assert "| b |" in capsys.readouterr().out


def test_table1_recipes_build():
    from pathlib import Path

    from s3kit.config import build
    from s3kit.eval.kws import TABLE1_ROWS, FinetuneConfig
    from s3kit.methods.dvcc import DVCCConfig

    root = Path(__file__).resolve().parents[1] / "recipes"
    rows = sorted(p for p in root.glob("kws_*.yaml") if p.stem != "kws_finetune")
    assert {p.stem for p in rows} == set(TABLE1_ROWS)
    cfgs = {p.stem: build(DVCCConfig, p) for p in rows}
    assert (cfgs["kws_combined_large"].loss, cfgs["kws_combined_large"].codebook) == ("dvcc", "teacher")
    assert cfgs["kws_combined_large"] == DVCCConfig()  # the defaults are the paper's combined row
    assert not cfgs["kws_baseline"].distills and cfgs["kws_combined_small"].student == "small"
    assert build(FinetuneConfig, root / "kws_finetune.yaml").batch_size == 2048


def test_bootstrap_detection_paired_intervals():
    from s3kit.eval.kws import KWSEvalConfig, bootstrap_detection

    rng = np.random.default_rng(0)
    classes = ["yes", "no", "_unknown_"]
    labels = np.repeat([0, 1, 2], 60)
    base = rng.uniform(0, 1, (180, 3))
    base[np.arange(180), labels] += 0.5  # positives score higher
    better = base.copy()
    neg = np.ones_like(better, dtype=bool)
    neg[np.arange(180), labels] = False
    better[neg] *= 0.5  # every negative scores half: fewer false accepts at any threshold
    cfg = KWSEvalConfig(target_frr=0.1, bootstrap=300)
    out = bootstrap_detection({"base": (base, labels), "same": (base.copy(), labels), "better": (better, labels)},
                              classes, "base", cfg)
    assert out["same"]["relative_far_ci"] == [1.0, 1.0] and out["same"]["p_far"] == 1.0  # paired: identical draws
    assert out["base"]["far_ci"] == out["same"]["far_ci"]
    assert out["better"]["relative_far_ci"][1] < 1.0 and out["better"]["p_far"] < 0.01
    lo, hi = out["base"]["far_ci"]
    assert 0.0 < lo < hi < 1.0 and out["base"]["replicates"] == 300
    with pytest.raises(ValueError, match="same test utterances"):
        bootstrap_detection({"base": (base, labels), "other": (base, labels[::-1])}, classes, "base", cfg)


def test_table_cli_takes_eval_settings(monkeypatch, tmp_path):
    from s3kit.cli import build_parser
    from s3kit.eval import kws as kws_eval

    seen = {}
    monkeypatch.setattr(kws_eval, "run_table", lambda *a, **k: seen.update(k) or (tmp_path / "table.md").write_text("t"))
    args = build_parser().parse_args(["kws", "table", "--recipes", "r.yaml", "--teacher", "t", "--train", "a",
                                      "--test", "b", "--out", str(tmp_path), "--eval-overrides", "target_frr=0.05",
                                      "snr_db=0", "bootstrap=50"])
    assert args.func(args) == 0
    assert (seen["cfg"].target_frr, seen["cfg"].snr_db, seen["cfg"].bootstrap) == (0.05, 0.0, 50)


def test_noise_augmentation_mixes_training_clips_at_the_drawn_snr_and_leaves_evaluation_clean():
    """FinetuneConfig's noise augmentation: with noise_prob 1 every row's valid samples get noise at
    an SNR inside noise_snr (measured back from the mixture), padding stays zero; with noise_prob
    0, or in eval mode, the clips are untouched; out-of-range options are refused."""
    from types import SimpleNamespace

    from s3kit.eval.kws import FinetuneConfig, KWSClassifier, KWSFinetune
    from s3kit.models.kws_student import KWSStudent, config_for

    rng = np.random.default_rng(0)
    noise = [rng.standard_normal(4000).astype(np.float32)]
    wavs = torch.zeros(3, 1600)
    lengths = torch.tensor([1600, 1200, 800])
    for b, n in enumerate(lengths.tolist()):
        wavs[b, :n] = torch.sin(torch.arange(n) * 0.05 * (b + 1))
    clf = KWSClassifier(KWSStudent(config_for("tiny")), 2)
    m = KWSFinetune(clf, ["yes", "no"], FinetuneConfig(noise_prob=1.0, noise_snr=(5.0, 10.0)), noise)
    out = m.augment(wavs, lengths)
    for b, n in enumerate(lengths.tolist()):
        added = out[b, :n] - wavs[b, :n]
        snr = 10 * math.log10(float(wavs[b, :n].pow(2).mean() / added.pow(2).mean()))
        assert 5.0 - 1e-3 <= snr <= 10.0 + 1e-3
        assert torch.all(out[b, n:] == 0)
    off = KWSFinetune(clf, ["yes", "no"], FinetuneConfig(noise_prob=0.0), noise)
    assert torch.equal(off.augment(wavs, lengths), wavs)
    seen = []
    m.classifier.forward_wav = lambda w, lens: (seen.append(w), torch.zeros(len(w), 2))[1]
    batch = SimpleNamespace(wavs=wavs, lengths=lengths, cuts=[])
    m.targets = lambda cuts, device: torch.zeros(3, dtype=torch.long)
    m.eval()
    m.step(batch)
    m.train()
    m.step(batch)
    assert torch.equal(seen[0], wavs) and not torch.equal(seen[1], wavs)
    with pytest.raises(ValueError, match="noise_prob"):
        FinetuneConfig(noise_prob=1.5)
    with pytest.raises(ValueError, match="noise_snr"):
        FinetuneConfig(noise_snr=(10.0, 0.0))
