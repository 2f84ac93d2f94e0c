"""SD, SF, the speaking-style ER proxy and the ENV / MUS linear evaluation: losses and metrics
against hand computations, learning on toy data, the synthetic builders end to end, and a fixture
in each real corpus layout."""

import json

import numpy as np
import pytest
import torch

from s3kit.eval.probe import ProbeConfig
from s3kit.testing import write_wav

SR = 16000


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _cfg(tmp_path, **kw):
    return ProbeConfig(cache_dir=str(tmp_path / "cache"), progress=False, **kw)


# ----------------------------------------------------------------------------------- SD


def test_pit_bce_takes_the_best_permutation():
    from s3kit.eval.tasks.sd import pit_bce

    labels = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])  # (B=1, T=3, S=2)
    logits = 20.0 * (2 * labels[..., [1, 0]] - 1)  # confident and right up to a speaker swap
    assert pit_bce(logits, labels, torch.tensor([3])).item() < 1e-6
    # hand value: logits 0 everywhere -> BCE = log 2 per frame whatever the permutation
    assert pit_bce(torch.zeros(1, 3, 2), labels, torch.tensor([3])).item() == pytest.approx(np.log(2))
    # padded frames do not count: only the first 2 frames, divided by 2
    wrong = logits.clone()
    wrong[0, 2] = 20.0  # the padded frame says "both speak"
    assert pit_bce(wrong, labels, torch.tensor([2])).item() < 1e-6


def test_der_hand_case_and_decisions():
    from pyannote.core import Annotation, Segment

    from s3kit.eval.tasks.sd import activity_to_annotation, decisions, diarization_error_rate

    ref = Annotation(uri="u")
    ref[Segment(0, 10)] = "A"
    ref[Segment(5, 15)] = "B"
    # hypothesis from 1 s frames: spk0 on 0-12 s, spk1 on 12-15 s
    active = np.zeros((15, 2), dtype=bool)
    active[:12, 0] = True
    active[12:, 1] = True
    hyp = activity_to_annotation(active, frame_rate=1.0, uri="u")
    # by hand (overlap scored, collar 0): 20 s of reference speech; 5-10 s: B missed (5 s);
    # spk0 -> A, spk1 -> B; 10-12 s: B spoken, spk0 (= A) said -> confusion 2 s. DER = 7 / 20
    out = diarization_error_rate([ref], [hyp], [15.0])
    assert out["der"] == pytest.approx(0.35)
    assert out["missed detection"] == pytest.approx(5.0) and out["confusion"] == pytest.approx(2.0)
    # threshold, then a 3-frame median filter removes a 1-frame blip and fills a 1-frame gap
    probs = np.array([[0.9, 0.1], [0.2, 0.1], [0.9, 0.8], [0.9, 0.1], [0.9, 0.1]])
    assert decisions(probs, 0.5, 1)[:, 0].tolist() == [True, False, True, True, True]
    assert decisions(probs, 0.5, 3).tolist() == [[False, False], [True, False], [True, False], [True, False], [True, False]]


def _tone_mixtures(root, n, seed):
    """Toy diarization: each "speaker" is a tone (own frequency); B starts while A still speaks."""
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    rng = np.random.default_rng(seed)
    freqs = [300.0, 700.0, 1500.0, 3100.0]
    cuts = []
    for i in range(n):
        fa, fb = rng.choice(freqs, size=2, replace=False)
        a0, a1 = 0.1, rng.uniform(0.8, 1.2)
        b0 = rng.uniform(0.5, a1 - 0.1)
        b1 = b0 + rng.uniform(0.6, 1.0)
        total = b1 + 0.2
        t = np.arange(int(total * SR)) / SR
        wav = (0.4 * np.sin(2 * np.pi * fa * t) * ((t >= a0) & (t < a1))
               + 0.4 * np.sin(2 * np.pi * fb * t) * ((t >= b0) & (t < b1))).astype(np.float32)
        path = write_wav(root / f"mix{i}.wav", wav + 0.01 * rng.standard_normal(t.size).astype(np.float32))
        rec = Recording.from_file(path, recording_id=f"mix{i}")
        sups = [SupervisionSegment(id=f"mix{i}-{s}", recording_id=rec.id, start=s0, duration=s1 - s0, speaker=f"f{int(f)}")
                for s, (s0, s1, f) in enumerate(((a0, a1, fa), (b0, b1, fb)))]
        cuts.append(MonoCut(id=rec.id, start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=sups))
    return CutSet.from_cuts(cuts)


