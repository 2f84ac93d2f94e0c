import numpy as np
import pytest
import soundfile as sf

from s3kit import AudioError
from s3kit.audio import SAMPLE_RATE, load, save
from s3kit.testing import sine, write_wav


def test_load_resamples_downmixes_and_keeps_a_tone(tmp_path):
    sr = 44_100
    t = np.arange(sr) / sr
    left = 0.5 * np.sin(2 * np.pi * 1000 * t)
    stereo = np.stack([left, left], axis=1).astype(np.float32)
    path = tmp_path / "stereo.flac"
    sf.write(path, stereo, sr)
    wav = load(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - SAMPLE_RATE) <= 1
    spec = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    peak_hz = np.argmax(spec) * SAMPLE_RATE / len(wav)
    assert abs(peak_hz - 1000) < 2
    # amplitude survives resampling (soxr passband is flat)
    assert abs(np.abs(wav[2000:-2000]).max() - 0.5) < 0.01


def test_downmix_averages_channels(tmp_path):
    a = sine(440, 0.5, 0.4)
    stereo = np.stack([a, np.zeros_like(a)], axis=1)
    path = write_wav(tmp_path / "s.wav", stereo, subtype="FLOAT")
    np.testing.assert_allclose(load(path), a / 2, atol=1e-6)


def test_save_load_roundtrip(tmp_path):
    a = sine(300, 0.3, 0.25)
    p = save(tmp_path / "x.wav", a)
    np.testing.assert_allclose(load(p), a, atol=2 / 2**15)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00garbage not audio"), "unreadable or corrupt"),
        (lambda p: sf.write(p, np.zeros(0, np.float32), SAMPLE_RATE), "empty"),
        (lambda p: sf.write(p, np.zeros(100, np.float32), SAMPLE_RATE), "shorter than the minimum"),
        (lambda p: sf.write(p, np.full(1000, np.nan, np.float32), SAMPLE_RATE, subtype="FLOAT"), "non-finite"),
    ],
    ids=["missing", "corrupt", "empty", "too-short", "nan"],
)
def test_bad_audio_names_file_and_problem(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError) as e:
        load(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(AudioError, match="directory"):
        load(tmp_path)
