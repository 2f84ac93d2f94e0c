"""Offline text-to-speech for the synthetic corpus: espeak-ng and flite, many voices.

Two engines, both optional at import time and checked when first used:

* **espeak-ng** through the PyPI wheel ``espeakng-loader`` (bundles ``libespeak-ng`` and its
  data; driven with ctypes, no apt), falling back to the ``espeak-ng`` executable. Renders at
  22.05 kHz and is resampled to 16 kHz with soxr. Its front-end also gives IPA phones
  (:func:`phonemize`). British English is the voice ``en`` (``en-gb`` is rejected).
* **flite** (Debian ``flite``), run as a subprocess; renders at 16 kHz natively.

A :class:`Voice` is a speaker: engine voice name + gender/accent labels + the speaker's own
pitch and rate factors. :func:`synthesize` returns float32 mono 16 kHz ``[S]``.
espeak-ng is GPL-3.0+: it is loaded at run time only, never vendored.
"""

from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import re
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path

import numpy as np

from s3kit.audio import SAMPLE_RATE, resample

ESPEAK_INSTALL = "pip install espeakng-loader (or: apt-get install -y espeak-ng)"
FLITE_INSTALL = "apt-get install -y flite"

# espeak-ng API constants (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_PHONEMES_IPA = 0x02  # phonememode bit 1: IPA as UTF-8
_PHONE_SEP = ord("_")  # phonememode bits 8-23: separator between phones of a word
ESPEAK_DEFAULT_RATE = 175  # words per minute (espeak-ng default)
ESPEAK_DEFAULT_PITCH = 50  # espeak pitch parameter 0-100
ESPEAK_DEFAULT_RANGE = 50  # intonation range 0-100; 0 = monotone
_STRESS = str.maketrans("", "", "ˈˌ")
_LANG_SWITCH = re.compile(r"\([a-z]{2,3}(?:-[a-z0-9-]+)?\)")  # espeak-ng's "(en)", "(de)", "(en-us)"

# flite voices with their approximate mean F0 (Hz, measured by autocorrelation), needed to scale
# pitch because flite sets the F0 target in Hz rather than relative to the voice.
FLITE_F0 = {"kal16": 105.0, "kal": 105.0, "awb": 135.0, "rms": 111.0, "slt": 170.0}


class TTSError(RuntimeError):
    """A text-to-speech engine is missing or failed; the message says what to install."""


@dataclasses.dataclass(frozen=True)
class Voice:
    """One synthetic speaker.

    ``name`` is the engine's voice (espeak-ng ``language[+variant]`` such as ``en-us+f3``, or a
    flite voice such as ``slt``). ``pitch`` and ``rate`` are factors on the engine default
    (1.0 = default; espeak pitch parameter = 50 x pitch, rate = 175 wpm x rate; flite F0 target =
    voice mean x pitch, duration stretch = 1 / rate).
    """

    engine: str  # "espeak" | "flite"
    name: str
    gender: str  # "female" | "male"
    accent: str  # e.g. "american", "scottish", "german" (English read with a German voice)
    pitch: float = 1.0
    rate: float = 1.0

    @property
    def speaker(self) -> str:
        """A stable speaker id: engine and voice name (file-name safe)."""
        return f"{self.engine}-{self.name}".replace("+", "-")

    def with_prosody(self, pitch: float = 1.0, rate: float = 1.0) -> "Voice":
        """The same speaker with pitch/rate multiplied (a take's random variation)."""
        return dataclasses.replace(self, pitch=self.pitch * pitch, rate=self.rate * rate)