def test_sd_head_on_a_padded_batch_equals_packed_sequences():
    """The head runs its one-direction LSTM on the padded batch: every valid frame's logits equal
    those of the packed sequences (and of each recording alone), gradients included."""
    from torch import nn

    from s3kit.eval.tasks.sd import SDHead

    torch.manual_seed(0)
    head = SDHead(num_layers=3, dim=16, hidden=8)
    states = torch.randn(3, 3, 40, 16, requires_grad=True)
    lengths = torch.tensor([40, 25, 7])
    valid = (torch.arange(40)[None] < lengths[:, None])[..., None].float()
    out = head(states, lengths)

    x = head.featurizer((states - head.mean) / head.std)
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    ref, _ = nn.utils.rnn.pad_packed_sequence(head.lstm(packed)[0], batch_first=True, total_length=40)
    ref = head.linear(ref)
    assert torch.allclose(out * valid, ref * valid, atol=1e-6)
    alone = head(states[2:, :, :7], lengths[2:])
    assert torch.allclose(out[2, :7], alone[0], atol=1e-6)
    g_out, = torch.autograd.grad((out * valid).sum(), states)
    g_ref, = torch.autograd.grad((ref * valid).sum(), states)
    assert torch.allclose(g_out, g_ref, atol=1e-6) and g_out[2, :, 7:].abs().max() == 0  # padding gets none


def test_sd_probe_learns_toy_diarization(tmp_path):
    from s3kit.eval.tasks.sd import SDConfig, run_sd

    train, dev, test = (_tone_mixtures(tmp_path / s, n, k) for k, (s, n) in enumerate((("tr", 24), ("dv", 6), ("te", 6))))
    cfg = _cfg(tmp_path, lr=1e-2, max_updates=40, eval_every=20, batch_size=8)
    r = run_sd("fbank", train, dev, test, cfg, SDConfig(hidden=16, standardize=True))
    assert r.metric == "der" and not r.higher_is_better
    # the trivial answer "one speaker whenever anyone speaks" (perfect activity detection) misses
    # the overlap and confuses B's solo part; the probe must separate the speakers
    from pyannote.core import Annotation

    from s3kit.eval.tasks.sd import diarization_error_rate, reference_annotation

    refs = [reference_annotation(c) for c in test]
    trivial = []
    for ref in refs:
        hyp = Annotation(uri=ref.uri)
        for k, seg in enumerate(ref.get_timeline().support()):
            hyp[seg, k] = "anyone"
        trivial.append(hyp)
    baseline = diarization_error_rate(refs, trivial, [c.duration for c in test])["der"]
    assert baseline > 0.35 and r.test < baseline - 0.1, (r.test, baseline, r.curve)
    assert r.extra["picked_on"] == "dev" and len(r.extra["dev_grid"]) == 10
    assert r.dev == min(g["der"] for g in r.extra["dev_grid"])
    # per-recording predictions: DER = summed errors / summed reference speech, with its bootstrap interval
    from s3kit.eval.probe import score_items

    assert [i["id"] for i in r.predictions] == [c.id for c in test] and r.n == 6
    assert score_items(r.predictions) == pytest.approx(r.test) and r.ci_low <= r.test <= r.ci_high
    missed = sum(i["missed"] for i in r.predictions)
    assert missed == pytest.approx(r.extra["test_components"]["missed detection"])


def test_synthetic_sd_mixtures(tmp_path):
    from s3kit.data.manifest import load_cuts
    from s3kit.data.synth_tasks import synthesize_sd
    from s3kit.eval.tasks import run_task
    from s3kit.eval.tasks.sd import SDConfig, speaker_turns

    paths = synthesize_sd(tmp_path / "data", mixtures=(8, 3, 3))
    splits = {s: load_cuts(paths[f"sd_{s}"]) for s in ("train", "dev", "test")}
    voices = {s: {sup.speaker for c in cs for sup in c.supervisions} for s, cs in splits.items()}
    assert not voices["train"] & voices["dev"] and not voices["train"] & voices["test"] and not voices["dev"] & voices["test"]
    for c in splits["train"]:
        turns = speaker_turns(c)
        assert len(turns) == 2
        a, b = turns.values()
        assert b[0][0] < a[-1][1]  # B starts before A's last turn ends: overlapped speech
    rttm = (tmp_path / "data" / "sd" / "test.rttm").read_text().splitlines()
    assert len(rttm) == sum(len(c.supervisions) for c in splits["test"]) and rttm[0].startswith("SPEAKER sdtest0000 1 ")
    # through the task API with SD's sizes shrunk to seconds (run_probe takes SDConfig's defaults)
    r = run_task("fbank", "sd", paths["sd_train"], paths["sd_dev"], paths["sd_test"],
                 _cfg(tmp_path, lr=1e-2, max_updates=4, eval_every=2, batch_size=4, fraction=0.5),
                 SDConfig(hidden=8, standardize=True))
    assert r.task == "sd" and r.num_train == 4 and 0.0 < r.test < 2.0


