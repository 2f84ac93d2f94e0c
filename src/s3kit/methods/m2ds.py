"""M2D-S: Masked Modeling Duo for Speech (Niizumi et al., Interspeech 2023).

Dimension legend: ``B`` batch, ``S`` samples, ``F`` mel bins, ``T`` mel frames (100 Hz), ``N``
patches, ``Nv`` / ``Nm`` visible / masked patches, ``C`` patch time columns, ``Tt`` teacher frames
(50 Hz), ``D`` encoder width, ``Dt`` teacher width.

One training step (paper §3, Fig. 2; constants from §4.1 and REFERENCE-NOTES.md §A):

1. Clean speech crop -> log-mel; noise crop -> log-mel. Both minus their own dataset mean, mixed
   in the linear-mel domain ``log((1-α)·e^speech + α·e^noise)`` (α = 0.2), divided by the speech
   std (:func:`noisy_input`).
2. Random 60 % of the patches are masked (:func:`random_mask`); the online encoder sees the
   visible ones, the predictor predicts every patch; the EMA target encodes the masked ones.
   ``L_m2d`` (eq. 1, :func:`m2d_loss`): MSE of l2-normalised prediction and standardised target.
3. A frozen teacher (HuBERT layer 9) runs on the *clean* speech; its 50 Hz frames are averaged
   onto patch columns (:func:`align_teacher`). ``concat(z_v, ẑ_m)`` per column -> linear -> ĥ;
   ``L_off`` (eq. 2, :func:`offline_loss`).
4. ``L = λ_m2d L_m2d + λ_off L_off`` (eq. 3; 1 and 0.5, Table 6). After each update the target
   moves towards the online encoder with a decay rising linearly 0.99995 -> 0.99999
   (:func:`ema_decay`, :func:`ema_update`).

Table 5's ablations are configs (:data:`TABLE5`, :meth:`M2DSConfig.ablation`).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s3kit.data.augment import mix_log_mel
from s3kit.features import LogMel
from s3kit.models.m2d_vit import (LOG_FLOOR, MEL_HOP, MEL_RATE, SAMPLE_RATE, UPSTREAM_LOADER, M2DViT,
                                  M2DViTConfig, arch_config)
from s3kit.train.trainer import TrainConfig
from s3kit.upstream.base import Upstream

MASK_RATIO = 0.6  # §4.1: fixed masking ratio 0.6
NOISE_RATIO = 0.2  # α, §4.1 / Table 2
LAMBDA_M2D = 1.0  # eq. 3, Table 6
LAMBDA_OFF = 0.5  # eq. 3, Table 6 (README commands of the official code: --loss_off .5)
TEACHER_LAYER = 9  # §4.1: 9th transformer layer of HuBERT Base (hidden_states[9])
EMA_START, EMA_END = 0.99995, 0.99999  # official code: decay rises linearly over training
STD_EPS = 1e-6  # variance floor of the target standardisation (official forward_loss)
NORM_MAX_CUTS = 5000  # official code: dataset mean / std from 5,000 random crops
# LibriSpeech-960 at the paper's batch of 2048 crops: ceil(281,241 / 2048) = 138 updates per
# epoch, 1,000 epochs (§4.1), 60 of them warm-up; lr = blr 3e-4 × 2048 / 256 (MAE's rule).
PAPER_STEPS = 138_000
PAPER_BATCH = 2048


def _paper_train() -> TrainConfig:
    return TrainConfig(out_dir="runs/m2ds", total_steps=PAPER_STEPS, lr=3e-4 * PAPER_BATCH / 256, warmup=60 / 1000,
                       schedule="cosine", optimizer="adamw", betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05,
                       clip=3.0, save_every=10_000)


@dataclass(frozen=True)
class M2DSConfig:
    """M2D-S procedure; defaults = the paper's §4.1 ablation setting (T = 2.08 s, 80 × 4 patches,
    α = 0.2) with Table 6's loss weights. ``recipes/m2ds_final.yaml`` has Table 6's 80 × 2 / 6.08 s.

    ``norm_mean`` / ``norm_std`` (speech) and ``noise_mean``: dataset log-mel statistics; None
    computes them from the manifests (:func:`compute_norm_stats`) before training.
    """

    arch: str = "base"
    input_frames: int = 208  # T = 2.08 s of 10 ms frames
    patch_freq: int = 80
    patch_time: int = 4
    model_overrides: dict[str, Any] = field(default_factory=dict)  # other M2DViTConfig fields
    mask_ratio: float = MASK_RATIO
    noise_ratio: float = NOISE_RATIO  # α; 0 disables denoising (Table 5 b, d)
    lambda_m2d: float = LAMBDA_M2D
    lambda_off: float = LAMBDA_OFF
    teacher_layer: int = TEACHER_LAYER
    teacher_normalize: bool = True  # zero-mean / unit-var waveform for the teacher (§A: wav2vec2 processor)
    offline_standardize: bool = True  # "the same as Eq. (1)": teacher target standardised per frame too
    ema_start: float = EMA_START
    ema_end: float = EMA_END
    norm_mean: float | None = None
    norm_std: float | None = None
    noise_mean: float | None = None
    norm_max_cuts: int = NORM_MAX_CUTS
    batch_size: int = PAPER_BATCH  # crops per update (per process)
    max_duration: float | None = None  # seconds of (cropped) audio per batch; None: batch_size windows
    noise_preload_seconds: float = 3600.0  # keep noise waveforms in memory when the corpus is this small
    cache: bool = True  # cache the teacher's features (fp16, memory-mapped) once per manifest
    train: TrainConfig = field(default_factory=_paper_train)

    def __post_init__(self):
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.noise_ratio <= 1.0:
            raise ValueError(f"noise_ratio must be in [0, 1], got {self.noise_ratio}")
        if self.lambda_m2d < 0 or self.lambda_off < 0 or self.lambda_m2d + self.lambda_off == 0:
            raise ValueError(f"need lambda_m2d, lambda_off >= 0 and not both 0, got {self.lambda_m2d}, {self.lambda_off}")
        if not 0.0 <= self.ema_start <= 1.0 or not 0.0 <= self.ema_end <= 1.0:
            raise ValueError("ema_start and ema_end must be in [0, 1]")

    @property
    def uses_teacher(self) -> bool:
        return self.lambda_off > 0

    @property
    def uses_noise(self) -> bool:
        return self.noise_ratio > 0

    def model_config(self, offline_dim: int | None) -> M2DViTConfig:
        return arch_config(self.arch, input_frames=self.input_frames, patch_freq=self.patch_freq,
                           patch_time=self.patch_time, offline_dim=offline_dim, **self.model_overrides)

    def ablation(self, name: str) -> "M2DSConfig":
        """This config with one of Table 5's task settings (:data:`TABLE5`)."""
        if name not in TABLE5:
            raise ValueError(f"unknown Table 5 ablation {name!r}; choose from {sorted(TABLE5)}")
        return dataclasses.replace(self, **TABLE5[name])