# --------------------------------------------------------------------------- espeak-ng
class _EspeakLib:
    """libespeak-ng from espeakng-loader in synchronous mode, loaded afresh for every call.

    espeak-ng keeps static wave-generator state across utterances (neither ``espeak_Terminate``
    nor a new ``espeak_Initialize`` resets it), so the same text renders a few samples
    differently depending on what was spoken before. Unloading the library (``dlclose``) and
    loading it again resets every static, and libc's ``rand`` (breath noise) is seeded from the
    request: each utterance is then a pure function of its text and voice, whatever a worker
    rendered before. It costs about 5 ms per call.
    """

    def __init__(self):
        import espeakng_loader

        self._path = espeakng_loader.get_library_path()
        self._data = espeakng_loader.get_data_path().encode()
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = callback_type(self._collect)  # keep a reference: C holds only the pointer
        self.sample_rate = 0
        with self._loaded():  # fail early (and with the fix) if the library cannot initialise
            pass

    @contextlib.contextmanager
    def _loaded(self):
        lib = ctypes.CDLL(self._path)
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        try:
            self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data, 0)
            if self.sample_rate <= 0:
                raise TTSError(f"espeak_Initialize failed ({self.sample_rate}); reinstall: {ESPEAK_INSTALL}")
            lib.espeak_SetSynthCallback(self._callback)
            yield lib
        finally:
            lib.espeak_Terminate()
            _ctypes.dlclose(lib._handle)

    def _collect(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = continue synthesis

    @staticmethod
    def _set_voice(lib, name: str) -> None:
        if lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise TTSError(f"espeak-ng has no voice '{name}'; list them with `espeak-ng --voices`")

    def synth(self, text: str, name: str, rate: int, pitch: int, pitch_range: int) -> tuple[np.ndarray, int]:
        with self._loaded() as lib:
            self._set_voice(lib, name)
            lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
            lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
            lib.espeak_SetParameter(_PARAM_RANGE, pitch_range, 0)
            data = text.encode("utf-8") + b"\0"
            # breathy variants (most +f*) mix in noise from libc rand(): seed it from the request
            _libc().srand(zlib.crc32(f"{name}|{rate}|{pitch}|{pitch_range}|{text}".encode()))
            self._chunks = []
            err = lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_UTF8, None, None)
            if err != 0:
                raise TTSError(f"espeak_Synth failed with code {err} for {text!r}")
        wav = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return wav, self.sample_rate

    def phonemes(self, text: str, voice: str) -> list[str]:
        parts = []
        with self._loaded() as lib:
            self._set_voice(lib, voice)
            ptr = ctypes.c_char_p(text.encode("utf-8"))
            mode = _PHONEMES_IPA | (_PHONE_SEP << 8)
            while ptr.value:  # the call consumes one clause at a time and advances ptr
                out = lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, mode)
                if out:
                    parts.append(out.decode("utf-8"))
        return _split_phones(" ".join(parts))


@functools.lru_cache(maxsize=1)
def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def _split_phones(ipa: str) -> list[str]:
    """'ð_ə k_w_ˈɪ_k' -> ['ð', 'ə', 'k', 'w', 'ɪ', 'k'] (stress marks dropped).

    Language-switch markers are dropped too: a non-English voice reads the English words it
    knows with its English voice, and espeak-ng writes ``(en)``/``(de)`` around them; they are
    not phones."""
    ipa = _LANG_SWITCH.sub(" ", ipa)
    return [p for word in ipa.split() for p in word.translate(_STRESS).split("_") if p]


@functools.lru_cache(maxsize=1)
def _espeak_lib() -> _EspeakLib | None:
    try:
        import espeakng_loader  # noqa: F401
    except ImportError:
        return None
    return _EspeakLib()


