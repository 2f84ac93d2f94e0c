"""SUPERB-style probing on toy tone corpora built here (no downloads, seconds of audio)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from s3kit.eval.features_cache import CachedFeatures, extract_features
from s3kit.eval.heads import WeightedSum, ProbeModel, UtteranceHead
from s3kit.eval.probe import ProbeConfig, chance_accuracy, results_table, run_probe, summary_table, write_results
from s3kit.testing import tiny_hf_dir, write_wav
from s3kit.upstream import load_upstream

SR = 16000
FREQS = {"up": 300.0, "down": 700.0, "left": 1500.0, "right": 3100.0}
PHONES = {"aa": 400.0, "iy": 1000.0, "s": 2600.0}


def _cuts(items, root: Path):
    """items: (id, wav, label dict) -> CutSet with labels on the first supervision."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    recs, sups = [], []
    for cid, wav, labels in items:
        path = write_wav(root / f"{cid}.wav", wav)
        rec = Recording.from_file(path, recording_id=cid)
        recs.append(rec)
        native = {k: labels.pop(k) for k in ("speaker", "text") if k in labels}
        sups.append(SupervisionSegment(id=cid, recording_id=cid, start=0.0, duration=rec.duration, custom=labels, **native))
    return CutSet.from_manifests(recordings=RecordingSet.from_recordings(recs), supervisions=SupervisionSet.from_segments(sups))


def _tone(freq, seconds, rng):
    t = np.arange(int(seconds * SR)) / SR
    f = freq * rng.uniform(0.93, 1.07)
    wav = rng.uniform(0.2, 0.6) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) + 0.02 * rng.standard_normal(len(t))
    return wav.astype(np.float32)


def tone_splits(root: Path, per_class=(12, 4, 6), seed=0):
    """KS-like toy set: the keyword is the tone frequency."""
    rng = np.random.default_rng(seed)
    out = []
    for split, n in zip(("train", "dev", "test"), per_class):
        items = [(f"{split}-{w}-{i}", _tone(f, rng.uniform(0.3, 0.6), rng), {"keyword": w, "speaker": f"spk{i % 3}"})
                 for w, f in FREQS.items() for i in range(n)]
        out.append(_cuts(items, root / split))
    return out


def phone_splits(root: Path, sizes=(48, 8, 8), seed=0):
    """PR-like toy set: each "phone" is a 80-120 ms tone, 2-4 phones per utterance."""
    rng = np.random.default_rng(seed)
    names = list(PHONES)
    out = []
    for split, n in zip(("train", "dev", "test"), sizes):
        items = []
        for i in range(n):
            seq = [names[j] for j in rng.integers(0, len(names), rng.integers(2, 5))]
            wav = np.concatenate([_tone(PHONES[p], rng.uniform(0.08, 0.12), rng) for p in seq])
            items.append((f"{split}-{i}", wav, {"phones": " ".join(seq), "text": " ".join(seq)}))
        out.append(_cuts(items, root / split))
    return out


# tiny probes on a shared 2-core box: intra-op threads only add contention (4 s vs 12 s for the ASR test)
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return tone_splits(tmp_path_factory.mktemp("tones"))


@pytest.fixture(scope="module")
def small_tones(tmp_path_factory):
    return tone_splits(tmp_path_factory.mktemp("small_tones"), per_class=(6, 2, 2), seed=1)


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    return load_upstream(tiny_hf_dir(tmp_path_factory.mktemp("hubert"), layers=2, hidden=32))


def test_layer_weights_receive_gradients():
    model = ProbeModel(WeightedSum(3), UtteranceHead(8, 4, proj_dim=16))
    states = torch.randn(5, 3, 8)
    loss = torch.nn.functional.cross_entropy(model(states), torch.tensor([0, 1, 2, 3, 0]))
    loss.backward()
    assert model.featurizer.weights.grad is not None
    assert model.featurizer.weights.grad.abs().sum() > 0
    # zero init = uniform average (s3prl Featurizer)
    assert torch.allclose(model.featurizer.normalized(), torch.full((3,), 1 / 3))


def test_weighted_sum_commutes_with_mean_pooling():
    # why the pooled cache is exact: sum_l w_l mean_t h = mean_t sum_l w_l h
    ws = WeightedSum(4)
    with torch.no_grad():
        ws.weights.copy_(torch.randn(4))
    frames = torch.randn(2, 4, 7, 5)  # (B, L, T, D)
    assert torch.allclose(ws(frames).mean(1), ws(frames.mean(2)), atol=1e-6)
    fixed = WeightedSum(4, layer=2)
    assert torch.equal(fixed(frames), frames[:, 2])


