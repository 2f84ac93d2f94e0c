"""Mixing and augmentation, all seeded: noise at an SNR, the M2D-S linear-mel mix, span masking
(the rewiring paper's "Twin"), speed and pitch perturbation.

Dimension legend: ``S`` samples, ``B`` batch, ``F`` mel bins, ``T`` frames.

Waveform functions take a float ``np.ndarray`` or ``torch.Tensor`` and give back the same type.
``rng`` is a ``np.random.Generator``, an int seed, or None (fresh entropy). For whole CutSets use
lhotse's own lazy transforms: ``cuts.perturb_speed(1.1)`` (fine for 0.9 / 1.1) and
``cuts.mix(noise_cuts, snr=10, seed=0)`` (see :func:`mix_cuts`). On single waveforms, speed
perturbation is the same ``sox speed`` operation done with soxr (lhotse's resampler is very slow
for arbitrary factors); pitch shift (tempo kept) has no torchaudio-free lhotse transform, so it is
speed perturbation followed by a phase-vocoder time stretch written here on ``torch.stft``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from s3kit.audio import SAMPLE_RATE

MIX_ALPHA = 0.2  # M2D-S: noise ratio α = 0.2 in the linear-mel mix (speech 1 - α)
LOG_EPS = float(torch.finfo(torch.float32).eps)  # M2D-S log-mel floor: log(x + finfo.eps)
TWIN_FRACTION = 0.2  # rewiring "Twin": one contiguous span of 20 % of the samples zeroed
STFT_N_FFT = 512  # 32 ms at 16 kHz: phase-vocoder frame for the pitch-shift time stretch
STFT_HOP = 128  # 75 % overlap, the usual phase-vocoder setting


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _as_tensor(x) -> tuple[torch.Tensor, bool]:
    if isinstance(x, torch.Tensor):
        return x, False
    return torch.as_tensor(np.asarray(x, dtype=np.float32)), True


def _back(x: torch.Tensor, was_numpy: bool):
    return x.numpy() if was_numpy else x


def fit_length(noise, length: int, rng=None):
    """``noise [S']`` cropped at a seeded random offset (when longer) or tiled (when shorter) to ``[length]``."""
    noise_t, was_np = _as_tensor(noise)
    if noise_t.ndim != 1 or noise_t.numel() == 0:
        raise ValueError(f"noise must be a non-empty [S] waveform, got shape {tuple(noise_t.shape)}")
    n = noise_t.numel()
    if n < length:
        noise_t = noise_t.repeat(math.ceil(length / n))
        n = noise_t.numel()
    start = int(_rng(rng).integers(0, n - length + 1))
    return _back(noise_t[start : start + length], was_np)


def mix_at_snr(speech, noise, snr_db: float, rng=None):
    """``speech + g·noise`` with ``g`` set so that ``10·log10(P_speech / P_(g·noise)) = snr_db``.

    speech: ``[S]`` or ``[B, S]`` (each row mixed at ``snr_db`` with its own noise crop);
    noise: ``[S']``, any length (cropped at a seeded offset or tiled, see :func:`fit_length`).
    Power = mean square over the whole row. Returns the mixture, same shape and type as ``speech``.
    """
    speech_t, was_np = _as_tensor(speech)
    noise_t, _ = _as_tensor(noise)
    gen = _rng(rng)
    rows = speech_t.reshape(-1, speech_t.shape[-1])
    out = torch.empty_like(rows)
    for b, row in enumerate(rows):
        n = fit_length(noise_t.to(row.dtype), row.numel(), gen)
        p_noise = n.pow(2).mean()
        if p_noise <= 0:
            raise ValueError("noise is all zeros; an SNR needs a noise with power")
        gain = torch.sqrt(row.pow(2).mean() / (p_noise * 10.0 ** (snr_db / 10.0)))
        out[b] = row + gain * n
    return _back(out.reshape(speech_t.shape), was_np)


def mix_log_mel(speech_logmel: torch.Tensor, noise_logmel: torch.Tensor, alpha: float = MIX_ALPHA, eps: float = LOG_EPS) -> torch.Tensor:
    """M2D-S's noisy input: mix in the linear-mel domain, then re-log.

    ``log(max(α·exp(noise) + (1 − α)·exp(speech), eps))``, computed as a log-sum-exp so large
    log-mels do not overflow. speech_logmel, noise_logmel: ``[..., F, T]`` (broadcastable).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: the noise ratio must be in [0, 1]")
    log_a = math.log(alpha) if alpha > 0 else -math.inf
    log_1a = math.log1p(-alpha) if alpha < 1 else -math.inf
    mixed = torch.logaddexp(noise_logmel + log_a, speech_logmel + log_1a)
    return torch.clamp(mixed, min=math.log(eps))


def span_mask(wav, fraction: float = TWIN_FRACTION, rng=None):
    """The rewiring paper's Twin view: a copy of ``wav [S]`` with one contiguous span of
    ``int(S·fraction)`` samples set to zero, its start drawn uniformly from ``[0, S − span)``."""
    wav_t, was_np = _as_tensor(wav)
    if wav_t.ndim != 1:
        raise ValueError(f"span_mask takes one waveform [S], got shape {tuple(wav_t.shape)}")
    n = wav_t.numel()
    span = int(n * fraction)
    out = wav_t.clone()
    if span > 0:
        start = int(_rng(rng).integers(0, max(n - span, 1)))
        out[start : start + span] = 0
    return _back(out, was_np)


def speed_perturb(wav, factor: float, sample_rate: int = SAMPLE_RATE):
    """``sox speed``-style perturbation: ``factor`` > 1 is faster and higher; ``[S] -> [≈S/factor]``.

    The signal is read as if sampled at ``sample_rate·factor`` and resampled to ``sample_rate``
    with soxr (the same operation as lhotse's ``Speed``, whose polyphase resampler takes minutes
    for factors like 2^(3/12) where the two rates share no large divisor).
    """
    import soxr

    wav_t, was_np = _as_tensor(wav)
    if factor <= 0:
        raise ValueError(f"factor={factor}: must be > 0")
    x = wav_t.detach().cpu().float().numpy()
    out = soxr.resample(x, sample_rate * factor, sample_rate, quality="HQ")
    out_t = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
    return _back(out_t, was_np)


def time_stretch(wav, rate: float, n_fft: int = STFT_N_FFT, hop: int = STFT_HOP):
    """Phase-vocoder time stretch, pitch kept: ``[S] -> [round(S / rate)]`` (``rate`` > 1 is shorter)."""
    wav_t, was_np = _as_tensor(wav)
    x = wav_t.detach().float()
    window = torch.hann_window(n_fft)
    spec = torch.stft(x, n_fft, hop, window=window, return_complex=True)  # [F, T]
    n_frames = spec.shape[-1]
    steps = torch.arange(0, n_frames, rate, dtype=torch.float64)
    spec = torch.nn.functional.pad(spec, (0, 2))  # room for the frame after the last step
    idx = steps.floor().long()
    frac = (steps - idx).to(torch.float32)[None]  # [1, T']
    mag = (1 - frac) * spec[:, idx].abs() + frac * spec[:, idx + 1].abs()  # [F, T']
    omega = torch.linspace(0, math.pi * hop, spec.shape[0])[:, None]  # expected phase advance per hop
    dphi = spec[:, idx + 1].angle() - spec[:, idx].angle() - omega
    dphi = dphi - 2 * math.pi * torch.round(dphi / (2 * math.pi))  # wrap to [-π, π]
    phase = spec[:, :1].angle() + torch.cumsum(torch.cat([torch.zeros_like(dphi[:, :1]), (omega + dphi)[:, :-1]], 1), 1)
    out_len = int(round(x.numel() / rate))
    out = torch.istft(torch.polar(mag, phase), n_fft, hop, window=window, length=out_len)
    return _back(out.to(wav_t.dtype) if not was_np else out, was_np)


def pitch_shift(wav, semitones: float, sample_rate: int = SAMPLE_RATE):
    """Shift pitch by ``semitones`` keeping the length: speed by ``r = 2^(semitones/12)`` (pitch and
    tempo × r), then time-stretch by ``1/r`` back to ``[S]``."""
    wav_t, was_np = _as_tensor(wav)
    n = wav_t.numel()
    r = 2.0 ** (semitones / 12.0)
    fast = speed_perturb(wav_t.detach().float(), r, sample_rate)
    out = time_stretch(fast, fast.numel() / n)
    return _back(out, was_np)


def mix_cuts(cuts, noise_cuts, snr_db: float, seed: int = 0):
    """Every cut of ``cuts`` mixed with a noise cut at ``snr_db`` — lhotse's own ``CutSet.mix``
    (lazy: nothing is decoded until a batch loads the audio); labels and ids are kept."""
    return cuts.mix(noise_cuts, snr=snr_db, mix_prob=1.0, preserve_id="left", seed=seed)