def test_librimix_sd_layout(tmp_path):
    from s3kit.data.recipes import RecipeError, prepare

    root = tmp_path / "librimix"
    for split in ("train", "dev", "test"):
        d = root / split
        d.mkdir(parents=True)
        write_wav(root / "wav" / split / "m1.wav", 0.1 * np.random.default_rng(0).standard_normal(SR).astype(np.float32))
        (d / "wav.scp").write_text(f"{split}_m1 wav/{split}/m1.wav\n")
        (d / "rttm").write_text(f"SPEAKER {split}_m1 1 0.10 0.50 <NA> <NA> 19 <NA> <NA>\n"
                                f"SPEAKER {split}_m1 1 0.40 0.55 <NA> <NA> 26 <NA> <NA>\n")
    splits = prepare("librimix_sd", root, tmp_path / "out")
    (cut,) = list(splits["dev"])
    assert [(s.speaker, s.start) for s in cut.supervisions] == [("19", 0.1), ("26", 0.4)]
    assert cut.supervisions[1].duration == pytest.approx(0.55)
    (root / "test" / "rttm").write_text("SPEAKER test_m1 1 zero 0.5 <NA> <NA> 19 <NA> <NA>\n")
    with pytest.raises(RecipeError, match="test/rttm:1"):
        prepare("librimix_sd", root, tmp_path / "out2")


# ----------------------------------------------------------------------------------- SF


def test_slot_target_and_parse():
    from s3kit.eval.tasks.sf import parse_slots, slot_target

    words = "wake me up at six thirty tomorrow".split()
    tags = "O O O O time time date".split()
    toks = slot_target(words, tags)
    assert "".join(toks) == "wake me up at <B-time>six thirty<E-time> <B-date>tomorrow<E-date>"
    assert parse_slots(toks) == [("time", "six thirty"), ("date", "tomorrow")]
    # an unclosed slot ends at the next B or the end; stray E is ignored
    assert parse_slots(["<B-city>", "a", "<B-date>", "b", "<E-time>", "c"]) == [("city", "a"), ("date", "b")]


def test_decode_slots_reads_a_perfect_ctc_path():
    from s3kit.eval.tasks.sf import decode_slots, slot_target

    toks = slot_target("play jazz in the office".split(), "O genre O O room".split())
    vocab = sorted(set(toks))
    ids = [vocab.index(t) + 1 for t in toks]
    path = [x for i in ids for x in (i, i, 0)]  # each token twice (merged) then a blank
    logits = torch.full((1, len(path) + 2, len(vocab) + 1), -5.0)
    logits[0, torch.arange(len(path)), torch.tensor(path)] = 5.0
    logits[0, len(path):, 0] = 5.0
    logits[0, -1] = 9.0  # padded frame: ignored through lengths
    assert decode_slots(logits, torch.tensor([len(path) + 1]), vocab) == [[("genre", "jazz"), ("room", "office")]]


def test_slot_metrics_hand_case():
    from s3kit.eval.tasks.sf import slot_type_f1, slot_value_cer

    refs = [[("time", "noon"), ("room", "kitchen")], [], [("city", "paris")]]
    hyps = [[("time", "moon")], [], [("date", "today")]]
    # utt1: types {time, room} vs {time}: F1 = 2*1/(2+1); utt2: both empty = 1; utt3: disjoint = 0
    assert slot_type_f1(refs, hyps) == pytest.approx((2 / 3 + 1 + 0) / 3)
    # noon->moon 1 edit; kitchen vs "" 7; paris vs "" 5 -> 13 / (4 + 7 + 5)
    assert slot_value_cer(refs, hyps) == pytest.approx(13 / 16)
    # the best same-type candidate is used, extra hypothesis slots are free
    assert slot_value_cer([[("time", "noon")]], [[("time", "nine"), ("time", "noon"), ("room", "x")]]) == 0.0