# Table 5 (T = 2.08 s, 80 × 4): which tasks are on. λ's switched between 0 and 1.0, α between 0 and 0.2 (§4.4).
TABLE5: dict[str, dict[str, float]] = {
    "a": dict(lambda_m2d=1.0, lambda_off=0.0, noise_ratio=0.2),  # M2D only (on noisy speech)
    "b": dict(lambda_m2d=0.0, lambda_off=1.0, noise_ratio=0.0),  # distillation only
    "c": dict(lambda_m2d=0.0, lambda_off=1.0, noise_ratio=0.2),  # denoising distillation
    "d": dict(lambda_m2d=1.0, lambda_off=1.0, noise_ratio=0.0),  # M2D + distillation, no denoising
    "e": dict(lambda_m2d=1.0, lambda_off=1.0, noise_ratio=0.2),  # M2D-S: all
}
# Table 5's SUPERB results (PR PER, KS, IC, SID, ER accuracy, %) for the docs and reports.
TABLE5_PAPER = {
    "a": (11.87, 93.30, 93.28, 78.46, 61.75), "b": (8.10, 94.33, 94.81, 65.51, 61.27),
    "c": (7.80, 93.88, 93.38, 70.03, 61.58), "d": (8.78, 90.90, 91.35, 62.68, 58.63),
    "e": (7.02, 97.36, 97.10, 78.12, 64.09),
}


# ============================================================================ pure functions