def test_mfcc_probe_beats_chance(tones, tmp_path):
    train, dev, test = tones
    cfg = ProbeConfig(lr=1e-2, max_updates=150, eval_every=25, cache_dir=str(tmp_path / "cache"),
                      checkpoint_dir=str(tmp_path / "ckpt"), progress=False)
    result = run_probe("mfcc", "ks", train, dev, test, cfg)
    chance = chance_accuracy(train, "ks")
    assert chance == pytest.approx(0.25)
    assert result.test > chance + 0.3, result
    assert result.metric == "accuracy" and 0 < result.updates_to_best <= 150
    best = max(c[1] for c in result.curve)
    assert result.dev == best and result.updates_to_best == next(u for u, v in result.curve if v == best)
    assert (Path(cfg.checkpoint_dir) / "ks-frac1-lr0.01-seed0" / "model.safetensors").exists()
    paths = write_results([result], tmp_path / "out")
    assert "| ks | mfcc | accuracy" in paths["markdown"].read_text()
    assert not any(k.startswith("layer_weights") for k in paths)  # MFCC has one state: nothing to plot


def test_frozen_upstream_unchanged_and_weights_learned(small_tones, tiny_hubert, tmp_path):
    train, dev, test = small_tones
    before = {k: v.clone() for k, v in tiny_hubert.state_dict().items()}
    cfg = ProbeConfig(lr=1e-2, max_updates=60, eval_every=20, cache_dir=str(tmp_path / "cache"), progress=False)
    result = run_probe(tiny_hubert, "ks", train, dev, test, cfg)
    after = tiny_hubert.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(result.layer_weights) == tiny_hubert.num_layers == 3
    assert sum(result.layer_weights) == pytest.approx(1.0)
    assert max(abs(w - 1 / 3) for w in result.layer_weights) > 1e-4  # the weights moved off uniform
    assert result.test > 0.25
    paths = write_results([result], tmp_path / "out")
    assert paths["layer_weights_ks.png"].stat().st_size > 1000


def test_feature_cache_is_reused_and_fp16(small_tones, tiny_hubert, tmp_path):
    train = small_tones[0]
    first = extract_features(tiny_hubert, train, tmp_path, pooled=True, progress=False)
    stamp = (first.directory / "index.json").stat().st_mtime_ns
    second = extract_features(tiny_hubert, train, tmp_path, pooled=True, progress=False)
    assert second.directory == first.directory and (second.directory / "index.json").stat().st_mtime_ns == stamp
    frames = extract_features(tiny_hubert, train, tmp_path, pooled=False, layers=[0, 2], progress=False)
    assert frames.directory != first.directory
    cut = next(iter(train))
    stored = frames._handles[frames._shard_of[cut.id]].get_tensor(cut.id)
    assert stored.dtype == torch.float16 and stored.shape[0] == 2
    # pooled cache == time average of the frame cache (up to fp16 rounding)
    assert torch.allclose(first.get(cut.id)[[0, 2]], frames.get(cut.id).mean(1), atol=2e-2)
    # matches a direct upstream run
    wav = torch.from_numpy(cut.load_audio()[0]).float()[None]
    with torch.no_grad():
        h = tiny_hubert(wav, torch.tensor([wav.shape[1]]))
    assert torch.allclose(frames.get(cut.id)[1], h.states[2][0], atol=1e-2)
    assert isinstance(CachedFeatures(frames.directory), CachedFeatures)


def test_pr_per_drops_during_training(tmp_path):
    train, dev, test = phone_splits(tmp_path / "data", sizes=(48, 16, 16))
    cfg = ProbeConfig(lr=1e-3, max_updates=80, eval_every=10, cache_dir=str(tmp_path / "cache"), progress=False)
    result = run_probe("mfcc", "pr", train, dev, test, cfg)
    first, best = result.curve[0][1], min(c[1] for c in result.curve)
    assert result.metric == "per" and not result.higher_is_better
    assert best < first - 0.2, result.curve
    assert result.test < 0.3, result.test
    assert result.dev == best


def test_asr_blstm_runs_and_reports_wer(tmp_path):
    train, dev, test = phone_splits(tmp_path / "data", sizes=(16, 4, 4))
    cfg = ProbeConfig(lr=1e-3, max_updates=10, eval_every=5, lstm_hidden=16, cache_dir=str(tmp_path / "cache"),
                      progress=False)
    result = run_probe("mfcc", "asr", train, dev, test, cfg)
    assert result.metric == "wer" and len(result.curve) == 2 and result.test >= 0.0


