"""Mixing and augmentation against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from s3kit.data import augment as A

SR = 16_000


def tone(freq: float, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(y: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.argmax(spec) * SR / len(y))


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 20.0])
def test_mix_at_snr_hand_computed(snr_db):
    speech = tone(300)  # power 0.5^2 / 2 = 0.125
    noise = np.random.default_rng(0).standard_normal(SR // 3).astype(np.float32)  # shorter: tiled
    mixed = A.mix_at_snr(speech, noise, snr_db, rng=0)
    added = mixed - speech
    snr = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(added.astype(np.float64) ** 2))
    assert abs(snr - snr_db) < 1e-3
    assert isinstance(mixed, np.ndarray) and mixed.shape == speech.shape


def test_mix_at_snr_constant_signals():
    # speech power 4, noise power 1 -> at 0 dB the noise gain is 2: 2 + 2*1 = 4 everywhere
    out = A.mix_at_snr(torch.full((1000,), 2.0), torch.ones(1000), 0.0, rng=0)
    assert torch.allclose(out, torch.full((1000,), 4.0))


def test_mix_at_snr_batch_seeded_crop():
    speech = torch.from_numpy(np.stack([tone(200), tone(400, amp=0.1)]))
    noise = torch.randn(3 * SR, generator=torch.Generator().manual_seed(0))
    a = A.mix_at_snr(speech, noise, 5.0, rng=1)
    assert torch.equal(a, A.mix_at_snr(speech, noise, 5.0, rng=1))
    assert not torch.equal(a, A.mix_at_snr(speech, noise, 5.0, rng=2))
    for row in range(2):  # each row at its own 5 dB
        added = a[row] - speech[row]
        assert abs(10 * math.log10(speech[row].pow(2).mean() / added.pow(2).mean()) - 5.0) < 1e-3
    with pytest.raises(ValueError, match="all zeros"):
        A.mix_at_snr(speech, torch.zeros(100), 0.0)


def test_mix_log_mel_formula():
    speech = torch.tensor([[0.0, -2.0], [3.0, math.log(1e-12)]])
    noise = torch.tensor([[1.0, -2.0], [-50.0, math.log(1e-12)]])
    got = A.mix_log_mel(speech, noise, alpha=0.2)
    want = torch.log(torch.clamp(0.2 * noise.exp() + 0.8 * speech.exp(), min=A.LOG_EPS))
    assert torch.allclose(got, want, atol=1e-6)
    # by hand: log(0.2 e + 0.8) and equal inputs pass through; tiny values hit the eps floor
    assert abs(got[0, 0].item() - math.log(0.2 * math.e + 0.8)) < 1e-6
    assert abs(got[0, 1].item() + 2.0) < 1e-6
    assert abs(got[1, 1].item() - math.log(A.LOG_EPS)) < 1e-6
    # no overflow where exp() would: log(0.2 e^100 + 0.8 e^100) = 100
    assert torch.isfinite(A.mix_log_mel(torch.tensor([100.0]), torch.tensor([100.0]))).all()
    assert A.mix_log_mel(speech, noise, alpha=0.0).allclose(speech.clamp(min=math.log(A.LOG_EPS)))


def test_span_mask_twin():
    n = 1000
    wav = np.ones(n, dtype=np.float32)
    starts = set()
    for seed in range(200):
        out = A.span_mask(wav, rng=seed)
        zero = np.flatnonzero(out == 0)
        assert len(zero) == n // 5  # int(n/5) samples
        assert zero[-1] - zero[0] == len(zero) - 1  # one contiguous span
        assert 0 <= zero[0] < n - n // 5
        starts.add(int(zero[0]))
    assert len(starts) > 100  # uniform start, not a fixed one
    assert np.all(wav == 1)  # input untouched
    t = torch.ones(10)
    assert A.span_mask(t, rng=0).sum() == 8


def test_speed_perturb_changes_tempo_and_pitch():
    y = A.speed_perturb(tone(400), 1.1)
    assert abs(len(y) - SR / 1.1) <= 2
    assert abs(peak_hz(y) - 440) < 5


@pytest.mark.parametrize("semitones", [12, -12, 3, -2.5])
def test_pitch_shift_keeps_length(semitones):
    x = tone(440)
    y = A.pitch_shift(x, semitones)
    assert y.shape == x.shape
    assert abs(peak_hz(y) - 440 * 2 ** (semitones / 12)) < 4


def test_time_stretch_keeps_pitch():
    y = A.time_stretch(tone(500), 0.8)
    assert len(y) == 20_000 and abs(peak_hz(y) - 500) < 2


def test_mix_cuts_uses_lhotse(tmp_path):
    import soundfile as sf
    from lhotse import CutSet, Recording, RecordingSet

    sf.write(tmp_path / "s.wav", tone(300), SR)
    sf.write(tmp_path / "n.wav", np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.1, SR)
    speech = CutSet.from_manifests(recordings=RecordingSet.from_recordings([Recording.from_file(tmp_path / "s.wav")]))
    noise = CutSet.from_manifests(recordings=RecordingSet.from_recordings([Recording.from_file(tmp_path / "n.wav")]))
    mixed = A.mix_cuts(speech, noise, 10.0, seed=0)
    cut = next(iter(mixed))
    assert cut.id == next(iter(speech)).id
    added = cut.load_audio()[0] - tone(300)
    snr = 10 * np.log10(np.mean(tone(300) ** 2) / np.mean(added**2))
    assert abs(snr - 10.0) < 0.2
