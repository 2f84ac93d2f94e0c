"""Synthetic stand-ins for the SUPERB / M2D-S tasks whose corpora cannot be downloaded here:
QbE, SD, SF, a speaking-style proxy for ER, and non-speech sound classes (ENV / MUS).

Each builder renders offline (espeak-ng / flite voices of :mod:`s3kit.data.tts`, or numpy
signals) into ``OUT/<task>/`` and returns ``{manifest name: path}``; the same arguments give the
same manifests and audio, and a finished output is reused (``force=True`` remakes it).

* :func:`synthesize_qbe`: spoken terms (queries) read by held-out voices, searched in sentences
  of other voices that do or do not contain them; ``qbe_docs``, ``qbe_dev``, ``qbe_test``
  (queries carry ``qbe_hits``, the ids of the documents that contain them).
* :func:`synthesize_sd`: two-voice mixtures with overlap, voices disjoint across splits, one
  supervision per speaker turn (+ ``<split>.rttm``): ``sd_{train,dev,test}``.
* :func:`synthesize_style`: the same sentences read in four speaking styles (a pitch / rate /
  loudness proxy, **not emotion**), ``style`` label, speaker-disjoint ``style_{train,dev,test}``.
* :func:`synthesize_sounds`: ``kind="env"`` noise / environmental-like classes or
  ``kind="mus"`` tone / chord / instrument-like classes, ``sound_class`` label,
  ``{env,mus}_{train,dev,test}``.
* :func:`synthesize_slots`: spoken commands with slots (time, room, device, ...), ``text`` and
  per-word ``slots`` tags (SNIPS style, one tag per word, ``O`` outside slots):
  ``sf_{train,dev,test}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from s3kit.audio import SAMPLE_RATE
from s3kit.data import tts
from s3kit.data.synth import SPLITS, SynthConfig, _peak_normalise, _sentence, assign_splits, trim_silence

# multi-syllable words outside the sentence grammar of s3kit.data.synth (so a negative document
# never contains a term by chance)
QBE_TERMS = ("umbrella", "telephone", "volcano", "elephant", "computer", "banana", "kangaroo", "chocolate",
             "penguin", "tomato", "dinosaur", "helicopter", "avocado", "saxophone", "butterfly", "calendar")


# --------------------------------------------------------------------------- shared helpers
def _done(out: Path, config: dict, names: list[str], force: bool) -> dict[str, Path] | None:
    paths = {n: out / "manifests" / f"{n}.jsonl.gz" for n in names}
    info = out / "built.json"
    if force or not info.exists() or not all(p.exists() for p in paths.values()):
        return None
    try:
        same = json.loads(info.read_text()).get("config") == config
    except json.JSONDecodeError:
        same = False
    return paths if same else None


def _finish(out: Path, config: dict, cuts_by: dict[str, list]) -> dict[str, Path]:
    from lhotse import CutSet

    from s3kit.data.manifest import save_cuts

    paths = {}
    for name, cuts in cuts_by.items():
        paths[name] = save_cuts(CutSet.from_cuts(cuts), out / "manifests" / f"{name}.jsonl.gz")
    tmp = out / "built.json.tmp"
    tmp.write_text(json.dumps({"config": config, "manifests": {k: str(p) for k, p in paths.items()}}, indent=2))
    tmp.replace(out / "built.json")
    return paths


def _save(path: Path, wav: np.ndarray) -> int:
    from s3kit.audio import save

    path.parent.mkdir(parents=True, exist_ok=True)
    save(str(path), wav)
    return int(wav.size)


def _recording(cid: str, path: Path, num_samples: int):
    from lhotse import AudioSource, Recording

    return Recording(id=cid, sources=[AudioSource(type="file", channels=[0], source=str(path))],
                     sampling_rate=SAMPLE_RATE, num_samples=num_samples, duration=num_samples / SAMPLE_RATE)


def _cut(cid: str, path: Path, num_samples: int, text: str | None = None, speaker: str | None = None,
         supervisions: list | None = None, **custom):
    """A MonoCut over the whole file; labels on the first supervision (s3kit's convention)."""
    from lhotse import MonoCut, SupervisionSegment

    rec = _recording(cid, path, num_samples)
    if supervisions is None:
        supervisions = [SupervisionSegment(id=cid, recording_id=cid, start=0.0, duration=rec.duration, channel=0,
                                           text=text, speaker=speaker, language="en" if text else None,
                                           custom={k: v for k, v in custom.items() if v is not None} or None)]
    return MonoCut(id=cid, start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=supervisions)


def _speech(text: str, voice: tts.Voice, rng: np.random.Generator, pad=(0.1, 0.3), peak=(0.3, 0.9)) -> np.ndarray:
    """``text`` spoken, silence-trimmed, peak-normalised, with random leading / trailing silence."""
    s = trim_silence(tts.synthesize(text, voice))
    lead, tail = (rng.integers(int(pad[0] * SAMPLE_RATE), int(pad[1] * SAMPLE_RATE) + 1, size=2))
    return np.concatenate([np.zeros(lead, np.float32), _peak_normalise(s, rng.uniform(*peak)), np.zeros(tail, np.float32)])


def _voices(seed: int, engines) -> list[tts.Voice]:
    return tts.make_voices(seed, tuple(engines))


def _split_voices(seed: int, engines, dev_speakers: int, test_speakers: int) -> dict[str, list[tts.Voice]]:
    """``{split: voices}``, speaker-disjoint (:func:`s3kit.data.synth.assign_splits`), in voice order."""
    voices = _voices(seed, engines)
    split_of = assign_splits(voices, SynthConfig(seed=seed, dev_speakers=dev_speakers, test_speakers=test_speakers,
                                                 engines=tuple(engines)))
    return {split: [v for v in voices if split_of[v.speaker] == split] for split in SPLITS}


# --------------------------------------------------------------------------- QbE
def synthesize_qbe(out: str | Path, seed: int = 0, terms_per_split: int = 4, docs_per_term: int = 2,
                   negative_docs: int = 8, query_voices: int = 3, engines=("espeak",), force: bool = False,
                   progress: bool = False) -> dict[str, Path]:
    """QbE set: dev and test each search ``terms_per_split`` spoken terms in one shared document
    set (as QUESST: dev and eval queries differ, the documents are shared). Every term occurs in
    ``docs_per_term`` documents; ``negative_docs`` contain no term. Queries are read by
    ``query_voices`` voices that read no document (held-out voices).

    Returns ``{"qbe_docs", "qbe_dev", "qbe_test"}`` manifest paths.
    """
    out = Path(out) / "qbe"
    config = dict(seed=seed, terms_per_split=terms_per_split, docs_per_term=docs_per_term,
                  negative_docs=negative_docs, query_voices=query_voices, engines=list(engines))
    names = ["qbe_docs", "qbe_dev", "qbe_test"]
    if (done := _done(out, config, names, force)) is not None:
        return done
    if 2 * terms_per_split > len(QBE_TERMS):
        raise ValueError(f"terms_per_split={terms_per_split}: at most {len(QBE_TERMS) // 2} terms per split")
    voices = _voices(seed, engines)
    rng = np.random.default_rng([seed, 20, 0])
    order = rng.permutation(len(voices))
    if query_voices >= len(voices):
        raise ValueError(f"query_voices={query_voices} leaves no document voice among {len(voices)}")
    q_voices = [voices[i] for i in order[:query_voices]]
    d_voices = [voices[i] for i in order[query_voices:]]
    terms = {"dev": QBE_TERMS[:terms_per_split], "test": QBE_TERMS[terms_per_split : 2 * terms_per_split]}

    docs, hits = [], {t: [] for split in terms.values() for t in split}
    plan = [t for split in ("dev", "test") for t in terms[split] for _ in range(docs_per_term)] + [None] * negative_docs
    for i, term in enumerate(plan):
        r = np.random.default_rng([seed, 20, 1, i])
        words = _sentence(r).split()
        if term is not None:
            at = int(r.integers(0, len(words) + 1))
            words = words[:at] + ["the", term] + words[at:]
        text = " ".join(words)
        cid = f"qbedoc{i:04d}"
        voice = d_voices[i % len(d_voices)]
        path = out / "audio" / f"{cid}.flac"
        n = _save(path, _speech(text, voice, r))
        docs.append(_cut(cid, path, n, text=text, speaker=voice.speaker))
        if term is not None:
            hits[term].append(cid)
    queries = {}
    for split in ("dev", "test"):
        queries[split] = []
        for k, term in enumerate(terms[split]):
            r = np.random.default_rng([seed, 20, 2, split == "test", k])
            voice = q_voices[k % len(q_voices)]
            cid = f"qbe{split}{k:03d}"
            path = out / "audio" / f"{cid}.flac"
            n = _save(path, _speech(term, voice, r, pad=(0.05, 0.1)))
            queries[split].append(_cut(cid, path, n, text=term, speaker=voice.speaker, qbe_hits=hits[term]))
    return _finish(out, config, {"qbe_docs": docs, "qbe_dev": queries["dev"], "qbe_test": queries["test"]})


# --------------------------------------------------------------------------- SD
def speech_turns(wav: np.ndarray, rel_threshold: float = 0.05, min_gap: float = 0.25,
                 min_turn: float = 0.05, hop: int = 160) -> list[tuple[float, float]]:
    """Speech turns ``[(start, end)]`` seconds of one clean source: 10 ms frames whose RMS exceeds
    ``rel_threshold`` x the loudest frame's, pauses under ``min_gap`` s bridged (like the per-word
    alignments LibriMix's RTTMs come from, pauses between words stay inside a turn)."""
    n = wav.size // hop
    if n == 0:
        return []
    rms = np.sqrt(np.mean(wav[: n * hop].reshape(n, hop) ** 2, axis=1))
    active = np.concatenate([[False], rms > rel_threshold * rms.max(), [False]])
    edges = np.flatnonzero(active[1:] != active[:-1])
    turns: list[list[float]] = []
    for a, b in zip(edges[::2], edges[1::2]):
        t0, t1 = a * hop / SAMPLE_RATE, b * hop / SAMPLE_RATE
        if turns and t0 - turns[-1][1] < min_gap:
            turns[-1][1] = t1
        else:
            turns.append([t0, t1])
    return [(round(t0, 3), round(t1, 3)) for t0, t1 in turns if t1 - t0 >= min_turn]


def write_rttm(cuts, path: Path) -> Path:
    """One ``SPEAKER <recording> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>`` line per turn."""
    lines = [f"SPEAKER {c.id} 1 {s.start:.3f} {s.duration:.3f} <NA> <NA> {s.speaker} <NA> <NA>"
             for c in cuts for s in sorted(c.supervisions, key=lambda s: s.start)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def synthesize_sd(out: str | Path, seed: int = 0, mixtures: tuple[int, int, int] = (48, 12, 12),
                  overlap: tuple[float, float] = (0.1, 0.5), sentences: int = 1, dev_speakers: int = 4,
                  test_speakers: int = 4, engines=("espeak",), force: bool = False) -> dict[str, Path]:
    """Two-voice mixtures (Libri2Mix-like, no noise): in each, voice A reads ``sentences``
    sentences from 0.1-0.3 s, voice B starts so that an ``overlap`` fraction (uniform) of A's speech is
    overlapped; voices are disjoint across splits. One supervision per speaker turn (from each
    clean source's energy), also written as ``OUT/sd/<split>.rttm``.

    Returns ``{"sd_train", "sd_dev", "sd_test"}`` manifest paths.
    """
    from lhotse import SupervisionSegment

    out = Path(out) / "sd"
    config = dict(seed=seed, mixtures=list(mixtures), overlap=list(overlap), sentences=sentences, dev_speakers=dev_speakers,
                  test_speakers=test_speakers, engines=list(engines))
    names = [f"sd_{s}" for s in SPLITS]
    if (done := _done(out, config, names, force)) is not None:
        return done
    pools = _split_voices(seed, engines, dev_speakers, test_speakers)
    cuts_by = {}
    for k, (split, count) in enumerate(zip(SPLITS, mixtures)):
        pool = pools[split]
        cuts = []
        for i in range(count):
            r = np.random.default_rng([seed, 21, k, i])
            a, b = (pool[j] for j in r.choice(len(pool), size=2, replace=False))
            srcs = []
            for v in (a, b):
                text = " ".join(_sentence(r) for _ in range(sentences))
                srcs.append(_peak_normalise(trim_silence(tts.synthesize(text, v)), r.uniform(0.4, 0.9)))
            start_a = int(r.uniform(0.1, 0.3) * SAMPLE_RATE)
            start_b = start_a + int(srcs[0].size * (1.0 - r.uniform(*overlap)))
            n = max(start_a + srcs[0].size, start_b + srcs[1].size) + int(r.uniform(0.1, 0.3) * SAMPLE_RATE)
            mix = np.zeros(n, np.float32)
            cid = f"sd{split}{i:04d}"
            sups = []
            for v, src, start in ((a, srcs[0], start_a), (b, srcs[1], start_b)):
                mix[start : start + src.size] += src
                for j, (t0, t1) in enumerate(speech_turns(src)):
                    sups.append(SupervisionSegment(id=f"{cid}-{v.speaker}-{j}", recording_id=cid,
                                                   start=round(start / SAMPLE_RATE + t0, 3), duration=round(t1 - t0, 3),
                                                   channel=0, speaker=v.speaker))
            mix = _peak_normalise(mix, 0.9) if np.abs(mix).max() > 0.9 else mix
            path = out / "audio" / split / f"{cid}.flac"
            cuts.append(_cut(cid, path, _save(path, mix), supervisions=sorted(sups, key=lambda s: s.start)))
        cuts_by[f"sd_{split}"] = cuts
        write_rttm(cuts, out / f"{split}.rttm")
    return _finish(out, config, cuts_by)


# --------------------------------------------------------------------------- ER proxy: speaking style
# (pitch factor, rate factor, peak level): what the TTS can vary. A proxy for IEMOCAP's four
# classes in form only (four utterance-level classes read by many speakers), not in meaning.
STYLES = {
    "neutral": (1.0, 1.0, 0.4),
    "high": (1.7, 1.0, 0.4),
    "slow_soft": (0.75, 0.65, 0.08),
    "fast_loud": (1.15, 1.6, 0.95),
}


def synthesize_style(out: str | Path, seed: int = 0, per_split: tuple[int, int, int] = (96, 24, 24),
                     dev_speakers: int = 4, test_speakers: int = 4, engines=("espeak",),
                     force: bool = False) -> dict[str, Path]:
    """Speaking-style set, the synthetic stand-in for ER (IEMOCAP): sentences read in the four
    :data:`STYLES` (``style`` label, balanced), speaker-disjoint splits, each take with a small
    random pitch / rate / level jitter. Returns ``{"style_train", "style_dev", "style_test"}``."""
    out = Path(out) / "style"
    config = dict(seed=seed, per_split=list(per_split), dev_speakers=dev_speakers, test_speakers=test_speakers,
                  engines=list(engines), styles={k: list(v) for k, v in STYLES.items()})
    names = [f"style_{s}" for s in SPLITS]
    if (done := _done(out, config, names, force)) is not None:
        return done
    pools = _split_voices(seed, engines, dev_speakers, test_speakers)
    names_ = list(STYLES)
    cuts_by = {}
    for k, (split, count) in enumerate(zip(SPLITS, per_split)):
        pool = pools[split]
        cuts = []
        for i in range(count):
            r = np.random.default_rng([seed, 22, k, i])
            style = names_[i % len(names_)]
            voice = pool[(i // len(names_)) % len(pool)]
            pitch, rate, level = STYLES[style]
            v = voice.with_prosody(pitch=pitch * r.uniform(0.95, 1.05), rate=rate * r.uniform(0.95, 1.05))
            text = _sentence(r)
            wav = _speech(text, v, r, pad=(0.02, 0.05), peak=(level * 0.85, level * 1.15))  # little silence: it would dilute the level in a time mean
            cid = f"style{split}{i:04d}"
            path = out / "audio" / split / f"{cid}.flac"
            cuts.append(_cut(cid, path, _save(path, wav), text=text, speaker=voice.speaker, style=style))
        cuts_by[f"style_{split}"] = cuts
    return _finish(out, config, cuts_by)


# --------------------------------------------------------------------------- ENV / MUS sound classes
ENV_CLASSES = ("rain", "siren", "engine", "wind", "clapping", "birdsong")
MUS_CLASSES = ("sine_tone", "major_chord", "minor_chord", "plucked", "organ", "drums")


def _bursts(n: int, rate_hz: float, length_s: float, rng, make) -> np.ndarray:
    """Events at Poisson times (``rate_hz``), each ``make(m) -> [m]`` samples long."""
    x = np.zeros(n)
    t = rng.exponential(1.0 / rate_hz)
    while t < n / SAMPLE_RATE:
        m = int(length_s * SAMPLE_RATE)
        s = int(t * SAMPLE_RATE)
        ev = make(m)
        x[s : s + m] += ev[: max(0, min(m, n - s))]
        t += rng.exponential(1.0 / rate_hz)
    return x


def _env_sound(cls: str, n: int, rng: np.random.Generator) -> np.ndarray:
    from s3kit.data.synth import coloured_noise

    t = np.arange(n) / SAMPLE_RATE
    if cls == "rain":
        drops = _bursts(n, rng.uniform(30, 80), 0.01, rng, lambda m: rng.standard_normal(m) * np.exp(-np.arange(m) / (0.002 * SAMPLE_RATE)))
        return drops + 0.3 * coloured_noise(n, "pink", rng)
    if cls == "siren":
        f = rng.uniform(600, 900) + rng.uniform(200, 400) * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t)
        phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
        return np.sin(phase) + 0.3 * np.sin(2 * phase)
    if cls == "engine":
        f0 = rng.uniform(30, 80)
        x = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.3)) / k for k in range(1, 12))
        return x * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(4, 12) * t)) + 0.3 * coloured_noise(n, "brown", rng)
    if cls == "wind":
        return coloured_noise(n, "brown", rng) * (1 + 0.8 * np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * t + rng.uniform(0, 6.3)))
    if cls == "clapping":
        return _bursts(n, rng.uniform(2, 6), 0.03, rng, lambda m: rng.standard_normal(m) * np.exp(-np.arange(m) / (0.006 * SAMPLE_RATE)))
    if cls == "birdsong":
        def chirp(m):
            tt = np.arange(m) / SAMPLE_RATE
            f0, f1 = rng.uniform(2000, 6000, size=2)
            return np.sin(2 * np.pi * (f0 * tt + (f1 - f0) * tt**2 / (2 * tt[-1]))) * np.hanning(m)
        return _bursts(n, rng.uniform(3, 8), rng.uniform(0.05, 0.15), rng, chirp) + 0.02 * rng.standard_normal(n)
    raise ValueError(f"unknown ENV class {cls!r}; choose from {ENV_CLASSES}")


