"""The synthetic TTS corpus (`s3kit synth`): labels, splits, audio, determinism, signal."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from s3kit.data import get_label, load_cuts
from s3kit.data import synth, tts
from s3kit.data.synth import KEYWORDS, SILENCE, UNKNOWN, SynthConfig, synthesize_corpus

pytestmark = pytest.mark.skipif(not tts.available_engines(), reason="no TTS engine (pip install espeakng-loader)")
ENGINES = tuple(tts.available_engines())
# a tiny corpus, keyword-heavy so that every split holds several clips per class
TINY = dict(minutes=1.0, seed=0, keyword_share=0.6, speat_min=4, engines=ENGINES, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, synthesize_corpus(out, num_workers=2, **TINY)


def _cuts(paths, subset):
    return {sp: load_cuts(paths[f"{subset}_{sp}"]) for sp in synth.SPLITS}


def test_voices_have_labels_and_distinct_prosody():
    voices = tts.make_voices(0, ENGINES)
    assert len(voices) >= 20
    assert len({v.speaker for v in voices}) == len(voices)
    assert {v.gender for v in voices} == {"female", "male"}
    assert len({v.accent for v in voices}) >= 8
    assert len({(v.pitch, v.rate) for v in voices}) == len(voices)  # per-speaker pitch and rate
    assert tts.make_voices(0, ENGINES) == voices and tts.make_voices(1, ENGINES) != voices


def test_manifests_and_layout(corpus):
    out, paths = corpus
    assert all(p.exists() for p in paths.values())
    info = json.loads((out / "synth.json").read_text())
    assert info["config"]["seed"] == 0 and len(info["voices"]) >= 20
    # the budget is shared out by the *_share fields; minimum counts (SpEAT, noise types) add some
    assert info["seconds"]["keywords"] == TINY["minutes"] * 60 * TINY["keyword_share"]
    assert 40 < info["total_seconds"] < 200
    assert set(info["seconds"]) == {"keywords", "commands", "sentences", "sentences_neutral", "noise", "speat"}


def test_keyword_label_balance(corpus):
    _, paths = corpus
    total = Counter()
    for split, cuts in _cuts(paths, "keywords").items():
        counts = Counter(get_label(c, "keyword") for c in cuts)
        total.update(counts)
        speech = [counts.get(k, 0) for k in (*KEYWORDS, UNKNOWN)]
        assert max(speech) - min(speech) <= 1, (split, counts)  # balanced within each split
        for c in cuts:
            if get_label(c, "keyword") == UNKNOWN:
                assert get_label(c, "text") in synth.UNKNOWN_WORDS
            elif get_label(c, "keyword") != SILENCE:
                assert get_label(c, "text") == get_label(c, "keyword")
    assert set(total) == set(synth.KEYWORD_CLASSES)
    assert max(total.values()) - min(total.values()) <= 3


def test_splits_are_speaker_disjoint(corpus):
    _, paths = corpus
    for subset in ("keywords", "commands", "sentences"):
        speakers = {sp: {get_label(c, "speaker") for c in cuts} - {None} for sp, cuts in _cuts(paths, subset).items()}
        assert all(speakers.values()), subset
        assert not speakers["train"] & speakers["dev"] and not speakers["train"] & speakers["test"]
        assert not speakers["dev"] & speakers["test"]
        for sp, cuts in _cuts(paths, subset).items():
            assert {get_label(c, "split") for c in cuts} == {sp}
    # babble noise mixes voices of its own split only
    split_of = {v.speaker: sp for sp in synth.SPLITS for v in tts.make_voices(0, ENGINES)
                if v.speaker in {get_label(c, "speaker") for c in _cuts(paths, "keywords")[sp]}}
    babble = [c for c in load_cuts(paths["noise"]) if get_label(c, "noise_type") == "babble"]
    assert {get_label(c, "split") for c in babble} == set(synth.SPLITS)
    for c in babble:
        assert len(get_label(c, "talkers")) >= 3
        assert {split_of[t] for t in get_label(c, "talkers")} == {get_label(c, "split")}


def test_labels_of_commands_sentences_neutral(corpus):
    _, paths = corpus
    for cuts in _cuts(paths, "commands").values():
        for c in cuts:
            intent = get_label(c, "intent")
            assert tuple(intent[k] for k in ("action", "object", "location")) in synth.INTENTS
            assert get_label(c, "gender") in ("female", "male") and get_label(c, "accent")
    sents, neutral = _cuts(paths, "sentences"), _cuts(paths, "sentences_neutral")
    for sp in synth.SPLITS:
        assert [c.id for c in sents[sp]] == [c.id for c in neutral[sp]]  # same ids: neutral positives
        for s, n in zip(sents[sp], neutral[sp]):
            assert get_label(n, "neutral_of") == s.id and get_label(n, "text") == get_label(s, "text")
            phones = get_label(s, "phones").split()
            assert len(phones) >= 5 and "ˈ" not in "".join(phones)
            assert get_label(n, "speaker") == "neutral"
    noise = load_cuts(paths["noise"])
    for sp in synth.SPLITS:  # every noise type in every split (noisy dev/test sets)
        assert {get_label(c, "noise_type") for c in noise if get_label(c, "split") == sp} == set(synth.NOISE_TYPES)
    speat = load_cuts(paths["speat"])
    groups = Counter((get_label(c, "concept"), get_label(c, "group")) for c in speat)
    assert set(groups) == {("valence", "pleasant"), ("valence", "unpleasant"), ("gender", "female"),
                           ("gender", "male"), ("accent", "native"), ("accent", "foreign")}
    assert len(set(groups.values())) == 1 and min(groups.values()) >= TINY["speat_min"]
    for c in speat:
        if get_label(c, "concept") == "gender":
            assert get_label(c, "gender") == get_label(c, "group")
        if get_label(c, "group") == "foreign":
            assert get_label(c, "accent") not in tts.NATIVE_ACCENTS


def test_speat_manifest_reads_in_bias(corpus):
    from s3kit.eval.bias import parse_tests, stimulus_sets

    _, paths = corpus
    targets, A, B = stimulus_sets(load_cuts(paths["speat"]), parse_tests("gender,native"))
    assert len(A) == len(B) > 0
    assert all(len(x) > 0 and len(x) == len(y) for x, y in targets.values())


def test_audio_is_16k_mono_nonsilent(corpus):
    _, paths = corpus
    for name, path in paths.items():
        for c in load_cuts(path):
            audio = c.load_audio()
            assert c.sampling_rate == 16000 and audio.shape == (1, c.num_samples), name
            rms = float(np.sqrt(np.mean(audio**2)))
            if get_label(c, "keyword") == SILENCE:
                assert 1e-4 < rms < 0.05  # quiet background noise, not digital silence
            else:
                assert rms > 0.01, (name, c.id)
            assert np.abs(audio).max() <= 1.0
            if name.startswith("keywords"):
                assert c.duration == synth.KEYWORD_SECONDS


def test_keyword_clips_of_different_words_differ(corpus):
    _, paths = corpus
    by_word = {}
    for c in load_cuts(paths["keywords_train"]):
        if get_label(c, "keyword") in KEYWORDS:
            by_word.setdefault(get_label(c, "keyword"), c)
    assert len(by_word) == len(KEYWORDS)
    wavs = {w: synth.trim_silence(c.load_audio()[0]) for w, c in by_word.items()}
    words = sorted(wavs)
    for i, a in enumerate(words):
        for b in words[i + 1 :]:
            n = min(wavs[a].size, wavs[b].size)
            assert wavs[a].size != wavs[b].size or not np.allclose(wavs[a][:n], wavs[b][:n], atol=1e-3)
    # same voice and prosody: different words give different audio, the same word the same audio
    v = tts.make_voices(0, ENGINES)[0]
    yes, no = tts.synthesize("yes", v), tts.synthesize("no", v)
    assert yes.size != no.size or not np.allclose(yes, no)
    assert np.array_equal(tts.synthesize("yes", v), yes)


def _digest(out: Path) -> dict[str, str]:
    """File -> sha1 over audio and manifests; manifest paths made relative to ``out``."""
    d = {}
    for p in sorted((out / "audio").rglob("*.*")):
        d[str(p.relative_to(out))] = hashlib.sha1(p.read_bytes()).hexdigest()
    for p in sorted((out / "manifests").glob("*.jsonl.gz")):
        text = gzip.decompress(p.read_bytes()).decode().replace(str(out.resolve()), "OUT")
        d[str(p.relative_to(out))] = hashlib.sha1(text.encode()).hexdigest()
    return d


def _cli_args(out) -> list[str]:
    return ["synth", "--out", str(out), "--minutes", str(TINY["minutes"]), "--seed", str(TINY["seed"]), "--no-progress",
            f"keyword_share={TINY['keyword_share']}", f"speat_min={TINY['speat_min']}", f"engines=[{','.join(ENGINES)}]"]


def test_same_seed_identical_in_a_fresh_process_with_other_workers(corpus, tmp_path):
    """A new process (new memory layout) with one worker instead of two gives identical bytes."""
    import subprocess
    import sys

    out, _ = corpus
    again = tmp_path / "again"
    proc = subprocess.run([sys.executable, "-m", "s3kit", *_cli_args(again), "--num-workers", "1"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "voices" in proc.stdout
    first, second = _digest(out), _digest(again)
    assert len(first) > 100 and first == second


def test_reuses_complete_output_and_remakes_on_change(corpus):
    out, paths = corpus
    stamp = {p: p.stat().st_mtime_ns for p in paths.values()}
    assert synthesize_corpus(out, num_workers=2, **TINY) == paths
    assert {p: p.stat().st_mtime_ns for p in paths.values()} == stamp  # reused, nothing rewritten
    info = json.loads((out / "synth.json").read_text())
    info["config"]["keyword_share"] = 0.5  # as if made with another config: remade
    (out / "synth.json").write_text(json.dumps(info))
    synthesize_corpus(out, num_workers=2, **TINY)
    assert all(p.stat().st_mtime_ns > stamp[p] for p in paths.values())
    assert json.loads((out / "synth.json").read_text())["config"]["keyword_share"] == TINY["keyword_share"]


def test_cli_synth_reuses_and_rejects_unknown_keys(corpus, capsys):
    from s3kit.cli import main

    out, _ = corpus
    assert main(_cli_args(out)) == 0  # same config: reused
    assert "voices" in capsys.readouterr().out
    assert main(["synth", "--out", str(out), "engine=[espeak]"]) == 2  # unknown key -> one-line error
    assert "engines" in capsys.readouterr().err


def test_missing_engine_says_what_to_install(monkeypatch):
    monkeypatch.setattr(tts, "_flite_cli", lambda: None)
    with pytest.raises(tts.TTSError, match="apt-get install -y flite"):
        tts.make_voices(0, ("espeak", "flite"))
    monkeypatch.setattr(tts, "_espeak_lib", lambda: None)
    monkeypatch.setattr(tts, "_espeak_cli", lambda: None)
    with pytest.raises(tts.TTSError, match="pip install espeakng-loader"):
        tts.synthesize("yes", tts.Voice("espeak", "en-us", "male", "american"))
    with pytest.raises(tts.TTSError, match="espeakng-loader"):
        tts.phonemize("yes")


def test_phonemize_known_words():
    assert tts.phonemize("turn on") == ["t", "ɜː", "n", "ɔ", "n"]
    assert tts.phonemize("the quick brown fox")[:5] == ["ð", "ə", "k", "w", "ɪ"]
    assert tts._split_phones("ð_ə k_w_ˈɪ_k") == ["ð", "ə", "k", "w", "ɪ", "k"]


def test_phonemize_drops_language_switch_markers():
    # espeak-ng 1.52 CLI, `-v de --ipa --sep=_ "the busy voice"`: English words in "(en)" ... "(de)"
    ipa = "(en)_ð_ə_(de) b_ˈuː_z_iː (en)_v_ˈɔɪ_s_(de)"
    assert tts._split_phones(ipa) == ["ð", "ə", "b", "uː", "z", "iː", "v", "ɔɪ", "s"]
    phones = tts.phonemize("the busy voice carried the bridge", "de+m3")  # a German voice reading English
    assert phones[:2] == ["ð", "ə"] and not any("(" in p or ")" in p for p in phones)


def test_balanced_pairs_and_noise_colours():
    for n in (1, 7, 23, 100, 319, 400):
        pairs = synth.balanced_pairs(n, 29, 11)
        s, c = Counter(p[0] for p in pairs), Counter(p[1] for p in pairs)
        assert max(s.values()) - min(s.values()) <= 1 and max(c.values()) - min(c.values()) <= 1
        assert len(set(pairs)) == min(n, 319)  # every (speaker, class) pair before any repeat
    rng = np.random.default_rng(0)
    n = 16000

    def low_high(x):
        p = np.abs(np.fft.rfft(x)) ** 2
        return p[1 : len(p) // 8].mean() / p[len(p) // 2 :].mean()

    ratios = {c: low_high(synth.coloured_noise(n, c, rng)) for c in ("violet", "blue", "white", "pink", "brown")}
    assert list(ratios.values()) == sorted(ratios.values())  # more low-frequency power as alpha falls
    assert 0.5 < ratios["white"] < 2.0
    assert abs(np.sqrt(np.mean(synth.coloured_noise(n, "pink", rng) ** 2)) - 1.0) < 1e-3


def test_mfcc_logreg_baseline_learns_keywords_and_speakers(tmp_path):
    """Labels carry signal: MFCC mean+std pooling + logistic regression, speaker-disjoint for
    keywords (well above the 1/12 chance) and on held-out takes for speaker identity."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from s3kit.features import MFCC

    paths = synthesize_corpus(tmp_path, minutes=3.0, seed=3, keyword_share=1.0, command_share=0.0,
                              sentence_share=0.0, noise_share=0.0, speat_share=0.0, engines=ENGINES, progress=False)
    mfcc = MFCC()

    def pooled(cuts):
        wavs = torch.from_numpy(np.stack([c.load_audio()[0] for c in cuts]))  # all clips are 1 s
        feats, _ = mfcc(wavs)
        X = torch.cat([feats.mean(1), feats.std(1)], dim=-1).numpy()
        return X, [get_label(c, "keyword") for c in cuts], [get_label(c, "speaker") for c in cuts]

    X_tr, y_tr, s_tr = pooled(list(load_cuts(paths["keywords_train"])))
    X_te, y_te, _ = pooled(list(load_cuts(paths["keywords_dev"])) + list(load_cuts(paths["keywords_test"])))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    kw_acc = model.fit(X_tr, y_tr).score(X_te, y_te)
    print(f"keyword accuracy {kw_acc:.3f}")
    assert kw_acc > 3 / len(synth.KEYWORD_CLASSES), kw_acc

    speech = np.array([s is not None for s in s_tr])
    X, spk = X_tr[speech], np.array(s_tr, dtype=object)[speech].astype(str)
    held = np.zeros(len(spk), bool)
    for s in np.unique(spk):
        held[np.flatnonzero(spk == s)[::4]] = True  # every 4th take of each speaker
    spk_acc = model.fit(X[~held], spk[~held]).score(X[held], spk[held])
    print(f"speaker accuracy {spk_acc:.3f} ({len(np.unique(spk))} speakers)")
    assert spk_acc > 5 / len(np.unique(spk)), spk_acc


