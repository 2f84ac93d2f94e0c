"""Waveform in: every file s3kit reads becomes float32, mono, 16 kHz.

Reads anything libsndfile reads (wav, flac, ogg, mp3), downmixes by averaging channels and
resamples with soxr (no torchaudio). Bad input raises one error type, :class:`AudioError`,
whose message names the file and the problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000  # every upstream in s3kit (HuBERT, wav2vec 2.0, WavLM, M2D) runs at 16 kHz
MIN_SAMPLES = 400  # one 25 ms analysis window at 16 kHz: anything shorter yields no frame


class AudioError(ValueError):
    """A waveform that s3kit cannot use; the message names the file and the fix."""


def check_waveform(wav: np.ndarray, source: str = "<array>", min_samples: int = MIN_SAMPLES) -> np.ndarray:
    """Validate a mono float waveform ``[S]``: non-empty, long enough, finite."""
    if wav.ndim != 1:
        raise AudioError(f"{source}: expected a mono waveform [S], got shape {tuple(wav.shape)}")
    if wav.size == 0:
        raise AudioError(f"{source}: the audio is empty (0 samples)")
    if wav.size < min_samples:
        raise AudioError(
            f"{source}: {wav.size} samples ({wav.size / SAMPLE_RATE * 1000:.1f} ms) is shorter than the "
            f"minimum of {min_samples} samples; drop the file or pad it"
        )
    if not np.isfinite(wav).all():
        bad = int((~np.isfinite(wav)).sum())
        raise AudioError(f"{source}: {bad} non-finite samples (NaN or Inf); the file is corrupt")
    return wav


def resample(wav: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling with soxr (HQ); ``wav`` is ``[S]`` or ``[S, C]``."""
    if orig_sr == target_sr:
        return wav
    import soxr

    return soxr.resample(wav, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def to_mono(wav: np.ndarray) -> np.ndarray:
    """``[S, C]`` -> ``[S]`` by averaging channels (``[S]`` passes through)."""
    return wav.mean(axis=1) if wav.ndim == 2 else wav


def load(
    path: str | Path,
    sample_rate: int = SAMPLE_RATE,
    offset: float = 0.0,
    duration: float | None = None,
    min_samples: int = MIN_SAMPLES,
) -> np.ndarray:
    """Read ``path`` as float32 mono at ``sample_rate``; returns ``[S]``.

    ``offset`` / ``duration`` (seconds) read a segment without decoding the whole file.
    Raises :class:`AudioError` for a missing, unreadable, empty, too-short or non-finite file.
    """
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, expected an audio file")
    try:
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            start = int(round(offset * sr))
            frames = -1 if duration is None else int(round(duration * sr))
            if start:
                f.seek(start)
            wav = f.read(frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{path}: unreadable or corrupt audio ({e}); re-encode it as wav or flac") from e
    wav = to_mono(wav)
    if wav.size == 0:
        raise AudioError(f"{path}: the audio is empty (0 samples)")
    wav = resample(wav, sr, sample_rate)
    return check_waveform(np.ascontiguousarray(wav, dtype=np.float32), str(path), min_samples)


def save(path: str | Path, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write ``[S]`` float audio as 16-bit PCM (wav/flac by extension), atomically."""
    import os

    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fmt = {".flac": "FLAC", ".ogg": "OGG"}.get(path.suffix.lower(), "WAV")
    sf.write(str(tmp), np.clip(wav, -1.0, 1.0), sample_rate, subtype="PCM_16" if fmt != "OGG" else None, format=fmt)
    os.replace(tmp, path)
    return path