def test_synthetic_sf_end_to_end(tmp_path):
    from s3kit.data.manifest import get_label, load_cuts
    from s3kit.data.synth_tasks import synthesize_slots
    from s3kit.eval.probe import run_probe

    paths = synthesize_slots(tmp_path / "data", per_split=(12, 4, 4))
    cut = next(iter(load_cuts(paths["sf_train"])))
    assert len(get_label(cut, "text").split()) == len(get_label(cut, "slots").split())
    cfg = _cfg(tmp_path, lr=1e-3, max_updates=3, eval_every=3, batch_size=4, lstm_hidden=8, lstm_layers=1)
    r = run_probe("fbank", "sf", paths["sf_train"], paths["sf_dev"], paths["sf_test"], cfg)
    assert r.metric == "slot_type_f1" and 0.0 <= r.test <= 1.0 and r.extra["test_slot_value_cer"] >= 0.0
    assert "<B-time>" in r.extra["vocabulary"]
    from s3kit.eval.probe import score_items

    assert r.n == 4 and len(r.predictions) == 4 and score_items(r.predictions) == pytest.approx(r.test)
    assert r.ci_low <= r.test <= r.ci_high
    cer = sum(i["value_errors"] for i in r.predictions) / sum(i["value_chars"] for i in r.predictions)
    assert cer == pytest.approx(r.extra["test_slot_value_cer"])


def test_snips_layout(tmp_path):
    from s3kit.data.manifest import get_label
    from s3kit.data.recipes import RecipeError, prepare

    root = tmp_path / "SNIPS"
    lines = []
    for split, voice in (("train", "Joanna"), ("valid", "Amy"), ("test", "Brian")):
        uid = f"{voice}-snips-{split}-0"
        write_wav(root / split / f"{uid}.wav", 0.1 * np.ones(4000, np.float32))
        lines.append(f"{uid} BOS PLAY SOME JAZZ EOS\tO O O B-genre PlayMusic")
    write_wav(root / "train" / "Aditi-snips-train-9.wav", 0.1 * np.ones(4000, np.float32))  # a dev voice: skipped
    (root / "all.iob.snips.txt").write_text("\n".join(lines) + "\n")
    splits = prepare("snips", root, tmp_path / "out")
    (cut,) = list(splits["train"])
    assert get_label(cut, "text") == "PLAY SOME JAZZ" and get_label(cut, "slots") == "O O genre"
    assert get_label(cut, "intent") == "PlayMusic" and get_label(cut, "speaker") == "Joanna"
    (root / "all.iob.snips.txt").write_text(lines[0].replace("\t", " ") + "\n")
    with pytest.raises(RecipeError, match="all.iob.snips.txt:1"):
        prepare("snips", root, tmp_path / "out2")


# ----------------------------------------------------------------------------------- ER proxy


def test_synthetic_style_set(tmp_path):
    from s3kit.data.manifest import get_label, load_cuts
    from s3kit.data.synth_tasks import STYLES, synthesize_style
    from s3kit.eval.probe import chance_accuracy, run_probe

    paths = synthesize_style(tmp_path / "data", per_split=(24, 8, 8))
    train = load_cuts(paths["style_train"])
    assert sorted({get_label(c, "style") for c in train}) == sorted(STYLES)
    assert chance_accuracy(train, "style") == pytest.approx(0.25)
    assert not {c.supervisions[0].speaker for c in train} & {c.supervisions[0].speaker for c in load_cuts(paths["style_test"])}
    # the styles differ where they should: level (peak) and speaking rate (duration of like sentences)
    peak = {s: np.median([np.abs(c.load_audio()).max() for c in train if get_label(c, "style") == s]) for s in STYLES}
    assert peak["slow_soft"] < 0.5 * peak["neutral"] and peak["fast_loud"] > 1.5 * peak["neutral"]
    secs = {s: np.mean([c.duration / len(c.supervisions[0].text.split()) for c in train if get_label(c, "style") == s])
            for s in STYLES}
    assert secs["fast_loud"] < secs["neutral"] < secs["slow_soft"]
    # ER's probe runs on it through the one API (label "style")
    r = run_probe("mfcc", "style", paths["style_train"], paths["style_dev"], paths["style_test"],
                  _cfg(tmp_path, lr=1e-2, max_updates=20, eval_every=10))
    assert r.task == "style" and r.num_train == 24 and len(r.curve) == 2
    # the normal probe path: per-utterance predictions and a Wilson interval
    assert r.n == len(load_cuts(paths["style_test"])) == len(r.predictions) and "correct" in r.predictions[0]
    assert r.ci_low <= r.test <= r.ci_high


