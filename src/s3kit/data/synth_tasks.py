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
