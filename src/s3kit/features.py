"""Classical speech features as batched torch modules (CPU and CUDA, differentiable).

Dimension legend: ``B`` batch, ``S`` samples, ``T`` frames, ``F`` feature bins, ``N`` window
samples.

Every module maps ``(wavs [B, S] float at 16 kHz, lengths [B] long or None)`` to
``(feats [B, T, F], frame_lengths [B])`` and has ``dim`` (F), ``frame_rate`` (Hz) and
``num_frames(lengths)``. Frames past ``frame_lengths`` are undefined; the valid frames of a
padded item equal those of the item run alone, because edge padding (Kaldi's / torch's
reflection) is built from each item's own samples rather than from the batch padding.

* :class:`Fbank`, :class:`MFCC`: Kaldi ``compute-fbank-feats`` / ``compute-mfcc-feats``
  (povey window, pre-emphasis 0.97, DC removal, 512-point FFT, Kaldi mel banks), computed
  by lhotse's pure-torch ``Wav2LogFilterBank`` / ``Wav2MFCC``. Kaldi reads int16 samples,
  so the float waveform is multiplied by ``scale`` (2**15 by default, as MelHuBERT's
  ``torchaudio.compliance.kaldi.fbank(wav * 2**15)`` does); ``scale=1.0`` keeps float scale
  (log-mel bins then shift by ``-2 log 2**15``, except where the floor bites).
* :class:`LogMel`: ``log(mel + eps)`` of a centred power STFT, M2D-S's ``wav_to_lms`` front
  end (nnAudio ``MelSpectrogram``: periodic Hann, reflect padding, Slaney mel scale with
  Slaney area normalisation, which is nnAudio's and librosa's default).
* :class:`Spectrogram`: centred STFT magnitude (``power=1``) or power (``power=2``).
"""

from __future__ import annotations

import abc
import difflib
import inspect
import math
import warnings

import torch
from torch import Tensor, nn

SAMPLE_RATE = 16000
KALDI_INT16_SCALE = 2.0**15  # Kaldi feature binaries read 16-bit PCM as raw integers
FLOAT32_EPS = torch.finfo(torch.float32).eps  # Kaldi's log floor and M2D-S's log offset


def _full_lengths(wavs: Tensor, lengths: Tensor | None) -> Tensor:
    if wavs.dim() != 2:
        raise ValueError(f"expected wavs [B, S], got shape {tuple(wavs.shape)}; add a batch axis")
    if lengths is None:
        return torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long, device=wavs.device)
    lengths = lengths.to(device=wavs.device, dtype=torch.long)
    if lengths.shape != (wavs.shape[0],) or bool((lengths > wavs.shape[1]).any()):
        raise ValueError(
            f"lengths {lengths.tolist()} must be [B={wavs.shape[0]}] and <= S={wavs.shape[1]}"
        )
    return lengths


def _edge_padded(wavs: Tensor, lengths: Tensor, first: int, total: int, kaldi: bool) -> Tensor:
    """``[B, total]`` samples ``first .. first + total - 1`` of each item, reflected at its edges.

    Kaldi reflects with the edge sample repeated (``-1 -> 0``, ``n -> n-1``); torch's
    ``reflect`` mode without it (``-1 -> 1``, ``n -> n-2``). Reflection is repeated for items
    shorter than the pad; indices past the batch padding only feed frames beyond the item's
    valid frames.
    """
    n = lengths.clamp_min(1)[:, None]  # (B, 1)
    a = 1 if kaldi else 0
    idx = torch.arange(first, first + total, device=wavs.device).expand(wavs.shape[0], total)
    for _ in range(4):
        idx = torch.where(idx < 0, -idx - a, idx)
        idx = torch.where(idx >= n, 2 * n - 2 + a - idx, idx)
    idx = torch.minimum(idx.clamp_min(0), n - 1)
    return wavs.gather(1, idx)