# ----------------------------------------------------------------------------------- ENV / MUS


def test_standardize_is_sklearn_standard_scaler():
    from sklearn.preprocessing import StandardScaler

    from s3kit.eval.tasks.linear import standardize

    rng = np.random.default_rng(0)
    a, b = rng.normal(3, 2, (20, 5)), rng.normal(3, 2, (7, 5))
    a[:, 2] = 1.0  # a constant column: std 0 -> scale 1, as sklearn
    sc = StandardScaler().fit(a)
    ta, tb = standardize(torch.tensor(a), torch.tensor(b))
    assert np.allclose(ta.numpy(), sc.transform(a)) and np.allclose(tb.numpy(), sc.transform(b))


@pytest.mark.parametrize("kind", ["env", "mus"])
def test_linear_eval_on_synthetic_sounds(kind, tmp_path):
    from s3kit.data.manifest import load_cuts
    from s3kit.data.synth_tasks import ENV_CLASSES, MUS_CLASSES, synthesize_sounds
    from s3kit.eval.probe import run_probe

    paths = synthesize_sounds(tmp_path / "data", kind=kind, per_class=(6, 3, 3), seconds=1.0)
    assert len(load_cuts(paths[f"{kind}_test"])) == 3 * len(ENV_CLASSES if kind == "env" else MUS_CLASSES)
    r = run_probe("mfcc", kind, paths[f"{kind}_train"], paths[f"{kind}_dev"], paths[f"{kind}_test"],
                  _cfg(tmp_path, lr=1e-2))
    assert r.metric == "accuracy" and r.test > 1 / 6 + 0.3, r  # 6 classes, 18 test clips
    assert r.extra["epochs"] <= 200 and r.updates_to_best == r.curve[[u for u, _ in r.curve].index(r.updates_to_best)][0]
    # per-clip predictions and the Wilson interval of k right out of 18
    from s3kit.eval.stats import wilson_ci

    k = sum(i["correct"] for i in r.predictions)
    assert r.n == 18 and r.test == k / 18 and (r.ci_low, r.ci_high) == pytest.approx(wilson_ci(k, 18))
    assert all(i["correct"] == (i["reference"] == i["hypothesis"]) for i in r.predictions)
    half = run_probe("mfcc", kind, paths[f"{kind}_train"], paths[f"{kind}_dev"], paths[f"{kind}_test"],
                     _cfg(tmp_path, lr=1e-2, fraction=0.5))
    assert half.num_train == 18