def random_mask(B: int, N: int, ratio: float = MASK_RATIO, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Random unstructured mask: ``(visible [B, Nv], masked [B, Nm])`` patch indices, each row
    sorted, together a partition of ``0..N-1``. ``Nv = int(N·(1-ratio))`` (the official code's
    ``len_keep``), ``Nm = N - Nv``; a fresh random permutation per item."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    keep = int(N * (1 - ratio))
    if keep < 1:
        raise ValueError(f"{N} patches at mask ratio {ratio} leave no visible patch")
    noise = torch.rand(B, N, generator=generator, device=generator.device if generator is not None else None)
    order = noise.argsort(dim=1)
    visible = order[:, :keep].sort(dim=1).values
    masked = order[:, keep:].sort(dim=1).values
    return visible.to(device) if device is not None else visible, masked.to(device) if device is not None else masked


def ema_decay(step: int, total: int, start: float = EMA_START, end: float = EMA_END) -> float:
    """EMA decay τ after update ``step`` of ``total``: linear from ``start`` to ``end``, then ``end``."""
    if total <= 0:
        return end
    return start + (end - start) * min(max(step / total, 0.0), 1.0)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    """``ξ ← τ·ξ + (1-τ)·θ`` for every parameter pair (same structure, in order)."""
    t_params, o_params = list(target.parameters()), list(online.parameters())
    if len(t_params) != len(o_params):
        raise ValueError(f"target has {len(t_params)} parameters, online {len(o_params)}")
    for t, o in zip(t_params, o_params):
        t.mul_(decay).add_(o.detach().to(t.dtype), alpha=1.0 - decay)


def standardize(x: Tensor, eps: float = STD_EPS) -> Tensor:
    """Per-vector ``(x - mean) / sqrt(var + eps)`` over the last axis (unbiased variance)."""
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps)


def normalized_mse(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """``mean ||l2(pred) - l2(target)||² = mean (2 - 2 cos)`` over vectors ``[..., D]``;
    ``valid [...]`` bool picks the vectors that count."""
    per = (F.normalize(pred.float(), dim=-1) - F.normalize(target.float(), dim=-1)).pow(2).sum(-1)
    if valid is None:
        return per.mean()
    valid = valid.to(per.dtype)
    return (per * valid).sum() / valid.sum().clamp_min(1.0)


def m2d_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Eq. 1: ``||l2(ẑ_m) - l2(z̃_m)||²`` with ``z̃_m`` the target standardised per token.

    pred, target: ``[B, Nm, D]`` (predictions and target outputs of the masked patches); the
    target carries no gradient. Returns a scalar in ``[0, 4]``.
    """
    return normalized_mse(pred, standardize(target.detach().float()), valid)


def offline_loss(pred: Tensor, teacher: Tensor, valid: Tensor | None = None, standardize_target: bool = True) -> Tensor:
    """Eq. 2: ``||l2(h) - l2(ĥ)||²`` per patch column. pred ĥ, teacher h: ``[B, C, Dt]``;
    ``valid [B, C]`` bool marks columns with teacher frames. The teacher target is standardised
    per frame first when ``standardize_target`` ("the same as Eq. (1)"; the official code does)."""
    target = teacher.detach().float()
    return normalized_mse(pred, standardize(target) if standardize_target else target, valid)


def align_teacher(teacher: Tensor, num_columns: int, patch_width: int, mel_per_teacher: int = 2,
                  lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Teacher frames onto patch time columns: ``[B, Tt, Dt] -> ([B, C, Dt], valid [B, C])``.

    Frame ``i`` of the teacher covers mel frames ``[r·i, r·(i+1))`` (``r = mel_per_teacher``,
    2 for a 50 Hz teacher on 100 Hz mels); column ``c`` of ``patch_width`` mel frames covers
    teacher frames ``[c·k, (c+1)·k)`` with ``k = patch_width / r`` and gets their mean (80 × 2:
    one frame each, 80 × 4: the mean of two, as the official dataset does). A column is valid
    when all its frames are (``< lengths``); missing frames are zero.
    """
    if patch_width % mel_per_teacher:
        raise ValueError(f"patch width {patch_width} mel frames is not a whole number of teacher frames "
                         f"({mel_per_teacher} mel frames each)")
    B, Tt, D = teacher.shape
    k = patch_width // mel_per_teacher
    need = num_columns * k
    lengths = torch.full((B,), Tt, device=teacher.device) if lengths is None else lengths.to(teacher.device)
    frame_ok = torch.arange(need, device=teacher.device)[None, :] < lengths.clamp_max(Tt)[:, None]  # (B, need)
    t = teacher[:, :need] if Tt >= need else F.pad(teacher, (0, 0, 0, need - Tt))
    t = t * frame_ok[..., None].to(t.dtype)
    aligned = t.view(B, num_columns, k, D).mean(2)
    valid = frame_ok.view(B, num_columns, k).all(-1)
    return aligned, valid


def noisy_input(speech: Tensor, noise: Tensor | None, alpha: float, speech_mean: float, speech_std: float,
                noise_mean: float = 0.0) -> Tensor:
    """The M2D input: speech and noise log-mels ``[..., F, T]`` each minus its dataset mean, mixed
    in the linear-mel domain at noise ratio ``alpha`` (:func:`~s3kit.data.augment.mix_log_mel`),
    divided by the speech std (official ``MixedSpeechDataset``). ``alpha = 0`` or no noise gives
    the clean normalised log-mel ``(speech - mean) / std``."""
    clean = speech - speech_mean
    if noise is None or alpha == 0:
        return clean / speech_std
    return mix_log_mel(clean, noise - noise_mean, alpha) / speech_std


# ============================================================================ data helpers


@torch.no_grad()
def compute_norm_stats(cuts, max_cuts: int | None = NORM_MAX_CUTS, seed: int = 0, progress: bool = True,
                       logmel: LogMel | None = None, bad_audio=None) -> tuple[float, float]:
    """Scalar mean and std of the M2D-S log-mel over all bins and valid frames of up to
    ``max_cuts`` randomly chosen cuts (the official code uses 5,000 random crops).
    ``bad_audio`` (:class:`~s3kit.data.badaudio.BadAudio`): unusable cuts stop (default) or are left out."""
    import numpy as np
    from tqdm.auto import tqdm

    from s3kit.data.badaudio import try_load
    from s3kit.data.manifest import load_cuts

    cuts = load_cuts(cuts) if isinstance(cuts, (str, Path)) else cuts
    items = list(cuts)
    if not items:
        raise ValueError("cannot compute log-mel statistics of an empty manifest")
    if max_cuts is not None and len(items) > max_cuts:
        pick = np.random.default_rng(seed).choice(len(items), size=max_cuts, replace=False)
        items = [items[i] for i in sorted(pick)]
    logmel = logmel or LogMel()
    total, total_sq, count = 0.0, 0.0, 0
    for cut in tqdm(items, desc="log-mel stats", disable=not progress, dynamic_ncols=True):
        audio, bad = try_load(cut, bad_audio.policy if bad_audio is not None else "error")
        if bad_audio is not None:
            bad_audio.record([bad] if bad else [], tried=1)
        if bad is not None:
            continue
        wav = torch.from_numpy(audio)[None]
        mel, _ = logmel(wav)
        m = mel.double()
        total += float(m.sum())
        total_sq += float(m.pow(2).sum())
        count += m.numel()
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean**2, 0.0))
    return mean, std


