"""The synthetic corpus: offline text-to-speech with many voices, written as lhotse manifests.

It lets the whole pipeline (pretraining, distillation, probes, SpEAT) run and be tested with
no download. ``synthesize_corpus(out, minutes, seed)`` renders, with speaker-disjoint
train/dev/test splits over :func:`s3kit.data.tts.make_voices` speakers:

* ``keywords``: 1 s clips of the Speech Commands 10 (yes no up down left right on off stop
  go) plus ``_unknown_`` (other Speech Commands words) and ``_silence_`` (quiet noise);
  ``keyword`` label, 12 balanced classes.
* ``commands``: short FSC-like commands, ``intent`` = {action, object, location} (31 intents).
* ``sentences``: generated sentences with ``text`` and ``phones`` (espeak-ng IPA front-end,
  space-separated), for phone recognition and teacher pretraining; and
  ``sentences_neutral``: every sentence again in one fixed monotone voice, same cut ids, with
  ``neutral_of`` = the sentence id (the rewiring paper's "Neutral" positives).
* ``noise``: coloured noise (white, pink, brown, blue, violet), babble (4-6 mixed voices of
  the same split) and tones, ``noise_type`` + ``split`` labels, for denoising and noisy tests;
  ``keywords_{dev,test}_snr<N>``: the keyword dev/test clips mixed with their split's noise at
  ``noisy_snrs`` dB (lhotse MixedCuts, mixed when loaded).
* ``speat``: SpEAT stimuli for ``s3kit bias``. Targets: the same valence-neutral sentences
  read by female vs male voices (``concept`` gender, ``group`` female/male) and by
  native-English vs foreign-language voices (``concept`` accent, ``group`` native/foreign);
  attributes: pleasant vs unpleasant words (Caliskan et al. 2017 WEAT lists) read by all voices
  in rotation (``concept`` valence, ``group`` pleasant/unpleasant).
* ``speat_controls`` (with ``speat_controls > 0``): two SpEAT sets with a known answer,
  ``concept`` planted / balanced, ``group`` x / y (targets), a / b (attributes): a planted
  association (pitch shared by X and A, by Y and B) and exchangeable targets (none); see
  :func:`_control_jobs`.

Sizes come from ``minutes`` and the ``*_share`` fields, or explicitly per split from
``keywords_per_class``, ``commands_per_intent``, ``sentences``, ``speat_targets`` and
``speat_attributes`` (docs/data.md, "The synthetic corpus: sizes and interval widths").

Layout::

    OUT/synth.json                                   # config + manifest paths + seconds made
    OUT/audio/<subset>/<cut id>.flac                 # 16 kHz mono PCM-16
    OUT/manifests/<subset>_{train,dev,test}.jsonl.gz # keywords, commands, sentences, sentences_neutral
    OUT/manifests/keywords_{dev,test}_snr{10,0}.jsonl.gz   # noisy keyword sets (MixedCuts)
    OUT/manifests/noise.jsonl.gz  speat.jsonl.gz  [speat_controls.jsonl.gz]

Every clip's randomness comes from ``(seed, subset, index)``, so the output does not depend on
worker scheduling: the same seed gives identical manifests and audio. A complete output for the
same config is reused (``force=True`` remakes it).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from s3kit.audio import SAMPLE_RATE
from s3kit.data import tts
from s3kit.data.tts import Voice

SPLITS = ("train", "dev", "test")
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")  # Speech Commands v1 10
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin",
                 "nine", "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero")
UNKNOWN, SILENCE = "_unknown_", "_silence_"
KEYWORD_CLASSES = (*KEYWORDS, UNKNOWN, SILENCE)
KEYWORD_SECONDS = 1.0  # Speech Commands clips are 1 s
NOISE_TYPES = ("white", "pink", "brown", "blue", "violet", "babble", "tone")
# spectral slope of coloured noise: power ~ f^alpha
_NOISE_ALPHA = {"white": 0.0, "pink": -1.0, "brown": -2.0, "blue": 1.0, "violet": 2.0}
NEUTRAL_VOICE = Voice("espeak", "en-us", "male", "american")  # one fixed voice, rendered monotone
# rough mean durations (s) used only to turn the minutes budget into item counts
_EST_COMMAND_S, _EST_SENTENCE_S, _EST_TARGET_S, _EST_WORD_S = 2.0, 2.8, 2.0, 0.7

# WEAT pleasant / unpleasant attribute words (Caliskan et al., Science 2017), 25 each
PLEASANT = ("caress", "freedom", "health", "love", "peace", "cheer", "friend", "heaven", "loyal", "pleasure",
            "diamond", "gentle", "honest", "lucky", "rainbow", "diploma", "gift", "honor", "miracle", "sunrise",
            "family", "happy", "laughter", "paradise", "vacation")
UNPLEASANT = ("abuse", "crash", "filth", "murder", "sickness", "accident", "death", "grief", "poison", "stink",
              "assault", "disaster", "hatred", "pollute", "tragedy", "divorce", "jail", "poverty", "ugly", "cancer",
              "kill", "rotten", "vomit", "agony", "prison")
# SpEAT target groups: (concept = test category, group, which voices); the concept/group names
# are those s3kit.eval.bias reads (gender: female vs male; native: native vs foreign accent)
SPEAT_TARGETS = (
    ("gender", "female", lambda v: v.gender == "female"),
    ("gender", "male", lambda v: v.gender == "male"),
    ("accent", "native", lambda v: v.accent in tts.NATIVE_ACCENTS),
    ("accent", "foreign", lambda v: v.accent not in tts.NATIVE_ACCENTS),
)
# valence-neutral carrier sentences for SpEAT targets (same texts for both groups)
TARGET_TEXTS = ("the book is on the table", "please call me at noon", "the train leaves at seven",
                "we walked to the station", "the window faces the street", "she opened the second box",
                "the meeting starts on monday", "there are four chairs in the room", "he read the letter twice",
                "the road turns left after the bridge", "my bag is next to the door", "the shop closes at six")

# FSC-like intents (action, object, location): the 31 of Fluent Speech Commands
_LOCATIONS = ("none", "kitchen", "bedroom", "washroom")
INTENTS: tuple[tuple[str, str, str], ...] = (
    *[("activate", "lights", loc) for loc in _LOCATIONS],
    *[("deactivate", "lights", loc) for loc in _LOCATIONS],
    *[("increase", "heat", loc) for loc in _LOCATIONS],
    *[("decrease", "heat", loc) for loc in _LOCATIONS],
    ("increase", "volume", "none"), ("decrease", "volume", "none"),
    ("activate", "music", "none"), ("deactivate", "music", "none"),
    ("activate", "lamp", "none"), ("deactivate", "lamp", "none"),
    *[("bring", obj, "none") for obj in ("newspaper", "juice", "socks", "shoes")],
    *[("change language", obj, "none") for obj in ("none", "Chinese", "Korean", "English", "German")],
)
_PHRASES = {
    "activate": ("turn on the {o}", "switch on the {o}", "{o} on", "activate the {o}"),
    "deactivate": ("turn off the {o}", "switch off the {o}", "{o} off", "deactivate the {o}"),
    "activate@loc": ("turn on the {o} in the {l}", "switch on the {l} {o}", "{l} {o} on", "lights on in the {l}"),
    "deactivate@loc": ("turn off the {o} in the {l}", "switch off the {l} {o}", "{l} {o} off", "lights off in the {l}"),
    "increase": ("turn up the {o}", "increase the {o}", "more {o} please", "{o} up"),
    "decrease": ("turn down the {o}", "decrease the {o}", "less {o} please", "{o} down"),
    "increase@loc": ("turn up the heat in the {l}", "make the {l} warmer", "increase the {l} heating", "heat up the {l}"),
    "decrease@loc": ("turn down the heat in the {l}", "make the {l} cooler", "decrease the {l} heating", "the {l} is too hot"),
    "increase@volume": ("turn up the volume", "louder please", "increase the volume", "i can't hear that"),
    "decrease@volume": ("turn the volume down", "quieter please", "decrease the volume", "that's too loud"),
    "increase@heat": ("turn up the heat", "make it warmer", "increase the heating", "i'm cold"),
    "decrease@heat": ("turn down the heat", "make it cooler", "decrease the heating", "it's too hot"),
    "activate@music": ("play the music", "put on some music", "start the music", "music on"),
    "deactivate@music": ("stop the music", "pause the music", "turn the music off", "music off"),
    "bring": ("bring me the {o}", "fetch my {o}", "get me the {o}", "i need my {o}"),
    "change language": ("set the language to {o}", "switch to {o}", "change the language to {o}", "i want {o}"),
    "change language@none": ("change the language", "switch the language", "use another language", "language settings"),
}

# a small grammar for varied sentences (phone recognition needs broad phone coverage)
_ADJ = ("small", "bright", "quiet", "heavy", "yellow", "strange", "warm", "broken", "famous", "gentle", "thick",
        "empty", "clever", "purple", "ancient", "busy", "frozen", "lucky", "narrow", "smooth")
_NOUN = ("dog", "garden", "teacher", "river", "window", "pencil", "village", "doctor", "basket", "mountain", "engine",
         "letter", "kitchen", "island", "bottle", "jacket", "farmer", "bridge", "cloud", "violin", "museum", "sheep",
         "thunder", "orange", "judge", "zebra", "chair", "voice", "wagon", "shoe")
_VERB = ("carried", "painted", "watched", "found", "pushed", "followed", "measured", "cleaned", "visited", "dropped",
         "washed", "chose", "fixed", "thanked", "reached", "joined", "moved", "owned", "showed", "brought")
_PREP = ("near", "behind", "under", "beside", "across", "through", "above", "inside", "toward", "without")
_ADV = ("slowly", "quickly", "yesterday", "again", "carefully", "often", "never", "early", "together", "twice")


def _sentence(rng: np.random.Generator) -> str:
    """One grammatical sentence of 5-13 words."""
    def np_(with_adj: bool) -> str:
        adj = f"{rng.choice(_ADJ)} " if with_adj else ""
        return f"the {adj}{rng.choice(_NOUN)}"

    words = [np_(rng.random() < 0.6), str(rng.choice(_VERB)), np_(rng.random() < 0.5)]
    if rng.random() < 0.6:
        words += [str(rng.choice(_PREP)), np_(rng.random() < 0.4)]
    if rng.random() < 0.4:
        words.append(str(rng.choice(_ADV)))
    return " ".join(words)


def command_text(intent: tuple[str, str, str], take: int) -> str:
    """The ``take``-th phrasing of an FSC-like intent (phrasings rotate across takes)."""
    action, obj, loc = intent
    if action in ("activate", "deactivate") and loc != "none":
        key = f"{action}@loc"
    elif action in ("increase", "decrease") and loc != "none":
        key = f"{action}@loc"
    elif f"{action}@{obj}" in _PHRASES:
        key = f"{action}@{obj}"
    else:
        key = action
    phrases = _PHRASES[key]
    return phrases[take % len(phrases)].format(o=obj, l=loc)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """What :func:`synthesize_corpus` makes. ``minutes`` is the total audio budget, shared out by
    the ``*_share`` fields (item counts are estimated from typical durations, so the total is
    approximate); SpEAT sets keep at least ``speat_min`` stimuli per group."""

    minutes: float = 10.0
    seed: int = 0
    num_workers: int = 2  # processes; does not change the output
    engines: tuple[str, ...] = ("espeak", "flite")
    audio_format: str = "flac"  # flac | wav
    dev_speakers: int = 4
    test_speakers: int = 5
    keyword_share: float = 0.30
    command_share: float = 0.15
    sentence_share: float = 0.35  # sentences + their neutral renderings
    noise_share: float = 0.10
    speat_share: float = 0.10
    noise_seconds: float = 4.0
    # noisy keyword dev/test sets: each clip mixed (lazily, lhotse MixedCut) with a noise clip of
    # its own split at these SNRs (dB); SPEC "Data" measures the MFCC baseline at 10 and 0 dB
    noisy_snrs: tuple[float, ...] = (10.0, 0.0)
    speat_min: int = 8
    # Explicit sizes (None: derived from ``minutes`` and the shares above). Each is per split,
    # (train, dev, test): clips per keyword class (_silence_ included), utterances per intent,
    # sentences. ``speat_targets`` / ``speat_attributes``: stimuli per target group / attribute
    # group (attributes beyond the 25 WEAT words repeat the words in other voices).
    keywords_per_class: tuple[int, int, int] | None = None
    commands_per_intent: tuple[int, int, int] | None = None
    sentences: tuple[int, int, int] | None = None
    speat_targets: int | None = None
    speat_attributes: int | None = None
    neutral_splits: tuple[str, ...] = SPLITS  # splits whose sentences get a monotone "neutral" rendering
    # SpEAT controls (OUT/manifests/speat_controls.jsonl.gz), per group: ``planted`` (targets and
    # attributes share a pitch shift, so an association exists by construction) and ``balanced``
    # (two exchangeable target halves, so none exists); 0 makes none
    speat_controls: int = 0
    pitch_jitter: float = 0.08  # per take, on top of each speaker's own pitch (factor 1 ± jitter)
    rate_jitter: float = 0.10

    def __post_init__(self):
        from s3kit.config import ConfigError

        if self.minutes <= 0:
            raise ConfigError(f"minutes must be > 0, got {self.minutes}")
        if self.audio_format not in ("flac", "wav"):
            raise ConfigError(f"audio_format must be 'flac' or 'wav', got {self.audio_format!r}")
        for e in self.engines:
            if e not in tts.ENGINES:
                raise ConfigError(f"unknown engine {e!r}; choose from {list(tts.ENGINES)}")
        if self.dev_speakers < 1 or self.test_speakers < 1:
            raise ConfigError("dev_speakers and test_speakers must be >= 1 (splits are speaker-disjoint)")
        for name in ("keywords_per_class", "commands_per_intent", "sentences"):
            v = getattr(self, name)
            if v is not None and (len(v) != 3 or min(v) < 1):
                raise ConfigError(f"{name}={v}: need three counts >= 1, (train, dev, test)")
        for name in ("speat_targets", "speat_attributes"):
            v = getattr(self, name)
            if v is not None and v < 2:
                raise ConfigError(f"{name}={v}: need at least 2 stimuli per group")
        bad = [s for s in self.neutral_splits if s not in SPLITS]
        if bad:
            raise ConfigError(f"neutral_splits: {bad} are not splits; choose from {list(SPLITS)}")

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0


# --------------------------------------------------------------------------- signal helpers
def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise ``[n]`` whose power spectrum goes as f^alpha (white 0, pink -1, brown -2,
    blue +1, violet +2), shaped in the frequency domain."""
    alpha = _NOISE_ALPHA[colour]
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1]  # avoid 0^negative at DC
    spec *= f ** (alpha / 2.0)
    x = np.fft.irfft(spec, n)
    x -= x.mean()
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def tone_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS tonal interference ``[n]``: 1-3 sines, steady, beeping or sweeping."""
    t = np.arange(n) / SAMPLE_RATE
    x = np.zeros(n)
    for _ in range(int(rng.integers(1, 4))):
        f0 = rng.uniform(150.0, 3000.0)
        style = rng.integers(0, 3)
        if style == 2:  # linear sweep to another frequency
            f1 = rng.uniform(150.0, 3000.0)
            phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1]))
        else:
            phase = 2 * np.pi * f0 * t
        s = np.sin(phase + rng.uniform(0, 2 * np.pi))
        if style == 1:  # beeps: on/off gating at 1-5 Hz
            s *= (np.sin(2 * np.pi * rng.uniform(1.0, 5.0) * t) > 0).astype(float)
        x += rng.uniform(0.3, 1.0) * s
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def trim_silence(wav: np.ndarray, rel_threshold: float = 0.02) -> np.ndarray:
    """Drop leading/trailing samples below ``rel_threshold`` x peak (TTS engines pad with silence)."""
    idx = np.flatnonzero(np.abs(wav) > rel_threshold * (np.abs(wav).max() + 1e-12))
    return wav[idx[0] : idx[-1] + 1] if idx.size else wav


def _peak_normalise(wav: np.ndarray, peak: float) -> np.ndarray:
    return (wav * (peak / (np.abs(wav).max() + 1e-12))).astype(np.float32)


# --------------------------------------------------------------------------- rendering (workers)
def _render(job: dict) -> tuple[str, int, str | None]:
    """Make one clip, write it; returns (cut id, num samples, phones or None). Runs in a worker."""
    from s3kit.audio import save

    rng = np.random.default_rng(job["key"])
    kind = job["kind"]
    phones = None
    if kind == "word":  # fixed 1 s clip, the word at a random offset
        n = int(KEYWORD_SECONDS * SAMPLE_RATE)
        speech = trim_silence(tts.synthesize(job["text"], job["voice"]))[:n]
        fade = min(160, speech.size // 4)  # 10 ms fade-out in case the word was cut at 1 s
        speech[speech.size - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
        wav = np.zeros(n, np.float32)
        start = int(rng.integers(0, n - speech.size + 1))
        wav[start : start + speech.size] = _peak_normalise(speech, rng.uniform(0.3, 0.9))
        phones = " ".join(tts.phonemize(job["text"]))
    elif kind == "speech":  # utterance with 0.1-0.3 s of leading / trailing silence
        speech = trim_silence(tts.synthesize(job["text"], job["voice"], monotone=job.get("monotone", False)))
        pad = rng.integers(int(0.1 * SAMPLE_RATE), int(0.3 * SAMPLE_RATE), size=2)
        wav = np.concatenate([np.zeros(pad[0], np.float32), _peak_normalise(speech, rng.uniform(0.3, 0.9)),
                              np.zeros(pad[1], np.float32)])
        if job.get("phones"):
            phones = " ".join(tts.phonemize(job["text"]))
    elif kind == "silence":  # Speech Commands' _silence_: quiet background noise
        n = int(KEYWORD_SECONDS * SAMPLE_RATE)
        wav = coloured_noise(n, job["colour"], rng) * np.float32(10 ** rng.uniform(-3.0, -1.5))
    elif kind == "noise":
        n = int(job["seconds"] * SAMPLE_RATE)
        if job["noise_type"] == "babble":
            wav = np.zeros(n, np.float32)
            for text, voice in job["talkers"]:
                s = trim_silence(tts.synthesize(text, voice))
                s = s / (np.sqrt(np.mean(s**2)) + 1e-12)
                reps = np.tile(s, int(math.ceil(n / s.size)) + 1)  # loop each talker over the clip
                off = int(rng.integers(0, s.size))
                wav += reps[off : off + n]
        elif job["noise_type"] == "tone":
            wav = tone_noise(n, rng)
        else:
            wav = coloured_noise(n, job["noise_type"], rng)
        wav = _peak_normalise(wav, rng.uniform(0.3, 0.9))
    else:
        raise ValueError(f"unknown job kind {kind!r}")
    save(job["path"], wav)
    return job["id"], int(wav.size), phones


# --------------------------------------------------------------------------- planning (main process)
def assign_splits(voices: list[Voice], cfg: SynthConfig) -> dict[str, str]:
    """Speaker -> split, speaker-disjoint; dev/test take female and male voices alternately."""
    if cfg.dev_speakers + cfg.test_speakers >= len(voices):
        raise ValueError(f"{len(voices)} voices cannot fill dev_speakers={cfg.dev_speakers} + "
                         f"test_speakers={cfg.test_speakers} and leave training speakers; lower them")
    rng = np.random.default_rng([cfg.seed, 101])
    pools = {g: [v.speaker for v in voices if v.gender == g] for g in ("female", "male")}
    for g in pools:
        rng.shuffle(pools[g])
    out = {v.speaker: "train" for v in voices}
    turn = 0
    for split, count in (("test", cfg.test_speakers), ("dev", cfg.dev_speakers)):
        for _ in range(count):
            g = ("female", "male")[turn % 2] if pools["female"] and pools["male"] else ("female" if pools["female"] else "male")
            out[pools[g].pop()] = split
            turn += 1
    return out


def balanced_pairs(n: int, num_speakers: int, num_classes: int) -> list[tuple[int, int]]:
    """``n`` (speaker, class) pairs whose speaker and class counts each differ by at most one for
    any ``n``; consecutive blocks of ``lcm`` items are shifted by one speaker, so every pair is
    visited before any repeats."""
    block = math.lcm(num_speakers, num_classes)
    return [((i + i // block) % num_speakers, i % num_classes) for i in range(n)]


def split_pairs(n: int, voices: list[Voice], split_of: dict[str, str], num_classes: int,
                counts: tuple[int, int, int] | None = None) -> list[tuple[Voice, int]]:
    """``n`` (voice, class) items shared out over the splits in proportion to their speakers
    (or ``counts`` = (train, dev, test) items), balanced within each split by
    :func:`balanced_pairs` (so every split has every class)."""
    out = []
    left = n
    for k, split in enumerate(SPLITS):
        pool = [v for v in voices if split_of[v.speaker] == split]
        if counts is not None:
            count = counts[k]
        else:
            count = left if k == len(SPLITS) - 1 else round(n * len(pool) / len(voices))
            count = min(count, left)
            left -= count
        out += [(pool[s], c) for s, c in balanced_pairs(count, len(pool), num_classes)]
    return out


def _per_class(counts: tuple[int, int, int] | None, classes: int) -> tuple[int, int, int] | None:
    return None if counts is None else tuple(c * classes for c in counts)


def _jitter(voice: Voice, rng: np.random.Generator, cfg: SynthConfig) -> Voice:
    return voice.with_prosody(pitch=1.0 + rng.uniform(-cfg.pitch_jitter, cfg.pitch_jitter),
                              rate=1.0 + rng.uniform(-cfg.rate_jitter, cfg.rate_jitter))


def plan(out: Path, cfg: SynthConfig, voices: list[Voice]) -> tuple[list[dict], dict[tuple[str, str], dict]]:
    """Every clip to make: (render jobs, cut labels by (subset, id)). Pure function of ``cfg`` and ``voices``."""
    split_of = assign_splits(voices, cfg)
    ext = cfg.audio_format
    jobs: list[dict] = []
    meta: dict[tuple[str, str], dict] = {}  # (subset, cut id): sentences and neutral share ids
    S = len(voices)

    def add(subset, cid, key, job, label):
        job.update(id=cid, key=[cfg.seed, *key], path=str(out / "audio" / subset / f"{cid}.{ext}"))
        job["subset"] = subset
        jobs.append(job)
        meta[(subset, cid)] = dict(subset=subset, **label)

    def speaker_label(v: Voice) -> dict:
        return dict(speaker=v.speaker, gender=v.gender, accent=v.accent, split=split_of[v.speaker])

    # keywords: 12 balanced classes, speech classes crossed with speakers within each split
    n_kw = max(len(KEYWORD_CLASSES), round(cfg.keyword_share * cfg.seconds / KEYWORD_SECONDS))
    n_sil = n_kw // len(KEYWORD_CLASSES)
    speech_classes = (*KEYWORDS, UNKNOWN)
    unknown_seen = 0
    kw_counts = _per_class(cfg.keywords_per_class, len(speech_classes))
    for i, (v, c) in enumerate(split_pairs(n_kw - n_sil, voices, split_of, len(speech_classes), kw_counts)):
        rng = np.random.default_rng([cfg.seed, 1, i])
        label = speech_classes[c]
        word = label
        if label == UNKNOWN:
            word = UNKNOWN_WORDS[unknown_seen % len(UNKNOWN_WORDS)]
            unknown_seen += 1
        add("keywords", f"kw{i:05d}", (1, i), dict(kind="word", text=word, voice=_jitter(v, rng, cfg)),
            dict(text=word, keyword=label, **speaker_label(v)))
    for j, (v, _) in enumerate(split_pairs(n_sil, voices, split_of, 1, cfg.keywords_per_class)):
        colour = ("white", "pink", "brown")[j % 3]
        add("keywords", f"sil{j:05d}", (2, j), dict(kind="silence", colour=colour),
            dict(text="", keyword=SILENCE, speaker=None, gender=None, split=split_of[v.speaker], noise_type=colour))

    # FSC-like commands
    n_cmd = max(2 * len(SPLITS), round(cfg.command_share * cfg.seconds / _EST_COMMAND_S))
    takes = [0] * len(INTENTS)
    for i, (v, c) in enumerate(split_pairs(n_cmd, voices, split_of, len(INTENTS),
                                           _per_class(cfg.commands_per_intent, len(INTENTS)))):
        rng = np.random.default_rng([cfg.seed, 3, i])
        text = command_text(INTENTS[c], takes[c])  # phrasings rotate over an intent's takes
        takes[c] += 1
        intent = dict(zip(("action", "object", "location"), INTENTS[c]))
        add("commands", f"cmd{i:05d}", (3, i), dict(kind="speech", text=text, voice=_jitter(v, rng, cfg), phones=True),
            dict(text=text, intent=intent, **speaker_label(v)))

    # sentences + neutral (monotone, one voice) renderings with the same ids
    n_sent = max(2 * len(SPLITS), round(cfg.sentence_share * cfg.seconds / (2 * _EST_SENTENCE_S)))
    for i, (v, _) in enumerate(split_pairs(n_sent, voices, split_of, 1, cfg.sentences)):
        rng = np.random.default_rng([cfg.seed, 4, i])
        text = _sentence(rng)
        cid = f"sent{i:05d}"
        add("sentences", cid, (4, i), dict(kind="speech", text=text, voice=_jitter(v, rng, cfg), phones=True),
            dict(text=text, **speaker_label(v)))
        if split_of[v.speaker] not in cfg.neutral_splits:
            continue
        add("sentences_neutral", cid, (5, i), dict(kind="speech", text=text, voice=NEUTRAL_VOICE, monotone=True, phones=True),
            dict(text=text, speaker="neutral", gender=NEUTRAL_VOICE.gender, accent=NEUTRAL_VOICE.accent,
                 split=split_of[v.speaker], neutral_of=cid))

    # noise: every type in every split (babble from the split's own voices); clips shrink to
    # 1 s when the budget cannot hold that many noise_seconds clips
    n_noise = max(len(SPLITS) * len(NOISE_TYPES), round(cfg.noise_share * cfg.seconds / cfg.noise_seconds))
    noise_s = float(np.clip(cfg.noise_share * cfg.seconds / n_noise, 1.0, cfg.noise_seconds))
    j = 0
    for split in SPLITS:
        pool = [v for v in voices if split_of[v.speaker] == split]
        for k in range(max(len(NOISE_TYPES), round(n_noise * len(pool) / S))):
            rng = np.random.default_rng([cfg.seed, 6, j])
            kind = NOISE_TYPES[k % len(NOISE_TYPES)]
            job = dict(kind="noise", noise_type=kind, seconds=noise_s)
            label = dict(text="", speaker=None, gender=None, split=split, noise_type=kind)
            if kind == "babble":
                talkers = rng.choice(len(pool), size=min(len(pool), int(rng.integers(4, 7))), replace=False)
                job["talkers"] = [(_sentence(rng), _jitter(pool[t], rng, cfg)) for t in talkers]
                label["talkers"] = [pool[t].speaker for t in talkers]
            add("noise", f"noise{j:05d}", (6, j), job, label)
            j += 1

    # SpEAT stimuli
    n_sp = int(np.clip(round(cfg.speat_share * cfg.seconds / (4 * _EST_TARGET_S + 2 * _EST_WORD_S)),
                       cfg.speat_min, len(PLEASANT)))
    n_attr = cfg.speat_attributes or n_sp
    n_tgt = cfg.speat_targets or n_sp
    for k in range(n_attr):
        v = voices[k % S]  # pleasant k and unpleasant k in the same voice: no voice-valence link
        for a, (group, words) in enumerate((("pleasant", PLEASANT), ("unpleasant", UNPLEASANT))):
            cid = f"speat-{group}{k:03d}"
            word = words[k % len(words)]
            add("speat", cid, (7, a, k), dict(kind="speech", text=word, voice=v),
                dict(text=word, concept="valence", group=group, **speaker_label(v)))
    for g, (concept, group, keep) in enumerate(SPEAT_TARGETS):
        pool = [v for v in voices if keep(v)]
        if not pool:
            raise ValueError(f"SpEAT {concept}: no {group} voice among engines {list(cfg.engines)}; add an engine")
        for k in range(n_tgt):
            v = pool[k % len(pool)]
            text = TARGET_TEXTS[k % len(TARGET_TEXTS)]
            cid = f"speat-{group}{k:03d}"
            add("speat", cid, (8, g, k), dict(kind="speech", text=text, voice=v),
                dict(text=text, concept=concept, group=group, **speaker_label(v)))
    for job in _control_jobs(cfg, voices):
        kind, group, k, text, voice = job
        cid = f"control-{kind}-{group}{k:03d}"
        add("speat_controls", cid, (10, CONTROL_KINDS.index(kind), "xyab".index(group), k),
            dict(kind="speech", text=text, voice=voice), dict(text=text, concept=kind, group=group, **speaker_label(voice)))
    return jobs, meta


CONTROL_KINDS = ("planted", "balanced")
PLANTED_PITCH = (1.3, 0.77)  # planted control: X and attribute A high, Y and attribute B low


def _control_jobs(cfg: SynthConfig, voices: list[Voice]) -> list[tuple[str, str, int, str, Voice]]:
    """(kind, group, index, text, voice) of the SpEAT control stimuli, ``cfg.speat_controls`` per group.

    ``planted``: target X and attribute A (pleasant words) spoken at 1.3 x the voice's pitch,
    Y and B (unpleasant words) at 0.77 x, each index k in the same voice and (X, Y) with the
    same text: the pitch shift links X to A and Y to B, an association any encoder that hears
    pitch must show. ``balanced``: X and Y both plain readings of the target texts in the same
    voices (Y's texts are X's rotated by half the list), A and B the attribute words: the two
    target groups are exchangeable, so no association exists.
    """
    out = []
    S = len(voices)
    hi, lo = PLANTED_PITCH
    for k in range(cfg.speat_controls):
        v = voices[k % S]
        text = TARGET_TEXTS[k % len(TARGET_TEXTS)]
        pleasant, unpleasant = PLEASANT[k % len(PLEASANT)], UNPLEASANT[k % len(UNPLEASANT)]
        out += [("planted", "x", k, text, v.with_prosody(pitch=hi)), ("planted", "y", k, text, v.with_prosody(pitch=lo)),
                ("planted", "a", k, pleasant, v.with_prosody(pitch=hi)),
                ("planted", "b", k, unpleasant, v.with_prosody(pitch=lo))]
        other = TARGET_TEXTS[(k + len(TARGET_TEXTS) // 2) % len(TARGET_TEXTS)]
        out += [("balanced", "x", k, text, v), ("balanced", "y", k, other, v),
                ("balanced", "a", k, pleasant, v), ("balanced", "b", k, unpleasant, v)]
    return out


# --------------------------------------------------------------------------- manifests
def _cut(cid: str, path: str, num_samples: int, label: dict, phones: str | None):
    from lhotse import AudioSource, MonoCut, Recording, SupervisionSegment

    duration = num_samples / SAMPLE_RATE
    rec = Recording(id=cid, sources=[AudioSource(type="file", channels=[0], source=path)],
                    sampling_rate=SAMPLE_RATE, num_samples=num_samples, duration=duration)
    custom = {k: v for k, v in label.items() if k not in ("subset", "speaker", "gender", "text") and v is not None}
    if phones:
        custom["phones"] = phones
    sup = SupervisionSegment(id=cid, recording_id=cid, start=0.0, duration=duration, channel=0,
                             text=label.get("text") or None, speaker=label.get("speaker"),
                             gender=label.get("gender"), language="en" if label.get("text") else None,
                             custom=custom or None)
    return MonoCut(id=cid, start=0.0, duration=duration, channel=0, recording=rec, supervisions=[sup])


def _config_key(cfg: SynthConfig) -> dict:
    from s3kit.config import to_dict

    d = to_dict(cfg)
    d.pop("num_workers")  # parallelism does not change the output
    return d


def _snr_name(snr: float) -> str:
    return f"snr{snr:g}"


def _manifest_names(cfg: SynthConfig) -> list[str]:
    names = [f"{s}_{sp}" for s in ("keywords", "commands", "sentences", "sentences_neutral") for sp in SPLITS]
    names += [f"keywords_{sp}_{_snr_name(snr)}" for snr in cfg.noisy_snrs for sp in ("dev", "test")]
    return names + ["noise", "speat"] + (["speat_controls"] if cfg.speat_controls else [])


def noisy_copy(cuts: list, noise: list, snr: float, seed: int) -> list:
    """Each cut mixed with a seeded choice of ``noise`` cut, cropped at a seeded offset to the
    cut's duration, at ``snr`` dB (lhotse ``MixedCut``s: mixed on load, no audio written).
    Ids get a ``_snr<snr>`` suffix; the labels stay those of the clean cut."""
    out = []
    for i, cut in enumerate(cuts):
        rng = np.random.default_rng([seed, 9, int(round(snr * 100)) + 100_000, i])
        n = noise[int(rng.integers(len(noise)))]
        span = min(cut.duration, n.duration)
        offset = float(rng.uniform(0.0, n.duration - span))
        mixed = cut.mix(n.truncate(offset=offset, duration=span, preserve_id=True), snr=snr)
        out.append(mixed.with_id(f"{cut.id}_{_snr_name(snr)}"))
    return out


def synthesize_corpus(out: str | Path, minutes: float = 10.0, seed: int = 0, num_workers: int = 2,
                      force: bool = False, progress: bool = True, config: SynthConfig | None = None,
                      **options) -> dict[str, Path]:
    """Render the synthetic corpus into ``out`` (see the module docstring for what and where).

    ``options`` are further :class:`SynthConfig` fields (``engines=("espeak",)``...); or pass a
    whole ``config`` (then ``minutes``/``seed``/``num_workers`` are taken from it). Returns
    ``{manifest name: path}``, e.g. ``keywords_train``, ``sentences_neutral_test``, ``noise``,
    ``speat``. Raises :class:`s3kit.data.tts.TTSError` naming what to install when a
    TTS engine is missing.
    """
    cfg = config if config is not None else SynthConfig(minutes=minutes, seed=seed, num_workers=num_workers, **options)
    out = Path(out).resolve()
    mdir = out / "manifests"
    paths = {name: mdir / f"{name}.jsonl.gz" for name in _manifest_names(cfg)}
    done = out / "synth.json"
    if not force and done.exists():
        try:
            info = json.loads(done.read_text())
        except json.JSONDecodeError:
            info = {}
        if info.get("config") == _config_key(cfg) and all(p.exists() for p in paths.values()):
            return paths
    done.unlink(missing_ok=True)  # an interrupted run leaves no synth.json: never mistaken for complete

    voices = tts.make_voices(cfg.seed, cfg.engines)
    jobs, meta = plan(out, cfg, voices)
    results = _run_jobs(jobs, cfg.num_workers, progress)

    from lhotse import CutSet

    from s3kit.data.manifest import save_cuts

    cuts_by = {name: [] for name in paths}
    seconds: dict[str, float] = {}
    for job in jobs:
        cid = job["id"]
        label = meta[(job["subset"], cid)]
        num_samples, phones = results[(job["subset"], cid)]
        cut = _cut(cid, job["path"], num_samples, label, phones)
        subset = label["subset"]
        seconds[subset] = seconds.get(subset, 0.0) + cut.duration
        if subset == "noise":
            cuts_by["noise"].append(cut)
        elif subset in ("speat", "speat_controls"):
            cuts_by[subset].append(cut)
        else:
            cuts_by[f"{subset}_{label['split']}"].append(cut)
    for snr in cfg.noisy_snrs:
        for sp in ("dev", "test"):
            noise = [c for c in cuts_by["noise"] if c.supervisions[0].custom["split"] == sp]
            cuts_by[f"keywords_{sp}_{_snr_name(snr)}"] = noisy_copy(cuts_by[f"keywords_{sp}"], noise, snr, cfg.seed)
    for name, cuts in cuts_by.items():
        save_cuts(CutSet.from_cuts(cuts), paths[name])
    info = {"config": _config_key(cfg), "voices": [dataclasses.asdict(v) for v in voices],
            "seconds": {k: round(v, 3) for k, v in seconds.items()}, "total_seconds": round(sum(seconds.values()), 3),
            "manifests": {k: str(p.relative_to(out)) for k, p in paths.items()}}
    tmp = done.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(done)
    return paths


def _run_jobs(jobs: list[dict], num_workers: int, progress: bool) -> dict[tuple[str, str], tuple[int, str | None]]:
    from tqdm.auto import tqdm

    # results are keyed by (subset, id): sentences and their neutral renderings share ids
    keyed = [(j["subset"], j) for j in jobs]
    bar = tqdm(total=len(jobs), desc="synth", unit="clip", disable=not progress)
    results = {}
    if num_workers <= 1:
        for subset, job in keyed:
            cid, n, phones = _render(job)
            results[(subset, cid)] = (n, phones)
            bar.update()
    else:
        import multiprocessing as mp

        # fork: workers inherit the imported modules; espeak-ng is initialised lazily per process
        with mp.get_context("fork").Pool(num_workers) as pool:
            for (subset, _), (cid, n, phones) in zip(keyed, pool.imap(_render, [j for _, j in keyed], chunksize=4)):
                results[(subset, cid)] = (n, phones)
                bar.update()
    bar.close()
    return results