def _espeak_cli() -> str | None:
    return shutil.which("espeak-ng")


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise TTSError(f"{' '.join(cmd[:3])} ... failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc


def _espeak_params(voice: Voice, monotone: bool) -> tuple[int, int, int]:
    rate = int(round(ESPEAK_DEFAULT_RATE * voice.rate))
    pitch = int(np.clip(round(ESPEAK_DEFAULT_PITCH * voice.pitch), 0, 100))
    return rate, pitch, 0 if monotone else ESPEAK_DEFAULT_RANGE


def _synth_espeak(text: str, voice: Voice, monotone: bool) -> np.ndarray:
    rate, pitch, pitch_range = _espeak_params(voice, monotone)
    lib = _espeak_lib()
    if lib is not None:
        pcm, sr = lib.synth(text, voice.name, rate, pitch, pitch_range)
        wav = pcm.astype(np.float32) / 32768.0
        return resample(wav, sr, SAMPLE_RATE)
    exe = _espeak_cli()
    if exe is None:
        raise TTSError(f"espeak-ng is not available; install it: {ESPEAK_INSTALL}")
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        cmd = [exe, "-v", voice.name, "-s", str(rate), "-p", str(pitch), "-w", str(out)]
        if monotone:  # the CLI has no pitch-range flag; SSML prosody range 0 % is the same setting
            from xml.sax.saxutils import escape

            cmd += ["-m", f'<speak><prosody range="0%">{escape(text)}</prosody></speak>']
        else:
            cmd.append(text)
        _run(cmd)
        wav, sr = sf.read(str(out), dtype="float32")
    return resample(wav, sr, SAMPLE_RATE)


# --------------------------------------------------------------------------- flite
def _flite_cli() -> str | None:
    return shutil.which("flite")


def _synth_flite(text: str, voice: Voice, monotone: bool) -> np.ndarray:
    exe = _flite_cli()
    if exe is None:
        raise TTSError(f"flite is not installed (needed for voice '{voice.name}'); install it: {FLITE_INSTALL}, "
                       "or use espeak-ng voices only (engines=[espeak])")
    import soundfile as sf

    f0 = FLITE_F0.get(voice.name, 120.0) * voice.pitch
    opts = ["--setf", f"int_f0_target_mean={f0:.2f}", "--setf", f"duration_stretch={1.0 / voice.rate:.4f}"]
    if monotone:
        opts += ["--setf", "int_f0_target_stddev=0"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        # options must come before -t (flite's usage)
        _run([exe, "-voice", voice.name, *opts, "-t", text, "-o", str(out)])
        wav, sr = sf.read(str(out), dtype="float32")
    return resample(wav, sr, SAMPLE_RATE)


# --------------------------------------------------------------------------- public API
ENGINES = ("espeak", "flite")


def check_engine(engine: str) -> None:
    """Raise :class:`TTSError` naming what to install when ``engine`` cannot run here."""
    if engine == "espeak":
        if _espeak_lib() is None and _espeak_cli() is None:
            raise TTSError(f"espeak-ng is not available; install it: {ESPEAK_INSTALL}")
    elif engine == "flite":
        if _flite_cli() is None:
            raise TTSError(f"flite is not installed; install it: {FLITE_INSTALL}, "
                           "or use espeak-ng voices only (engines=[espeak])")
    else:
        raise TTSError(f"unknown TTS engine '{engine}'; choose from {list(ENGINES)}")


def available_engines() -> list[str]:
    """The engines that can run on this machine."""
    out = []
    for e in ENGINES:
        try:
            check_engine(e)
            out.append(e)
        except TTSError:
            pass
    return out


def synthesize(text: str, voice: Voice, monotone: bool = False) -> np.ndarray:
    """Speak ``text`` with ``voice``; returns float32 mono 16 kHz ``[S]``.

    ``monotone`` flattens intonation (espeak-ng pitch range 0, flite F0 stddev 0): the
    rewiring paper's "Neutral" rendering of a transcript.
    """
    if not text.strip():
        raise TTSError("cannot synthesise empty text")
    if voice.engine == "espeak":
        wav = _synth_espeak(text, voice, monotone)
    elif voice.engine == "flite":
        wav = _synth_flite(text, voice, monotone)
    else:
        raise TTSError(f"unknown TTS engine '{voice.engine}' for voice '{voice.name}'; choose from {list(ENGINES)}")
    if wav.size == 0:
        raise TTSError(f"{voice.engine} voice '{voice.name}' produced no audio for {text!r}")
    return np.ascontiguousarray(wav, dtype=np.float32)


def phonemize(text: str, voice: str = "en-us") -> list[str]:
    """IPA phones of ``text`` from espeak-ng's front-end (stress marks dropped).

    ``phonemize("turn on") -> ['t', 'ɜː', 'n', 'ɔ', 'n']``.
    """
    lib = _espeak_lib()
    if lib is not None:
        return lib.phonemes(text, voice)
    exe = _espeak_cli()
    if exe is None:
        raise TTSError(f"phonemes need espeak-ng; install it: {ESPEAK_INSTALL}")
    proc = _run([exe, "-q", "-v", voice, "--ipa", "--sep=_", text])
    return _split_phones(proc.stdout.decode("utf-8"))


# --------------------------------------------------------------------------- the voice set
# (engine, voice name, gender, accent). espeak-ng variants (+m1..m7, +f1, +f4, +Annie...) change
# the formants and base pitch of a language voice; the non-English language voices read English
# text with their own letter-to-sound rules and phone set, i.e. foreign-accented English.
# Variants with "breath" (f2, f3, f5, Alicia, whisper...) are left out: libespeak-ng 1.52 renders
# their breath noise differently from run to run (it depends on memory addresses), which would
# break "same seed -> identical audio".
VOICE_TABLE: tuple[tuple[str, str, str, str], ...] = (
    ("espeak", "en-us+m1", "male", "american"),
    ("espeak", "en-us+f1", "female", "american"),
    ("espeak", "en-us+m4", "male", "american"),
    ("espeak", "en-us+f4", "female", "american"),
    ("espeak", "en+m2", "male", "british"),
    ("espeak", "en+Annie", "female", "british"),
    ("espeak", "en-gb-x-rp+m5", "male", "british"),
    ("espeak", "en-gb-x-rp+f4", "female", "british"),
    ("espeak", "en-gb-scotland+m3", "male", "scottish"),
    ("espeak", "en-gb-scotland+belinda", "female", "scottish"),
    ("espeak", "en-029+m6", "male", "caribbean"),
    ("espeak", "en-029+linda", "female", "caribbean"),
    ("espeak", "en-gb-x-gbclan+m7", "male", "northern-english"),
    ("espeak", "en-gb-x-gbcwmd+f4", "female", "west-midlands"),
    ("espeak", "de+m3", "male", "german"),
    ("espeak", "de+f4", "female", "german"),
    ("espeak", "fr+m1", "male", "french"),
    ("espeak", "fr+steph", "female", "french"),
    ("espeak", "es+m2", "male", "spanish"),
    ("espeak", "es+anika", "female", "spanish"),
    ("espeak", "hi+m4", "male", "hindi"),
    ("espeak", "hi+f1", "female", "hindi"),
    ("espeak", "it+Andrea", "female", "italian"),
    ("espeak", "ru+m5", "male", "russian"),
    ("espeak", "pl+grandma", "female", "polish"),
    ("flite", "kal16", "male", "american"),
    ("flite", "rms", "male", "american"),
    ("flite", "awb", "male", "scottish"),
    ("flite", "slt", "female", "american"),
)

# accents whose voice is an English voice (the rest are English read by a foreign-language voice)
NATIVE_ACCENTS = frozenset({"american", "british", "scottish", "caribbean", "northern-english", "west-midlands"})


def make_voices(seed: int = 0, engines: tuple[str, ...] | list[str] = ENGINES,
                pitch_spread: float = 0.15, rate_spread: float = 0.12) -> list[Voice]:
    """The corpus speakers: every :data:`VOICE_TABLE` voice of ``engines`` with its own pitch and
    rate factors drawn uniformly within ``1 ± spread`` (seeded), so speakers sharing an espeak
    variant still differ. Raises :class:`TTSError` naming the install when an engine is missing.
    """
    for e in engines:
        check_engine(e)
    rng = np.random.default_rng([seed, 7919])
    voices = []
    for engine, name, gender, accent in VOICE_TABLE:
        pitch = 1.0 + rng.uniform(-pitch_spread, pitch_spread)
        rate = 1.0 + rng.uniform(-rate_spread, rate_spread)  # drawn for every row: same traits whatever engines
        if engine in engines:
            voices.append(Voice(engine, name, gender, accent, round(float(pitch), 4), round(float(rate), 4)))
    return voices