class NoiseBank:
    """Random noise crops: a random cut, tiled when short, cropped at a random offset.

    Waveforms are kept in memory when the corpus totals at most ``preload_seconds``; otherwise
    each draw reads its file.
    """

    def __init__(self, cuts, preload_seconds: float = 3600.0, progress: bool = False, bad_audio=None):
        from s3kit.data.badaudio import BadAudio
        from s3kit.data.manifest import load_cuts

        cuts = load_cuts(cuts) if isinstance(cuts, (str, Path)) else cuts
        self.cuts = list(cuts)
        if not self.cuts:
            raise ValueError("the noise manifest is empty")
        # unusable noise files stop (default) or are dropped from the bank (s3kit.data.badaudio)
        self.bad_audio = bad_audio or BadAudio("error", total=len(self.cuts))
        self.wavs = None
        if sum(c.duration for c in self.cuts) <= preload_seconds:
            loaded = [(c, self._load(c)) for c in self.cuts]
            self.cuts = [c for c, w in loaded if w is not None]
            self.wavs = [w for _, w in loaded if w is not None]
            if not self.cuts:
                raise ValueError("no usable file in the noise manifest")

    def _load(self, cut) -> Tensor | None:
        from s3kit.data.badaudio import try_load

        audio, bad = try_load(cut, self.bad_audio.policy)
        self.bad_audio.record([bad] if bad else [], tried=1)
        return None if audio is None else torch.from_numpy(audio)

    def __len__(self) -> int:
        return len(self.cuts)

    def draw(self, n: int, samples: int, generator: torch.Generator | None = None) -> Tensor:
        """``[n, samples]`` float32 noise crops."""
        out = torch.empty(n, samples)
        for b in range(n):
            wav = None
            while wav is None:
                if not self.cuts:
                    raise ValueError("no usable file in the noise manifest")
                i = int(torch.randint(len(self.cuts), (), generator=generator))
                wav = self.wavs[i] if self.wavs is not None else self._load(self.cuts[i])
                if wav is None:  # skipped: draw from the others from now on
                    self.cuts.pop(i)
            if wav.numel() < samples:
                wav = wav.repeat(math.ceil(samples / wav.numel()))
            start = int(torch.randint(wav.numel() - samples + 1, (), generator=generator))
            out[b] = wav[start:start + samples]
        return out