def test_fraction_and_lr_sweep(tones, tmp_path):
    train, dev, test = tones
    cfg = ProbeConfig(fraction=0.25, max_updates=20, eval_every=10, lr_sweep=True, lr_grid=[1e-1, 1e-4],
                      cache_dir=str(tmp_path / "cache"), progress=False)
    result = run_probe("mfcc", "ks", train, dev, test, cfg)
    assert result.num_train == 12  # 25 % of 48, 3 per class
    # fractions reuse the full-train feature cache: one entry per split (train, dev, test), not per fraction
    run_probe("mfcc", "ks", train, dev, test, dataclasses.replace(cfg, fraction=0.5, lr_sweep=False))
    assert len(list((tmp_path / "cache").glob("*/index.json"))) == 3
    assert [s["lr"] for s in result.sweep] == [1e-1, 1e-4]
    assert result.dev == max(s["dev"] for s in result.sweep)
    assert "| ks |" in results_table([result])
    other = dataclasses.replace(result, seed=1, test=result.test - 0.1)
    # two seeds: mean, and mean ± t_{0.975, 1} * sd / sqrt(2) with sd = 0.1 / sqrt(2), i.e. ± 12.706 * 0.05,
    # clipped to an accuracy's range [0, 1]
    mean = result.test - 0.05
    row = f"| ks | mfcc | 0.25 | {mean:.3f} [{max(0, mean - 0.6353):.3f}, {min(1, mean + 0.6353):.3f}], 2 seeds |"
    assert row in summary_table([result, other])


def test_intent_needs_all_slots(tmp_path):
    rng = np.random.default_rng(1)
    acts = {"increase": 500.0, "decrease": 2500.0}
    locs = {"kitchen": 0.3, "bedroom": 0.6}  # location = duration
    out = []
    for split, n in (("train", 8), ("dev", 3), ("test", 3)):
        items = [(f"{split}-{a}-{l}-{i}", _tone(f, d, rng), {"intent": {"action": a, "object": "heat", "location": l}})
                 for a, f in acts.items() for l, d in locs.items() for i in range(n)]
        out.append(_cuts(items, tmp_path / split))
    cfg = ProbeConfig(lr=1e-2, max_updates=40, eval_every=20, cache_dir=str(tmp_path / "cache"), progress=False)
    result = run_probe("mfcc", "ic", *out, cfg)
    assert 0.0 <= result.test <= 1.0 and result.metric == "accuracy"


def test_bad_labels_name_the_cut(tones, tmp_path):
    train, dev, test = tones
    with pytest.raises(ValueError, match="has no 'emotion' label"):
        run_probe("mfcc", "er", train, dev, test, ProbeConfig(cache_dir=str(tmp_path), progress=False))
    with pytest.raises(ValueError, match="unknown task"):
        run_probe("mfcc", "kws", train, dev, test, ProbeConfig(cache_dir=str(tmp_path), progress=False))


def test_cli_probe_writes_results(tones, tmp_path):
    from s3kit.cli import main
    from s3kit.data.manifest import save_cuts

    for name, cuts in zip(("train", "dev", "test"), tones):
        save_cuts(cuts, tmp_path / "data" / "manifests" / f"tones_{name}.jsonl.gz")
    out = tmp_path / "out"
    rc = main(["probe", "--upstream", "mfcc", "--task", "ks", "--data", str(tmp_path / "data"), "--subset", "tones",
               "--out", str(out), "--lr", "1e-2", "--max-updates", "30", "--eval-every", "15",
               "--fraction", "0.5,1.0", "--seed", "0,1", "--cache-dir", str(tmp_path / "cache"), "progress=false"])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    rows = doc["runs"]
    assert [(r["fraction"], r["seed"]) for r in rows] == [(0.5, 0), (0.5, 1), (1.0, 0), (1.0, 1)]
    assert rows[0]["num_train"] == 24
    assert all(r["n"] == 24 and r["ci_low"] <= r["test"] <= r["ci_high"] for r in rows)
    # per fraction: the mean over the two seeds with its t interval, and each seed's own score
    from s3kit.eval.stats import seed_summary

    half = [g for g in doc["summary"] if g["fraction"] == 0.5][0]
    expect = seed_summary([rows[0]["test"], rows[1]["test"]])
    assert half["test"]["mean"] == pytest.approx(expect.mean) and [p["seed"] for p in half["per_seed"]] == [0, 1]
    assert half["test"]["ci_low"] == pytest.approx(expect.ci_low) and half["test"]["n"] == 2
    md = (out / "results.md").read_text()
    assert md.count("| ks | mfcc |") == 6 and "2 seeds" in md and ", n=24 |" in md
    assert (out / "checkpoints" / "ks-frac0.5-lr0.01-seed0" / "config.json").exists()
    # a missing subset is a clear one-line error, not a traceback
    assert main(["probe", "--upstream", "mfcc", "--task", "ks", "--data", str(tmp_path / "data"),
                 "--out", str(out)]) == 2