def test_noisy_keyword_sets_mix_at_the_snr(corpus):
    _, paths = corpus
    noise_ids = {c.id: get_label(c, "split") for c in load_cuts(paths["noise"])}
    for sp in ("dev", "test"):
        clean = {c.id: c for c in load_cuts(paths[f"keywords_{sp}"])}
        for snr in SynthConfig().noisy_snrs:
            noisy = load_cuts(paths[f"keywords_{sp}_snr{snr:g}"])
            assert sorted(c.id for c in noisy) == sorted(f"{i}_snr{snr:g}" for i in clean)
            for c in noisy:
                ref = clean[c.id.rsplit("_snr", 1)[0]]
                assert get_label(c, "keyword") == get_label(ref, "keyword") and c.duration == ref.duration
                assert noise_ids[c.tracks[1].cut.id] == sp  # noise of the same split
                s, mixed = ref.load_audio()[0], c.load_audio()[0]
                n = mixed - s
                measured = 10 * np.log10(np.mean(s**2) / np.mean(n**2))
                assert abs(measured - snr) < 0.5, (c.id, measured)


@pytest.mark.skipif(tts._espeak_lib() is None or tts._espeak_cli() is None, reason="needs both espeak-ng backends")
def test_espeak_cli_fallback_matches_library(monkeypatch):
    lib_phones = tts.phonemize("turn on the lights")
    v = tts.Voice("espeak", "en-us+m3", "male", "american", pitch=1.1, rate=0.9)
    lib_wav = tts.synthesize("turn on the lights", v)
    monkeypatch.setattr(tts, "_espeak_lib", lambda: None)  # as without espeakng-loader
    assert tts.phonemize("turn on the lights") == lib_phones
    cli_wav = tts.synthesize("turn on the lights", v)
    flat = tts.synthesize("turn on the lights", v, monotone=True)
    speech_cli, speech_lib = synth.trim_silence(cli_wav), synth.trim_silence(lib_wav)  # the CLI pads more silence
    assert cli_wav.dtype == np.float32 and abs(speech_cli.size - speech_lib.size) < 0.15 * speech_lib.size
    assert not np.array_equal(flat[: cli_wav.size], cli_wav[: flat.size])  # SSML range 0 changes the audio