def _batch_parts(batch) -> tuple[Tensor, Tensor, list | None]:
    if hasattr(batch, "wavs"):
        return batch.wavs, batch.lengths, getattr(batch, "cuts", None)
    if isinstance(batch, dict):
        return batch["wavs"], batch["lengths"], batch.get("cuts")
    return batch[0], batch[1], None


def _shift_left(wavs: Tensor, lengths: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the first ``shift[b]`` samples of each item: ``[B, S] -> [B, S]`` (zero-filled tail)."""
    if not bool(shift.any()):
        return wavs, lengths
    S = wavs.shape[1]
    idx = shift[:, None] + torch.arange(S, device=wavs.device)[None]
    out = wavs.gather(1, idx.clamp_max(S - 1)) * (idx < S)
    return out, (lengths - shift).clamp_min(0)


# ============================================================================ the method


class M2DS(nn.Module):
    """The training method: ``step(batch) -> {"loss", "m2d", "off"}``; ``on_step_end`` moves the EMA.

    Args:
        model: :class:`~s3kit.models.m2d_vit.M2DViT` (``offline_dim`` = teacher width when
            ``lambda_off > 0``), with its normalisation statistics set.
        cfg: :class:`M2DSConfig`.
        teacher: frozen :class:`~s3kit.upstream.Upstream` at 50 Hz (``cfg.teacher_layer`` is used);
            None when ``lambda_off == 0``.
        noise: :class:`NoiseBank`; None when ``noise_ratio == 0``.
        cache: optional :class:`~s3kit.train.cache.TeacherCache` of ``[teacher_layer]`` per utterance.
        cut_starts: ``{cut_id: start}`` of the manifest the cache was built from, to locate a
            loader-cropped window inside the cached utterance.
    """

    def __init__(self, model: M2DViT, cfg: M2DSConfig = M2DSConfig(), teacher: Upstream | None = None,
                 noise: NoiseBank | None = None, noise_mean: float = 0.0, cache=None,
                 cut_starts: dict[str, float] | None = None):
        super().__init__()
        self.cfg = cfg
        self.model = model
        mc = model.cfg
        self.logmel = LogMel(n_mels=mc.n_mels)
        self.crop_frames = mc.input_frames
        self.mel_per_teacher = 2
        if cfg.uses_teacher:
            if teacher is None:
                raise ValueError(f"lambda_off={cfg.lambda_off} needs a teacher (or lambda_off=0 for M2D only)")
            if not 0 <= cfg.teacher_layer < teacher.num_layers:
                raise ValueError(f"teacher_layer={cfg.teacher_layer} but the teacher has states 0..{teacher.num_layers - 1}")
            if model.offline is None:
                raise ValueError("lambda_off > 0 needs an M2DViT built with offline_dim = the teacher width")
            ratio = MEL_RATE / teacher.frame_rate
            if abs(ratio - round(ratio)) > 1e-6:
                raise ValueError(f"teacher frame rate {teacher.frame_rate} Hz is not a divisor of {MEL_RATE} Hz")
            self.mel_per_teacher = int(round(ratio))
            if mc.patch_time % self.mel_per_teacher:
                raise ValueError(f"patch_time={mc.patch_time} mel frames is not a whole number of "
                                 f"{teacher.frame_rate:g} Hz teacher frames")
            teacher.eval().requires_grad_(False)
        self.teacher = teacher if cfg.uses_teacher else None
        if cfg.uses_noise and noise is None:
            raise ValueError(f"noise_ratio={cfg.noise_ratio} needs a noise corpus (or noise_ratio=0: no denoising)")
        self.noise = noise if cfg.uses_noise else None
        self.noise_mean = float(noise_mean)
        if cache is not None and list(cache.layers) != [cfg.teacher_layer]:
            raise ValueError(f"teacher cache holds layers {cache.layers}, M2D-S needs [{cfg.teacher_layer}]")
        self.cache = cache
        self.cut_starts = cut_starts or {}

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen whatever the trainer asks
        return self

    # -- optimiser: AdamW without weight decay on biases and norms (timm add_weight_decay) ----------
    def param_groups(self) -> list[dict]:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad or name.startswith("target."):
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def on_step_end(self, step: int) -> None:
        if self.cfg.lambda_m2d == 0:
            return  # no target network in use (Table 5 b, c)
        decay = ema_decay(step, self.cfg.train.total_steps, self.cfg.ema_start, self.cfg.ema_end)
        for target, online in self.model.online_target_pairs():
            ema_update(target, online, decay)

    # -- data -------------------------------------------------------------------------------------
    def _teacher_frames(self, wavs: Tensor, lengths: Tensor, cuts) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Clean-speech teacher frames aligned with sample 0 of the (shifted) batch:
        ``(wavs, lengths, frames [B, Tt, Dt], frame_lengths [B])``."""
        stride = MEL_HOP * self.mel_per_teacher  # samples per teacher frame (320)
        ids = [c.id for c in cuts] if cuts is not None else None
        if self.cache is not None and ids is not None and all(i in self.cache for i in ids):
            # the loader may have cropped a window out of the cached utterance: start at the next
            # whole teacher frame so mel frames and cached teacher frames stay aligned
            offsets = torch.tensor([round((c.start - self.cut_starts.get(c.id, 0.0)) * SAMPLE_RATE) for c in cuts],
                                   device=wavs.device)
            shift = (-offsets) % stride
            wavs, lengths = _shift_left(wavs, lengths, shift)
            first = ((offsets + shift) // stride).tolist()
            feats = self.cache.get(ids)
            need = int(self.logmel.num_frames(lengths.max().cpu()) // self.mel_per_teacher) + 1
            out = wavs.new_zeros(len(ids), need, self.cache.dim)
            n_ok = torch.zeros(len(ids), dtype=torch.long)
            for b, f in enumerate(feats):
                seg = f[first[b]: first[b] + need, 0]
                out[b, :len(seg)] = torch.from_numpy(seg.astype("float32")).to(out.device)
                n_ok[b] = min(len(seg), int(lengths[b]) // stride)  # frames the loaded window covers
            return wavs, lengths, out, n_ok.to(wavs.device)
        with torch.no_grad(), torch.autocast(wavs.device.type, enabled=False):
            hidden = self.teacher(wavs.float(), lengths)
        return wavs, lengths, hidden.states[self.cfg.teacher_layer].float(), hidden.lengths.to(wavs.device)

    def _crops(self, mel: Tensor, mel_len: Tensor, generator) -> Tensor:
        """Per-item crop starts ``[B]`` in mel frames, multiples of ``mel_per_teacher``."""
        r = self.mel_per_teacher
        room = ((mel_len - self.crop_frames).clamp_min(0) // r).cpu()
        return (torch.floor(torch.rand(len(room), generator=generator) * (room + 1)).long() * r).to(mel.device)

    def prepare(self, batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The step's inputs: ``speech`` clean log-mel crops ``[B, F, crop]`` (not normalised),
        ``x`` the normalised noisy M2D input ``[B, F, crop]``, ``starts [B]`` crop starts in mel
        frames and, with a teacher, ``teacher [B, C, Dt]`` aligned to patch columns + ``valid [B, C]``."""
        wavs, lengths, cuts = _batch_parts(batch)
        lengths = lengths.to(wavs.device)
        cfg, mc = self.cfg, self.model.cfg
        teacher = t_len = None
        if cfg.uses_teacher:
            wavs, lengths, teacher, t_len = self._teacher_frames(wavs, lengths, cuts)
        with torch.no_grad():
            mel, mel_len = self.logmel(wavs, lengths)  # (B, T, F)
        B, T, _ = mel.shape
        starts = self._crops(mel, mel_len, generator)  # (B,)
        idx = starts[:, None] + torch.arange(self.crop_frames, device=mel.device)[None]  # (B, crop)
        ok = idx < mel_len[:, None]  # frames past an utterance: silence, as zero padding gives
        speech = mel.gather(1, idx.clamp_max(T - 1)[..., None].expand(-1, -1, mel.shape[-1]))
        speech = torch.where(ok[..., None], speech, speech.new_full((), LOG_FLOOR)).transpose(1, 2)  # (B, F, crop)
        noise = None
        if self.noise is not None:
            samples = (self.crop_frames - 1) * MEL_HOP  # centred STFT: exactly crop_frames frames
            noise_wav = self.noise.draw(B, samples, generator).to(wavs.device)
            with torch.no_grad():
                noise = self.logmel(noise_wav)[0].transpose(1, 2)  # (B, F, crop)
        enc = self.model.encoder
        out = {"speech": speech, "starts": starts,
               "x": noisy_input(speech, noise, cfg.noise_ratio, enc.norm_mean, enc.norm_std, self.noise_mean)}
        if cfg.uses_teacher:
            r = self.mel_per_teacher
            t_idx = (starts // r)[:, None] + torch.arange(self.crop_frames // r, device=mel.device)[None]  # (B, crop/r)
            t_ok = t_idx < t_len[:, None]
            t_crop = teacher.gather(1, t_idx.clamp_max(teacher.shape[1] - 1)[..., None].expand(-1, -1, teacher.shape[-1]))
            out["teacher"], out["valid"] = align_teacher(t_crop * t_ok[..., None], mc.grid[1], mc.patch_time, r,
                                                         t_ok.sum(1))
        return out

    def losses(self, batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        cfg, mc = self.cfg, self.model.cfg
        inputs = self.prepare(batch, generator)
        x = inputs["x"]
        visible, masked = random_mask(x.shape[0], mc.num_patches, cfg.mask_ratio, generator=generator, device=x.device)
        out = self.model(x, visible, masked, with_target=cfg.lambda_m2d > 0)
        result: dict[str, Tensor] = {}
        loss = x.new_zeros(())
        if cfg.lambda_m2d > 0:
            pred_m = out["pred"].gather(1, masked[..., None].expand(-1, -1, out["pred"].shape[-1]))
            result["m2d"] = m2d_loss(pred_m, out["z_m"])
            loss = loss + cfg.lambda_m2d * result["m2d"]
        if cfg.uses_teacher:
            h_hat = self.model.offline_prediction(out["z_v"], out["pred"], visible, masked)  # (B, C, Dt)
            result["off"] = offline_loss(h_hat, inputs["teacher"], inputs["valid"], cfg.offline_standardize)
            loss = loss + cfg.lambda_off * result["off"]
        result["loss"] = loss
        return result

    def step(self, batch) -> dict[str, Tensor]:
        return self.losses(batch)

    def validate(self, batch) -> dict[str, Tensor]:
        # a fixed mask / crop / noise per batch so validation curves are comparable across steps
        ids = getattr(batch, "ids", None) or []
        gen = torch.Generator().manual_seed(zlib.crc32("|".join(ids).encode()))
        return self.losses(batch, generator=gen)

    # -- checkpoints: the M2D model only (the teacher is frozen and large) ---------------------------
    def checkpoint_state(self) -> dict[str, Tensor]:
        return {f"model.{k}": v for k, v in self.model.state_dict().items()}

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        from s3kit.checkpoint import check_compatible

        body = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
        check_compatible(self.model, body, source="M2D-S checkpoint")
        self.model.load_state_dict(body)

    def checkpoint_meta(self) -> dict:
        from s3kit.config import to_dict

        enc = self.model.encoder
        return {"upstream": UPSTREAM_LOADER, "m2d_vit": to_dict(self.model.cfg), "encoder_prefix": "model.encoder.",
                "norm_stats": [float(enc.norm_mean), float(enc.norm_std)], "noise_mean": self.noise_mean}


# ============================================================================ end to end


def _cuts(x):
    from s3kit.data.manifest import load_cuts

    return load_cuts(x) if isinstance(x, (str, Path)) else x


def build_method(speech, noise=None, teacher=None, cfg: M2DSConfig = M2DSConfig(), cache_dir=None,
                 device: torch.device | str = "cpu", progress: bool = True) -> M2DS:
    """The :class:`M2DS` method for ``speech`` / ``noise`` CutSets (or paths) and a teacher
    (Upstream, or a name / directory for :func:`s3kit.upstream.load_upstream`): normalisation
    statistics computed when ``cfg`` has none, teacher features cached when ``cfg.cache``."""
    from s3kit.upstream import load_upstream
    from s3kit.upstream.hf import HFUpstream

    from s3kit.data.badaudio import BadAudio

    cuts = _cuts(speech)
    mean, std = cfg.norm_mean, cfg.norm_std
    if mean is None or std is None:
        bad = BadAudio(cfg.train.on_bad_audio, cfg.train.max_bad_share, total=min(len(cuts), cfg.norm_max_cuts or len(cuts)))
        mean, std = compute_norm_stats(cuts, cfg.norm_max_cuts, seed=cfg.train.seed, progress=progress, bad_audio=bad)
    bank, noise_mean = None, 0.0
    if cfg.uses_noise:
        if noise is None:
            raise ValueError(f"noise_ratio={cfg.noise_ratio}: pass a noise manifest (--noise), "
                             f"or set noise_ratio=0 to train without denoising")
        ncuts = _cuts(noise)
        noise_mean = cfg.noise_mean
        noise_bad = BadAudio(cfg.train.on_bad_audio, cfg.train.max_bad_share, total=len(ncuts))  # noise is training data
        if noise_mean is None:
            noise_mean, _ = compute_norm_stats(ncuts, cfg.norm_max_cuts, seed=cfg.train.seed, progress=progress,
                                               bad_audio=BadAudio(noise_bad.policy, noise_bad.max_share,
                                                                  min(len(ncuts), cfg.norm_max_cuts or len(ncuts))))
        bank = NoiseBank(ncuts, cfg.noise_preload_seconds, bad_audio=noise_bad)
    up, cache, offline_dim = None, None, None
    if cfg.uses_teacher:
        if teacher is None:
            raise ValueError(f"lambda_off={cfg.lambda_off}: pass a teacher (--teacher), or set lambda_off=0 (M2D only)")
        up = teacher if isinstance(teacher, Upstream) else load_upstream(teacher)
        if isinstance(up, HFUpstream):
            up.normalize = cfg.teacher_normalize
        up.to(device)
        offline_dim = up.hidden_sizes[cfg.teacher_layer] if cfg.teacher_layer < up.num_layers else None
        if cfg.cache:
            from s3kit.train import cache as cache_mod

            root = Path(cache_dir) if cache_dir is not None else Path(cfg.train.out_dir) / "teacher_cache"
            root = root / ("wavnorm" if getattr(up, "normalize", False) else "raw")  # the key ignores this option
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():  # rank 0 builds, the others read it after
                if dist.get_rank() == 0:
                    cache_mod.ensure_cache(root, up, [cfg.teacher_layer], cuts, progress=progress,
                                           **cfg.train.bad_audio_options)
                dist.barrier()
            cache = cache_mod.ensure_cache(root, up, [cfg.teacher_layer], cuts, progress=progress,
                                           **cfg.train.bad_audio_options)
    model = M2DViT(cfg.model_config(offline_dim))
    model.encoder.set_norm_stats(mean, std)
    starts = {c.id: float(c.start) for c in cuts} if cache is not None else None
    return M2DS(model, cfg, teacher=up, noise=bank, noise_mean=noise_mean, cache=cache, cut_starts=starts)


def crop_seconds(cfg: M2DSConfig) -> float:
    """Loader window per utterance: one crop plus room to start it on a whole teacher frame."""
    return (cfg.input_frames * MEL_HOP + 3 * 2 * MEL_HOP) / SAMPLE_RATE


def pretrain_m2ds(speech, noise=None, teacher=None, cfg: M2DSConfig = M2DSConfig(), val=None, cache_dir=None,
                  callbacks=(), progress: bool = True):
    """Pretrain M2D-S on ``speech`` (clean CutSet or manifest) mixed with ``noise``, distilling
    ``teacher``'s layer ``cfg.teacher_layer``; checkpoints under ``cfg.train.out_dir`` are
    upstreams (``s3kit.load_upstream(ckpt)``). Returns ``(TrainResult, method)``."""
    from s3kit.data.loader import make_loader
    from s3kit.train.trainer import setup_distributed, train

    _, world, device = setup_distributed(cfg.train.device)
    cuts = _cuts(speech)
    method = build_method(cuts, noise, teacher, cfg, cache_dir=cache_dir, device=device, progress=progress)
    window = crop_seconds(cfg)
    max_duration = cfg.max_duration if cfg.max_duration is not None else cfg.batch_size * window
    loader = make_loader(cuts, max_duration=max(max_duration, window), max_cuts=cfg.batch_size, shuffle=True,
                         seed=cfg.train.seed, crop=window)
    val_loader = None
    if val is not None:
        val_loader = make_loader(_cuts(val), max_duration=max(max_duration, window), max_cuts=cfg.batch_size,
                                 shuffle=False, crop=window)
    result = train(method, loader, cfg.train, val_data=val_loader, config=cfg, callbacks=list(callbacks))
    return result, method


__all__ = ["M2DS", "M2DSConfig", "NoiseBank", "TABLE5", "TABLE5_PAPER", "align_teacher", "build_method",
           "compute_norm_stats", "ema_decay", "ema_update", "m2d_loss", "noisy_input", "offline_loss",
           "pretrain_m2ds", "random_mask", "standardize"]