def _note(midi: float) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


def _mus_sound(cls: str, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    root = rng.uniform(48, 72)  # MIDI C3..C5, not on a fixed tuning
    env = np.minimum(1.0, t / 0.02) * np.exp(-t * rng.uniform(0.2, 1.0))
    if cls == "sine_tone":
        return np.sin(2 * np.pi * _note(root) * t) * env
    if cls in ("major_chord", "minor_chord"):
        third = 4 if cls == "major_chord" else 3
        return sum(np.sin(2 * np.pi * k * _note(root + iv) * t) / k**1.5 for iv in (0, third, 7) for k in (1, 2, 3)) * env
    if cls == "plucked":  # Karplus-Strong notes of a short random melody
        out = np.zeros(n)
        step = int(rng.uniform(0.2, 0.5) * SAMPLE_RATE)
        for s in range(0, n, step):
            period = int(SAMPLE_RATE / _note(root + rng.choice([0, 2, 4, 5, 7, 9, 12])))
            buf = rng.uniform(-1, 1, period)
            m = min(step, n - s)
            y = np.zeros(m)
            for i in range(m):
                y[i] = buf[i % period]
                buf[i % period] = 0.5 * (buf[i % period] + buf[(i + 1) % period]) * 0.996
            out[s : s + m] = y
        return out
    if cls == "organ":
        return sum(np.sin(2 * np.pi * k * _note(root) * t) * 0.7**k for k in range(1, 8)) * np.minimum(1.0, t / 0.05)
    if cls == "drums":
        beat = 60.0 / rng.uniform(80, 160)
        out = np.zeros(n)
        for k, start in enumerate(np.arange(0, n / SAMPLE_RATE, beat / 2)):
            s = int(start * SAMPLE_RATE)
            m = min(int(0.15 * SAMPLE_RATE), n - s)
            tt = np.arange(m) / SAMPLE_RATE
            if k % 2 == 0:  # kick on the beat
                out[s : s + m] += np.sin(2 * np.pi * (rng.uniform(50, 80) * tt + 60 * tt * np.exp(-tt * 30))) * np.exp(-tt * 20)
            out[s : s + m] += 0.3 * rng.standard_normal(m) * np.exp(-tt * 60)  # hi-hat
        return out
    raise ValueError(f"unknown MUS class {cls!r}; choose from {MUS_CLASSES}")


def synthesize_sounds(out: str | Path, kind: str = "env", seed: int = 0, per_class: tuple[int, int, int] = (12, 4, 4),
                      seconds: float = 2.0, force: bool = False) -> dict[str, Path]:
    """Non-speech classes for the M2D-S linear evaluation: ``kind="env"`` (:data:`ENV_CLASSES`,
    the ESC-50 / UrbanSound8K stand-in) or ``"mus"`` (:data:`MUS_CLASSES`, the GTZAN / NSynth
    stand-in); ``per_class`` clips per split of ``seconds`` s, each with its own random
    parameters; ``sound_class`` label. Returns ``{"<kind>_train", "<kind>_dev", "<kind>_test"}``."""
    classes = {"env": ENV_CLASSES, "mus": MUS_CLASSES}.get(kind)
    if classes is None:
        raise ValueError(f"kind={kind!r}: choose 'env' or 'mus'")
    out = Path(out) / kind
    config = dict(kind=kind, seed=seed, per_class=list(per_class), seconds=seconds)
    names = [f"{kind}_{s}" for s in SPLITS]
    if (done := _done(out, config, names, force)) is not None:
        return done
    make = _env_sound if kind == "env" else _mus_sound
    n = int(seconds * SAMPLE_RATE)
    cuts_by = {}
    for k, (split, count) in enumerate(zip(SPLITS, per_class)):
        cuts = []
        for c, cls in enumerate(classes):
            for i in range(count):
                r = np.random.default_rng([seed, 23, kind == "mus", k, c, i])
                wav = _peak_normalise(make(cls, n, r).astype(np.float32), r.uniform(0.3, 0.9))
                cid = f"{kind}{split}-{cls}-{i:03d}"
                path = out / "audio" / split / f"{cid}.flac"
                cuts.append(_cut(cid, path, _save(path, wav), sound_class=cls))
        cuts_by[f"{kind}_{split}"] = cuts
    return _finish(out, config, cuts_by)


# --------------------------------------------------------------------------- SF: commands with slots
SLOT_VALUES = {
    "time": ("seven am", "noon", "six thirty", "midnight", "nine pm", "ten fifteen"),
    "room": ("kitchen", "bedroom", "garage", "office", "bathroom"),
    "device": ("lights", "heater", "television", "fan", "radio"),
    "genre": ("jazz", "rock", "classical", "reggae"),
    "person": ("alice", "david", "my mother", "the doctor"),
    "city": ("paris", "london", "tokyo", "boston", "cairo"),
    "date": ("today", "tomorrow", "on friday", "next week"),
}
# templates: {slot} fields are filled with a value of that slot type
SF_TEMPLATES = (
    "set an alarm for {time}",
    "turn on the {device} in the {room}",
    "switch off the {device}",
    "play some {genre} in the {room}",
    "remind me to call {person} at {time}",
    "what is the weather in {city} {date}",
    "book a flight to {city} for {date}",
    "play {genre} music",
    "wake me up at {time} {date}",
    "is it raining in {city}",
)


def slot_sentence(rng: np.random.Generator) -> tuple[str, str]:
    """``(text, tags)``: a :data:`SF_TEMPLATES` command with its slots filled, one tag per word."""
    import re

    template = SF_TEMPLATES[int(rng.integers(len(SF_TEMPLATES)))]
    words, tags = [], []
    for piece in template.split():
        m = re.fullmatch(r"\{(\w+)\}", piece)
        if m:
            values = SLOT_VALUES[m.group(1)]
            value = values[int(rng.integers(len(values)))].split()
            words += value
            tags += [m.group(1)] * len(value)
        else:
            words.append(piece)
            tags.append("O")
    return " ".join(words), " ".join(tags)


def synthesize_slots(out: str | Path, seed: int = 0, per_split: tuple[int, int, int] = (120, 24, 24),
                     dev_speakers: int = 4, test_speakers: int = 4, engines=("espeak",),
                     force: bool = False) -> dict[str, Path]:
    """Spoken commands with slots (the Audio SNIPS stand-in): :data:`SF_TEMPLATES` filled from
    :data:`SLOT_VALUES`, read by speaker-disjoint voices (SNIPS splits by TTS voice too); ``text``
    and per-word ``slots`` labels. Returns ``{"sf_train", "sf_dev", "sf_test"}``."""
    out = Path(out) / "sf"
    config = dict(seed=seed, per_split=list(per_split), dev_speakers=dev_speakers, test_speakers=test_speakers,
                  engines=list(engines))
    names = [f"sf_{s}" for s in SPLITS]
    if (done := _done(out, config, names, force)) is not None:
        return done
    pools = _split_voices(seed, engines, dev_speakers, test_speakers)
    cuts_by = {}
    for k, (split, count) in enumerate(zip(SPLITS, per_split)):
        pool = pools[split]
        cuts = []
        for i in range(count):
            r = np.random.default_rng([seed, 24, k, i])
            text, tags = slot_sentence(r)
            voice = pool[i % len(pool)]
            cid = f"sf{split}{i:04d}"
            path = out / "audio" / split / f"{cid}.flac"
            wav = _speech(text, voice.with_prosody(r.uniform(0.95, 1.05), r.uniform(0.92, 1.08)), r)
            cuts.append(_cut(cid, path, _save(path, wav), text=text, speaker=voice.speaker, slots=tags))
        cuts_by[f"sf_{split}"] = cuts
    return _finish(out, config, cuts_by)