class _Feature(nn.Module, abc.ABC):
    """Shared framing: ``num_frames`` and the per-item edge padding."""

    dim: int
    frame_rate: float
    win: int  # N, samples per frame
    hop: int  # samples between frames

    @abc.abstractmethod
    def num_frames(self, lengths: Tensor) -> Tensor:
        """Valid frames ``[B]`` for ``lengths`` samples ``[B]``."""

    @abc.abstractmethod
    def _framing(self, S: int) -> int:
        """Index of the first sample of frame 0 (negative: reflected left padding)."""

    def _padded(self, wavs: Tensor, lengths: Tensor, kaldi: bool) -> tuple[Tensor, int]:
        T = int(self.num_frames(torch.tensor([wavs.shape[1]]))[0])
        first = self._framing(wavs.shape[1])
        total = (T - 1) * self.hop + self.win if T > 0 else 0
        return _edge_padded(wavs, lengths, first, total, kaldi), T


class _KaldiFeature(_Feature):
    """Kaldi frame extraction: 25 ms povey windows every 10 ms, ``snip_edges`` optional.

    With ``snip_edges=False`` (default, Kaldi's ``--snip-edges=false`` and lhotse's convention)
    there are ``(S + hop // 2) // hop`` frames and frame ``t`` starts at
    ``t * hop + hop // 2 - N // 2``, reflecting the signal at both ends; with ``True``,
    ``1 + (S - N) // hop`` frames that fit inside the signal.
    """

    frame_rate: float

    def __init__(
        self,
        frame_length_ms: float,
        frame_shift_ms: float,
        snip_edges: bool,
        dither: float,
        scale: float,
        energy_floor: float,
        sample_rate: int,
    ) -> None:
        super().__init__()
        self.win = round(frame_length_ms * sample_rate / 1000)
        self.hop = round(frame_shift_ms * sample_rate / 1000)
        if not 0 < self.hop <= self.win:
            raise ValueError(
                f"need 0 < frame_shift_ms <= frame_length_ms, got {frame_shift_ms}, {frame_length_ms}"
            )
        self.snip_edges = snip_edges
        self.dither = dither
        self.scale = scale
        self.energy_floor = energy_floor
        self.sample_rate = sample_rate
        self.frame_rate = sample_rate / self.hop

    def _lhotse_kwargs(self, window_type: str, preemph_coeff: float, remove_dc_offset: bool) -> dict:
        # lhotse frames the signal it is given; we hand it the already edge-padded signal and
        # ask for snip_edges=True so that it takes exactly our frames (its own reflection at the
        # right edge would read the batch padding of short items).
        return dict(
            sampling_rate=self.sample_rate,
            frame_length=self.win / self.sample_rate,
            frame_shift=self.hop / self.sample_rate,
            round_to_power_of_two=True,
            remove_dc_offset=remove_dc_offset,
            preemph_coeff=preemph_coeff,
            window_type=window_type,
            dither=0.0,
            snip_edges=True,
        )

    def num_frames(self, lengths: Tensor) -> Tensor:
        lengths = torch.as_tensor(lengths, dtype=torch.long)
        if self.snip_edges:
            return torch.where(lengths >= self.win, 1 + (lengths - self.win) // self.hop, 0)
        return (lengths + self.hop // 2) // self.hop

    def _framing(self, S: int) -> int:
        return 0 if self.snip_edges else self.hop // 2 - self.win // 2

    def _prepare(self, wavs: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor, int]:
        """Scaled, dithered, edge-padded ``[B, S']`` signal, ``lengths [B]``, ``T``."""
        lengths = _full_lengths(wavs, lengths)
        x = wavs.float() * self.scale
        if self.dither != 0.0:  # Kaldi's dither, in units of the scaled signal
            x = x + self.dither * torch.randn_like(x)
        padded, T = self._padded(x, lengths, kaldi=True)
        return padded, lengths, T

    def _raw_log_energy(self, padded: Tensor) -> Tensor:
        """``[B, T]`` Kaldi raw log-energy: after DC removal, before pre-emphasis and window."""
        frames = padded.unfold(1, self.win, self.hop)  # (B, T, N)
        frames = frames - frames.mean(-1, keepdim=True)
        log_e = frames.pow(2).sum(-1).clamp_min(FLOAT32_EPS).log()
        if self.energy_floor > 0.0:
            log_e = log_e.clamp_min(math.log(self.energy_floor))
        return log_e


def _build_quietly(cls, **kwargs) -> nn.Module:
    with warnings.catch_warnings():  # lhotse warns on snip_edges=True; we frame ourselves
        warnings.simplefilter("ignore")
        return constants_as_buffers(cls(**kwargs))


def constants_as_buffers(module: nn.Module) -> nn.Module:
    """Turn a module's parameters into (persistent) buffers, in place.

    lhotse's Kaldi layers hold the window, the mel filterbank and the log floor ``_eps`` as
    trainable ``nn.Parameter``s. A front end is a fixed signal transform: an optimiser over
    ``model.parameters()`` would otherwise move them (a floor pushed below zero makes ``log``
    NaN) and they would count as model parameters. State-dict keys are unchanged.
    """
    for sub in list(module.modules()):
        for name, param in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, param.detach().clone())
    return module


class Fbank(_KaldiFeature):
    """Kaldi log mel filterbank ``[B, T, num_mel_bins (+1 with use_energy)]`` at 100 Hz.

    Defaults are ``compute-fbank-feats``'s except ``dither`` (0, deterministic) and
    ``num_mel_bins`` (80). MelHuBERT's front end is ``Fbank(40, window_type="hamming")``.
    """

    def __init__(
        self,
        num_mel_bins: int = 80,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        low_freq: float = 20.0,
        high_freq: float = 0.0,
        window_type: str = "povey",
        preemph_coeff: float = 0.97,
        remove_dc_offset: bool = True,
        use_energy: bool = False,
        energy_floor: float = 0.0,
        dither: float = 0.0,
        snip_edges: bool = False,
        scale: float = KALDI_INT16_SCALE,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        super().__init__(
            frame_length_ms, frame_shift_ms, snip_edges, dither, scale, energy_floor, sample_rate
        )
        from lhotse.features.kaldi.layers import Wav2LogFilterBank

        self.use_energy = use_energy
        self.dim = num_mel_bins + int(use_energy)
        self.fbank = _build_quietly(
            Wav2LogFilterBank,
            **self._lhotse_kwargs(window_type, preemph_coeff, remove_dc_offset),
            use_energy=False,
            low_freq=low_freq,
            high_freq=high_freq,
            num_filters=num_mel_bins,
        )

    def forward(self, wavs: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``wavs [B, S]``, ``lengths [B]`` -> ``feats [B, T, dim]``, ``frame_lengths [B]``."""
        padded, lengths, T = self._prepare(wavs, lengths)
        if T == 0:
            return padded.new_zeros(wavs.shape[0], 0, self.dim), self.num_frames(lengths)
        feats = self.fbank(padded)  # (B, T, num_mel_bins)
        if self.use_energy:  # Kaldi puts the log-energy first
            feats = torch.cat([self._raw_log_energy(padded).unsqueeze(-1), feats], dim=-1)
        return feats, self.num_frames(lengths)


class MFCC(_KaldiFeature):
    """Kaldi MFCC ``[B, T, num_ceps]`` (``3 * num_ceps`` with ``deltas``) at 100 Hz.

    Defaults are ``compute-mfcc-feats``'s (23 mel bins, lifter 22) except ``dither`` (0) and
    ``use_energy`` (False: c0 stays the DCT of the log-mel, as HuBERT's MFCC k-means targets
    use). ``deltas`` appends Kaldi ``add-deltas`` Δ and ΔΔ (window 2, edge frames repeated).
    """

    def __init__(
        self,
        num_ceps: int = 13,
        deltas: bool = False,
        num_mel_bins: int = 23,
        cepstral_lifter: float = 22.0,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        low_freq: float = 20.0,
        high_freq: float = 0.0,
        window_type: str = "povey",
        preemph_coeff: float = 0.97,
        remove_dc_offset: bool = True,
        use_energy: bool = False,
        energy_floor: float = 0.0,
        dither: float = 0.0,
        snip_edges: bool = False,
        scale: float = KALDI_INT16_SCALE,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        super().__init__(
            frame_length_ms, frame_shift_ms, snip_edges, dither, scale, energy_floor, sample_rate
        )
        from lhotse.features.kaldi.layers import Wav2MFCC

        if num_ceps > num_mel_bins:
            raise ValueError(f"num_ceps={num_ceps} must be <= num_mel_bins={num_mel_bins}")
        self.use_energy = use_energy
        self.deltas = deltas
        self.dim = num_ceps * (3 if deltas else 1)
        # lhotse's use_energy=True indexes the batched tensor wrongly; we replace c0 ourselves.
        self.mfcc = _build_quietly(
            Wav2MFCC,
            **self._lhotse_kwargs(window_type, preemph_coeff, remove_dc_offset),
            use_energy=False,
            low_freq=low_freq,
            high_freq=high_freq,
            num_filters=num_mel_bins,
            num_ceps=num_ceps,
            cepstral_lifter=cepstral_lifter,
        )

    def forward(self, wavs: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``wavs [B, S]``, ``lengths [B]`` -> ``feats [B, T, dim]``, ``frame_lengths [B]``."""
        padded, lengths, T = self._prepare(wavs, lengths)
        frame_lengths = self.num_frames(lengths)
        if T == 0:
            return padded.new_zeros(wavs.shape[0], 0, self.dim), frame_lengths
        feats = self.mfcc(padded)  # (B, T, num_ceps)
        if self.use_energy:
            feats = torch.cat([self._raw_log_energy(padded).unsqueeze(-1), feats[..., 1:]], dim=-1)
        if self.deltas:
            feats = add_deltas(feats, frame_lengths)
        return feats, frame_lengths


def _delta_kernels(order: int, window: int) -> list[Tensor]:
    """Kaldi ``DeltaFeatures`` scales: order i is order i-1 convolved with ``j / (2 sum j^2)``."""
    base = torch.arange(-window, window + 1, dtype=torch.float64)
    base = base / (2 * (base[window + 1 :] ** 2).sum())
    kernels = [torch.ones(1, dtype=torch.float64)]
    for _ in range(order):
        prev = kernels[-1]
        out = torch.zeros(len(prev) + 2 * window, dtype=torch.float64)
        for j, w in enumerate(base):
            out[j : j + len(prev)] += w * prev
        kernels.append(out)
    return kernels


def add_deltas(feats: Tensor, lengths: Tensor, order: int = 2, window: int = 2) -> Tensor:
    """Kaldi ``add-deltas``: ``[B, T, F]`` -> ``[B, T, (order + 1) F]``.

    Δ_t = Σ_{j=-w..w} j c_{t+j} / (2 Σ j²), ΔΔ uses the self-convolved filter on c directly;
    frame indices are clamped to each item's ``[0, lengths - 1]`` (edge frames repeated).
    """
    B, T, _ = feats.shape
    t = torch.arange(T, device=feats.device)
    last = (lengths.to(feats.device) - 1).clamp_min(0)[:, None]  # (B, 1)
    out = [feats]
    for kernel in _delta_kernels(order, window)[1:]:
        half = (len(kernel) - 1) // 2
        acc = torch.zeros_like(feats)
        for j, w in enumerate(kernel.tolist()):
            if w == 0.0:
                continue
            idx = torch.minimum((t + j - half).clamp_min(0)[None, :], last)  # (B, T)
            acc = acc + w * feats.gather(1, idx.unsqueeze(-1).expand_as(feats))
        out.append(acc)
    return torch.cat(out, dim=-1)


# --- centred STFT features (torch.stft / nnAudio convention) ---------------------------------


def hz_to_mel(f: Tensor, mel_scale: str = "slaney") -> Tensor:
    """Mel of ``f`` Hz. HTK: 2595 log10(1 + f/700); Slaney: linear (3 mel per 200 Hz) below
    1 kHz, logarithmic above (27 mel per factor 6.4), as librosa and nnAudio (htk=False)."""
    f = torch.as_tensor(f, dtype=torch.float64)
    if mel_scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    if mel_scale != "slaney":
        raise ValueError(f"mel_scale must be 'slaney' or 'htk', got {mel_scale!r}")
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    log_part = min_log_mel + torch.log(f.clamp_min(1e-10) / min_log_hz) / logstep
    return torch.where(f >= min_log_hz, log_part, f / f_sp)


def mel_to_hz(m: Tensor, mel_scale: str = "slaney") -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    m = torch.as_tensor(m, dtype=torch.float64)
    if mel_scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    if mel_scale != "slaney":
        raise ValueError(f"mel_scale must be 'slaney' or 'htk', got {mel_scale!r}")
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filters(
    n_mels: int,
    n_fft: int,
    sample_rate: int = SAMPLE_RATE,
    f_min: float = 0.0,
    f_max: float | None = None,
    mel_scale: str = "slaney",
    norm: str | None = "slaney",
) -> Tensor:
    """``[n_fft // 2 + 1, n_mels]`` triangular filters, edges uniform on the mel scale.

    ``norm="slaney"`` divides each triangle by half its width in Hz (unit area), nnAudio's
    ``norm=1``; ``None`` leaves peaks at 1 (torchaudio's default).
    """
    if norm not in ("slaney", None):
        raise ValueError(f"norm must be 'slaney' or None, got {norm!r}")
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= {sample_rate / 2}, got {f_min}, {f_max}")
    fft_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, hi = hz_to_mel(torch.tensor(f_min), mel_scale), hz_to_mel(torch.tensor(f_max), mel_scale)
    edges = mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64), mel_scale)
    width = edges.diff()  # (n_mels + 1,)
    ramps = edges[:, None] - fft_hz[None, :]  # (n_mels + 2, n_freqs)
    rising = -ramps[:-2] / width[:-1, None]
    falling = ramps[2:] / width[1:, None]
    fb = torch.clamp(torch.minimum(rising, falling), min=0.0)  # (n_mels, n_freqs)
    if norm == "slaney":
        fb = fb * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return fb.T.float().contiguous()


class _CenteredStft(_Feature):
    """Periodic-Hann STFT; ``center=True`` reflect-pads ``n_fft // 2`` samples each side
    (``1 + S // hop`` frames), ``center=False`` keeps the ``1 + (S - n_fft) // hop`` that fit."""

    def __init__(
        self, n_fft: int, hop_length: int, win_length: int | None, center: bool, sample_rate: int
    ) -> None:
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        if not 0 < win_length <= n_fft or hop_length <= 0:
            raise ValueError(
                f"need 0 < win_length <= n_fft and hop_length > 0, got {win_length}, {n_fft}, {hop_length}"
            )
        self.win, self.hop, self.n_fft, self.center = n_fft, hop_length, n_fft, center
        self.sample_rate = sample_rate
        self.frame_rate = sample_rate / hop_length
        left = (n_fft - win_length) // 2  # torch.stft centres a shorter window in the frame
        window = torch.zeros(n_fft)
        window[left : left + win_length] = torch.hann_window(win_length, periodic=True)
        self.register_buffer("window", window, persistent=False)

    def num_frames(self, lengths: Tensor) -> Tensor:
        lengths = torch.as_tensor(lengths, dtype=torch.long)
        if self.center:
            return 1 + lengths // self.hop
        return torch.where(lengths >= self.n_fft, 1 + (lengths - self.n_fft) // self.hop, 0)

    def _framing(self, S: int) -> int:
        return -(self.n_fft // 2) if self.center else 0

    def magnitude(self, wavs: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """``|STFT|`` ``[B, T, n_fft // 2 + 1]`` and ``frame_lengths [B]``."""
        lengths = _full_lengths(wavs, lengths)
        padded, T = self._padded(wavs.float(), lengths, kaldi=False)
        if T == 0:  # center=False and the whole batch is shorter than one window
            return padded.new_zeros(wavs.shape[0], 0, self.n_fft // 2 + 1), self.num_frames(lengths)
        frames = padded.unfold(1, self.n_fft, self.hop)  # (B, T, n_fft)
        spec = torch.fft.rfft(frames * self.window, dim=-1).abs()  # (B, T, n_fft // 2 + 1)
        return spec, self.num_frames(lengths).to(wavs.device)


class Spectrogram(_CenteredStft):
    """STFT magnitude (``power=1``, "stft") or power spectrogram (``power=2``), linear scale."""

    def __init__(
        self,
        power: float = 1.0,
        n_fft: int = 400,
        hop_length: int = 160,
        win_length: int | None = None,
        center: bool = True,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        super().__init__(n_fft, hop_length, win_length, center, sample_rate)
        if power <= 0:
            raise ValueError(f"power must be > 0, got {power}")
        self.power = power
        self.dim = n_fft // 2 + 1

    def forward(self, wavs: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``wavs [B, S]``, ``lengths [B]`` -> ``feats [B, T, n_fft // 2 + 1]``, ``frame_lengths [B]``."""
        spec, frame_lengths = self.magnitude(wavs, lengths)
        return (spec if self.power == 1.0 else spec.pow(self.power)), frame_lengths


class LogMel(_CenteredStft):
    """``log(mel + eps)`` ``[B, T, n_mels]``: M2D-S's log-mel (paper §3, ``wav_to_lms.py``).

    Defaults match its nnAudio ``MelSpectrogram(sr=16000, n_fft=400, win_length=400,
    hop_length=160, n_mels=80, fmin=50, fmax=8000, center=True, power=2)``; nnAudio's
    defaults give Slaney mel scale and Slaney area norm. ``mel_scale="htk", norm=None`` gives
    torchaudio's ``MelSpectrogram`` filters instead.
    """

    def __init__(
        self,
        n_mels: int = 80,
        f_min: float = 50.0,
        f_max: float = 8000.0,
        n_fft: int = 400,
        hop_length: int = 160,
        win_length: int | None = None,
        power: float = 2.0,
        center: bool = True,
        eps: float = FLOAT32_EPS,
        mel_scale: str = "slaney",
        norm: str | None = "slaney",
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        super().__init__(n_fft, hop_length, win_length, center, sample_rate)
        self.power, self.eps, self.dim = power, eps, n_mels
        fb = mel_filters(n_mels, n_fft, sample_rate, f_min, f_max, mel_scale, norm)
        self.register_buffer("fb", fb, persistent=False)  # (n_fft // 2 + 1, n_mels)

    def forward(self, wavs: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``wavs [B, S]``, ``lengths [B]`` -> ``feats [B, T, n_mels]``, ``frame_lengths [B]``."""
        spec, frame_lengths = self.magnitude(wavs, lengths)
        mel = spec.pow(self.power) @ self.fb  # (B, T, n_mels)
        return torch.log(mel + self.eps), frame_lengths


def _stft(**options) -> Spectrogram:
    return Spectrogram(power=options.pop("power", 1.0), **options)


def _power_spectrogram(**options) -> Spectrogram:
    return Spectrogram(power=options.pop("power", 2.0), **options)


FEATURES = {
    "fbank": Fbank,
    "mel": LogMel,
    "mfcc": MFCC,
    "stft": _stft,  # STFT magnitude
    "spectrogram": _power_spectrogram,  # power spectrogram
}


def _close(word: str, choices) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1)
    return f" Did you mean {match[0]!r}?" if match else ""


def make_feature(name: str, **options) -> _Feature:
    """Build a feature module by name (``FEATURES``); options are the class's keyword args."""
    if name not in FEATURES:
        raise ValueError(f"unknown feature {name!r}; choose from {sorted(FEATURES)}.{_close(name, FEATURES)}")
    factory = FEATURES[name]
    cls = Spectrogram if factory in (_stft, _power_spectrogram) else factory
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in options:
        if key not in allowed:
            raise ValueError(
                f"unknown option {key!r} for feature {name!r}; valid options: {allowed}."
                f"{_close(key, allowed)}"
            )
    return factory(**options)