def test_explicit_sizes_per_split_and_controls_plan():
    """Explicit per-split sizes give exactly those counts, every class in every split, speakers
    disjoint; neutral renderings only for the chosen splits; the SpEAT controls' planted set
    shares the pitch shift between X and A (and Y and B), the balanced set's X and Y use the same
    voices and the same text distribution."""
    voices = tts.make_voices(0)
    cfg = SynthConfig(minutes=1.0, test_speakers=12, dev_speakers=5, keywords_per_class=(3, 2, 4),
                      commands_per_intent=(2, 1, 1), sentences=(5, 3, 7), speat_targets=30, speat_attributes=40,
                      neutral_splits=("train",), speat_controls=12)
    jobs, meta = synth.plan(Path("/nonexistent"), cfg, voices)
    labels = list(meta.values())
    split_of = synth.assign_splits(voices, cfg)
    assert Counter(split_of.values()) == {"train": 12, "test": 12, "dev": 5}
    for split, per_class in zip(synth.SPLITS, (3, 2, 4)):
        kw = Counter(m["keyword"] for m in labels if m["subset"] == "keywords" and m["split"] == split)
        assert kw == {c: per_class for c in synth.KEYWORD_CLASSES}, (split, kw)
        spk = {m["speaker"] for m in labels if m["subset"] == "keywords" and m["split"] == split and m["speaker"]}
        assert all(split_of[s] == split for s in spk)
    for split, per_intent in zip(synth.SPLITS, (2, 1, 1)):
        ic = Counter(tuple(m["intent"].values()) for m in labels if m["subset"] == "commands" and m["split"] == split)
        assert len(ic) == 31 and set(ic.values()) == {per_intent}
    sent = Counter(m["split"] for m in labels if m["subset"] == "sentences")
    assert sent == {"train": 5, "dev": 3, "test": 7}
    assert Counter(m["split"] for m in labels if m["subset"] == "sentences_neutral") == {"train": 5}
    speat = Counter((m["concept"], m["group"]) for m in labels if m["subset"] == "speat")
    assert speat[("valence", "pleasant")] == speat[("valence", "unpleasant")] == 40
    assert speat[("gender", "female")] == speat[("accent", "foreign")] == 30
    ctl = [j for j in jobs if j["subset"] == "speat_controls"]
    assert len(ctl) == 2 * 4 * 12
    by = {(meta[("speat_controls", j["id"])]["concept"], meta[("speat_controls", j["id"])]["group"], j["id"][-3:]): j
          for j in ctl}
    for k in (f"{i:03d}" for i in range(12)):
        x, y, a, b = (by[("planted", g, k)]["voice"] for g in "xyab")
        assert x.pitch == a.pitch > y.pitch == b.pitch and x.name == y.name
        bx, by_ = by[("balanced", "x", k)], by[("balanced", "y", k)]
        assert bx["voice"] == by_["voice"]
    texts = lambda g: Counter(by[("balanced", g, f"{i:03d}")]["text"] for i in range(12))  # noqa: E731
    assert texts("x") == texts("y")  # exchangeable: the same texts, in the same voices