def test_sound_class_layouts(tmp_path):
    from s3kit.data.manifest import get_label
    from s3kit.data.recipes import RecipeError, prepare

    tone = 0.1 * np.ones(1600, np.float32)
    esc = tmp_path / "ESC-50"
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in (1, 2):
        for k, cat in enumerate(("dog", "rain")):
            for j in range(2):
                name = f"{fold}-{k}{j}-A-{k}.wav"
                write_wav(esc / "audio" / name, tone)
                rows.append(f"{name},{fold},{k},{cat},False,{k}{j},A")
    (esc / "meta").mkdir()
    (esc / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    s = prepare("esc50", esc, tmp_path / "out")
    assert sorted(s) == ["fold1_dev", "fold1_test", "fold1_train", "fold2_dev", "fold2_test", "fold2_train"]
    assert len(s["fold1_test"]) == 4 and len(s["fold1_dev"]) == 2 and len(s["fold1_train"]) == 2  # 1 of 2 per class
    assert {get_label(c, "sound_class") for c in s["fold1_test"]} == {"dog", "rain"}

    us = tmp_path / "UrbanSound8K"
    rows = ["slice_file_name,fsID,start,end,salience,fold,classID,class"]
    for fold in (1, 2):
        for j in range(2):
            write_wav(us / "audio" / f"fold{fold}" / f"{fold}00-3-0-{j}.wav", tone)
            rows.append(f"{fold}00-3-0-{j}.wav,{fold}00,0,1,1,{fold},3,dog_bark")
    (us / "metadata").mkdir()
    (us / "metadata" / "UrbanSound8K.csv").write_text("\n".join(rows) + "\n")
    assert get_label(next(iter(prepare("us8k", us, tmp_path / "out")["fold2_test"])), "sound_class") == "dog_bark"

    gt = tmp_path / "GTZAN"
    for genre in ("blues", "jazz"):
        for j in range(10):
            write_wav(gt / "genres" / genre / f"{genre}.{j:05d}.wav", tone)
    g = prepare("gtzan", gt, tmp_path / "out")
    assert (len(g["train"]), len(g["dev"]), len(g["test"])) == (16, 2, 2)
    (gt / "train_filtered.txt").write_text("blues/blues.00000.wav\njazz/jazz.00001.wav\n")
    (gt / "valid_filtered.txt").write_text("blues/blues.00002.wav\n")
    (gt / "test_filtered.txt").write_text("jazz/jazz.00099.wav\n")
    with pytest.raises(RecipeError, match="test_filtered.txt:1"):
        prepare("gtzan", gt, tmp_path / "out_filtered")

    ns = tmp_path / "nsynth"
    for split in ("train", "valid", "test"):
        note = f"guitar_acoustic_000-060-075"
        write_wav(ns / f"nsynth-{split}" / "audio" / f"{note}.wav", tone)
        (ns / f"nsynth-{split}" / "examples.json").write_text(json.dumps({note: {"instrument_family_str": "guitar"}}))
    n = prepare("nsynth", ns, tmp_path / "out")
    assert sorted(n) == ["dev", "test", "train"] and get_label(next(iter(n["dev"])), "sound_class") == "guitar"


def test_cli_runs_env_and_sd_with_task_options(tmp_path):
    from s3kit.cli import main
    from s3kit.data.synth_tasks import synthesize_sd, synthesize_sounds

    env = synthesize_sounds(tmp_path / "data", kind="env", per_class=(4, 2, 2), seconds=1.0)
    sd = synthesize_sd(tmp_path / "data", mixtures=(6, 2, 2))
    out = tmp_path / "out"
    assert main(["probe", "--upstream", "fbank", "--task", "env", "--data", str(env["env_train"].parent),
                 "--out", str(out / "env"), "--cache-dir", str(tmp_path / "cache"), "--fraction", "0.5,1.0",
                 "progress=false", "env.max_epochs=3"]) == 0
    rows = json.loads((out / "env" / "results.json").read_text())["runs"]
    assert [r["num_train"] for r in rows] == [12, 24] and all(r["extra"]["epochs"] <= 3 for r in rows)
    assert main(["probe", "--upstream", "fbank", "--task", "sd", "--data", str(sd["sd_train"].parent),
                 "--out", str(out / "sd"), "--cache-dir", str(tmp_path / "cache"), "--max-updates", "2",
                 "--eval-every", "1", "--batch-size", "2", "progress=false", "sd.hidden=8", "sd.standardize=true"]) == 0
    (row,) = json.loads((out / "sd" / "results.json").read_text())["runs"]
    assert row["metric"] == "der" and row["extra"]["picked_on"] == "dev" and row["updates"] == 2
    assert row["n"] == 2 and row["ci_low"] <= row["test"] <= row["ci_high"]
    from s3kit.eval.probe import read_predictions

    preds = read_predictions(out / "sd" / "predictions.jsonl.gz")
    assert len(preds) == 2 and {"errors", "ref_length", "missed", "false_alarm", "confusion"} <= preds[0].keys()
    assert len(read_predictions(out / "env" / "predictions.jsonl.gz")) == 2 * 12  # 2 fractions x 12 test clips
    # a bad task option names the field
    assert main(["probe", "--upstream", "fbank", "--task", "sd", "--data", str(sd["sd_train"].parent),
                 "--out", str(out / "bad"), "--cache-dir", str(tmp_path / "cache"), "sd.hiden=8"]) == 2


def test_lr_sweep_keeps_the_best_dev(tmp_path):
    from s3kit.data.synth_tasks import synthesize_sounds
    from s3kit.eval.tasks import run_task

    m = synthesize_sounds(tmp_path / "data", kind="env", per_class=(4, 2, 2), seconds=1.0)
    r = run_task("mfcc", "env", m["env_train"], m["env_dev"], m["env_test"],
                 _cfg(tmp_path, lr_sweep=True, lr_grid=[1e-2, 1e-7]))
    assert [s["lr"] for s in r.sweep] == [1e-2, 1e-7] and r.dev == max(s["dev"] for s in r.sweep)
    assert r.lr == 1e-2  # 1e-7 cannot move a linear layer in 200 epochs