def test_per_item_predictions_give_the_score_its_interval_and_a_file(tones, tmp_path):
    import gzip

    from s3kit.eval.stats import wilson_ci

    train, dev, test = tones
    cfg = ProbeConfig(lr=1e-2, max_updates=60, eval_every=20, cache_dir=str(tmp_path / "cache"), progress=False)
    result = run_probe("mfcc", "ks", train, dev, test, cfg)
    items = result.predictions
    assert [i["id"] for i in items] == [c.id for c in test]
    assert all(i["correct"] == (i["reference"] == i["hypothesis"]) for i in items)
    k = sum(i["correct"] for i in items)
    assert result.test == pytest.approx(k / len(items)) and result.n == len(items) == 24
    assert (result.ci_low, result.ci_high) == pytest.approx(wilson_ci(k, 24))
    assert "predictions" not in result.to_dict()
    paths = write_results([result], tmp_path / "out")
    rows = [json.loads(line) for line in gzip.decompress(paths["predictions"].read_bytes()).decode().splitlines()]
    assert len(rows) == 24 and rows[0]["task"] == "ks" and rows[0]["upstream"] == "mfcc" and rows[0]["seed"] == 0


def test_pr_items_sum_to_the_corpus_per_and_compare_finds_a_planted_difference(tmp_path):
    from s3kit.eval import metrics
    from s3kit.eval.probe import compare_items, score_interval, score_items

    train, dev, test = phone_splits(tmp_path / "data", sizes=(24, 8, 8))
    cfg = ProbeConfig(lr=1e-3, max_updates=20, eval_every=10, cache_dir=str(tmp_path / "cache"), progress=False)
    items = run_probe("mfcc", "pr", train, dev, test, cfg).predictions
    refs, hyps = [i["reference"] for i in items], [i["hypothesis"] for i in items]
    assert score_items(items) == pytest.approx(metrics.per(refs, hyps))
    iv = score_interval(items)
    assert iv.ci_low <= iv.value <= iv.ci_high and iv.n == 8
    # a planted better system: every hypothesis replaced by the reference (0 errors)
    perfect = [{**i, "hypothesis": i["reference"], "errors": 0} for i in items]
    res = compare_items(items, perfect)
    assert res.diff == pytest.approx(score_items(items)) and res.ci_low > 0
    same = compare_items(items, [dict(i) for i in items])
    assert same.diff == 0 and same.p == 1.0
    with pytest.raises(ValueError, match="differs"):
        compare_items(items, [{**items[0], "id": "other"}] + items[1:])


def test_compare_accuracy_uses_mcnemar_and_orients_a_minus_b():
    from s3kit.eval.probe import compare_items
    from s3kit.eval.stats import mcnemar_exact

    a = [{"id": f"u{k}", "correct": k < 30} for k in range(40)]
    b = [{"id": f"u{k}", "correct": k < 10} for k in range(40)]
    res = compare_items(a, b)
    assert res.diff == pytest.approx(0.5) and res.rate_a == pytest.approx(0.75) and res.rate_b == pytest.approx(0.25)
    assert 0 < res.ci_low < 0.5 < res.ci_high
    assert res.p == pytest.approx(mcnemar_exact([i["correct"] for i in a], [i["correct"] for i in b]))


def test_frame_ctc_probe_skips_padding_with_the_same_loss_and_gradients():
    """The per-frame CTC head runs on the valid frames only: CTC loss and every gradient equal those
    of the head run on the whole padded batch; padded frames get zero logits."""
    from s3kit.eval.heads import FrameCTCHead, ctc_loss

    torch.manual_seed(0)
    model = ProbeModel(WeightedSum(3), FrameCTCHead(8, 6, proj_dim=16))
    states = torch.randn(4, 3, 20, 8)
    lengths = torch.tensor([20, 13, 7, 16])
    targets = [torch.randint(1, 6, (int(n) // 3,)) for n in lengths]
    packed = model(states, lengths)
    full = model.head(model.featurizer(states))  # every frame, padding included
    valid = (torch.arange(20)[None] < lengths[:, None])[..., None]
    assert torch.allclose(packed, full * valid, atol=1e-6) and packed[2, 7:].abs().max() == 0
    a = ctc_loss(packed, lengths, targets)
    b = ctc_loss(full, lengths, targets)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    ga = torch.autograd.grad(a, list(model.parameters()))
    gb = torch.autograd.grad(b, list(model.parameters()))
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(ga, gb))
