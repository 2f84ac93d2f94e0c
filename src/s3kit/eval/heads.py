"""SUPERB probing heads on top of a frozen upstream (s3prl legacy downstreams, REFERENCE-NOTES §F.2).

Dimension legend: ``B`` batch, ``L`` layers, ``T`` frames, ``D`` upstream width, ``P`` projector
width (256; 1024 for ASR), ``C`` classes, ``V`` CTC vocabulary (index 0 = blank), ``K`` intent slots.

Every head starts with s3prl's ``projector = nn.Linear(upstream_dim, project_dim)``, 256 in the
KS / IC / SID / ER / PR configs and 1024 in ``asr/config.yaml``:

* utterance tasks (KS, IC, SID, ER): projector -> mean over valid frames -> ``Linear(P, C)``.
  The projector is affine, so ``mean_t(W x_t + b) = W mean_t(x_t) + b``: the head takes the
  already time-averaged features ``[B, D]`` and is exactly s3prl's ``MeanPoolingLinear``;
* PR: projector -> frame-level ``Linear(P, V)``, CTC (s3prl ``FrameLevelLinear``);
* ASR: projector -> 2-layer BLSTM -> ``Linear(2H, V)``, CTC (SUPERB ASR; rewiring paper App. A),
  with :class:`SpecAugment` on the weighted sum during training (s3prl's runner applies it to the
  featurizer output, before the projector, whenever a config has a ``specaug`` block; only the
  ASR config has one among these tasks).

:class:`WeightedSum` is s3prl's ``Featurizer``: softmax-normalised weights over the hidden
states, initialised to zero (= a uniform average), or one fixed layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PROJECTOR_DIM = 256  # s3prl: KS, IC, SID, ER, PR project the upstream to 256 dims first
ASR_PROJECTOR_DIM = 1024  # s3prl asr/config.yaml: modelrc.project_dim
BLANK = 0  # CTC blank index in every s3kit vocabulary


class WeightedSum(nn.Module):
    """Softmax-weighted sum over layer axis 1: ``[B, L, ...] -> [B, ...]``; or one fixed layer.

    ``layer`` selects index ``layer`` of the L given states with no parameters.
    """

    def __init__(self, num_layers: int, layer: int | None = None):
        super().__init__()
        self.num_layers = num_layers
        self.layer = layer
        if layer is None:
            self.weights = nn.Parameter(torch.zeros(num_layers))
        elif not 0 <= layer < num_layers:
            raise ValueError(f"layer {layer} out of range for {num_layers} states")

    def normalized(self) -> Tensor:
        """``[L]`` layer weights summing to one (one-hot for a fixed layer)."""
        if self.layer is not None:
            return F.one_hot(torch.tensor(self.layer), self.num_layers).float()
        return self.weights.softmax(dim=0)

    def forward(self, states: Tensor) -> Tensor:
        if states.shape[1] != self.num_layers:
            raise ValueError(f"expected {self.num_layers} layers on axis 1, got shape {tuple(states.shape)}")
        if self.layer is not None:
            return states[:, self.layer]
        w = self.weights.softmax(dim=0).to(states.dtype)
        return torch.einsum("bl...,l->b...", states, w)


@dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment on representations ``[B, T, D]``; defaults are s3prl's ``asr/config.yaml``.

    A time warp (window ``W`` frames, bicubic), then ``freq_masks`` feature-dimension masks and
    ``time_masks`` frame masks, zero-filled. Mask widths are drawn uniformly from
    ``[lo, hi)`` per item and mask (s3prl draws ``randint(lo, hi)``, ``hi`` excluded).
    """

    time_warp_window: int = 5
    freq_masks: int = 4
    freq_mask_width: tuple[int, int] = (0, 50)
    time_masks: int = 2
    time_mask_width: tuple[int, int] = (0, 40)

    def __post_init__(self):
        for name in ("freq_mask_width", "time_mask_width"):
            lo, hi = getattr(self, name)
            if not 0 <= lo < hi:
                raise ValueError(f"SpecAugmentConfig.{name}={(lo, hi)}: need 0 <= lo < hi")


def time_warp(x: Tensor, center: int, warped: int) -> Tensor:
    """Stretch frames ``[:center]`` of ``x [T, D]`` to ``warped`` frames and squeeze ``[center:]``
    into the remaining ``T - warped`` (bicubic along time; the feature axis is left as is, since
    interpolation at scale 1 reproduces it). Returns ``[T, D]``."""
    T, D = x.shape
    if not (0 < center < T and 0 < warped < T):
        raise ValueError(f"time_warp: center={center}, warped={warped} must lie in (0, {T})")
    grid = x[None, None]  # (1, 1, T, D)
    left = F.interpolate(grid[:, :, :center], size=(warped, D), mode="bicubic", align_corners=False)
    right = F.interpolate(grid[:, :, center:], size=(T - warped, D), mode="bicubic", align_corners=False)
    return torch.cat([left, right], dim=2)[0, 0]


def axis_masks(size: int, num: int, width: tuple[int, int], batch: int, device=None) -> Tensor:
    """``[B, size]`` bool, True where one of ``num`` random spans per item covers the index.

    Widths ~ U[lo, hi), starts ~ U[0, max(1, size - widest)) with ``widest`` the largest width
    drawn in the batch (s3prl's ``MaskAlongAxis``), so a span can run past a short item's end."""
    widths = torch.randint(width[0], width[1], (batch, num, 1), device=device)
    starts = torch.randint(0, max(1, size - int(widths.max())), (batch, num, 1), device=device)
    pos = torch.arange(size, device=device)[None, None]  # (1, 1, size)
    return ((pos >= starts) & (pos < starts + widths)).any(dim=1)


class SpecAugment(nn.Module):
    """Training-time SpecAugment of a padded batch ``x [B, T, D]`` with valid ``lengths [B]``
    (identity in eval mode). Randomness comes from torch's global generator."""

    def __init__(self, cfg: SpecAugmentConfig = SpecAugmentConfig()):
        super().__init__()
        self.cfg = cfg

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if not self.training:
            return x
        B, T, D = x.shape
        lengths = torch.full((B,), T, dtype=torch.long) if lengths is None else lengths.cpu()
        W = self.cfg.time_warp_window
        out = x.clone()
        if W > 0:
            for b, n in enumerate(lengths.tolist()):
                if n - W <= W:  # too short to warp (s3prl leaves it)
                    continue
                center = int(torch.randint(W, n - W, ()))
                warped = int(torch.randint(center - W, center + W, ())) + 1
                out[b, :n] = time_warp(x[b, :n], center, warped)
        if self.cfg.freq_masks:
            freq = axis_masks(D, self.cfg.freq_masks, self.cfg.freq_mask_width, B, x.device)  # (B, D)
            out = out.masked_fill(freq[:, None, :], 0.0)
        if self.cfg.time_masks:
            time = axis_masks(T, self.cfg.time_masks, self.cfg.time_mask_width, B, x.device)  # (B, T)
            out = out.masked_fill(time[:, :, None], 0.0)
        return out


class UtteranceHead(nn.Module):
    """``Linear(D, P) -> Linear(P, C)`` on time-averaged features ``[B, D] -> [B, C]``."""

    def __init__(self, in_dim: int, num_classes: int, proj_dim: int = PROJECTOR_DIM):
        super().__init__()
        self.projector = nn.Linear(in_dim, proj_dim)
        self.linear = nn.Linear(proj_dim, num_classes)

    def forward(self, pooled: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.linear(self.projector(pooled))


class FrameCTCHead(nn.Module):
    """``Linear(D, P) -> Linear(P, V)`` per frame: ``[B, T, D] -> [B, T, V]`` logits."""

    per_frame = True  # each frame's logits depend on that frame alone (ProbeModel skips padding)

    def __init__(self, in_dim: int, vocab_size: int, proj_dim: int = PROJECTOR_DIM):
        super().__init__()
        self.projector = nn.Linear(in_dim, proj_dim)
        self.linear = nn.Linear(proj_dim, vocab_size)

    def forward(self, frames: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.linear(self.projector(frames))


class BLSTMCTCHead(nn.Module):
    """``Linear(D, P) -> BLSTM x layers (H per direction) -> Linear(2H, V)``: ``[B, T, D] -> [B, T, V]``.

    s3prl's SUPERB ASR downstream uses 2 bidirectional layers of 1024 units with dropout 0.2.
    """

    def __init__(self, in_dim: int, vocab_size: int, proj_dim: int = PROJECTOR_DIM, hidden: int = 1024,
                 layers: int = 2, dropout: float = 0.2):
        super().__init__()
        self.projector = nn.Linear(in_dim, proj_dim)
        self.lstm = nn.LSTM(proj_dim, hidden, num_layers=layers, bidirectional=True, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(2 * hidden, vocab_size)

    def forward(self, frames: Tensor, lengths: Tensor) -> Tensor:
        x = self.projector(frames)  # (B, T, P)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu().clamp_min(1), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # (B, T, 2H)
        return self.linear(self.dropout(out))


class ProbeModel(nn.Module):
    """Layer weighting (+ SpecAugment of the weighted sum in training, as s3prl's runner) + task
    head. ``states``: ``[B, L, D]`` (utterance) or ``[B, L, T, D]`` (frames)."""

    def __init__(self, featurizer: WeightedSum, head: nn.Module, specaug: SpecAugment | None = None):
        super().__init__()
        self.featurizer = featurizer
        self.specaug = specaug
        self.head = head

    def forward(self, states: Tensor, lengths: Tensor | None = None) -> Tensor:
        x = self.featurizer(states)
        if self.specaug is not None:
            x = self.specaug(x, lengths)  # identity in eval mode
        if lengths is not None and x.dim() == 3 and getattr(self.head, "per_frame", False):
            # a per-frame head on the valid frames only (a third of a random PR batch is padding);
            # padded frames get zero logits, which CTC and decoding never read
            valid = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]  # (B, T)
            y = self.head(x[valid])  # (N, V)
            out = y.new_zeros(*valid.shape, y.shape[-1])
            out[valid] = y
            return out
        return self.head(x, lengths)


def slot_cross_entropy(logits: Tensor, targets: Tensor, slot_sizes: Sequence[int]) -> Tensor:
    """IC loss: cross-entropy summed over slots, each averaged over the batch (s3prl fluent_commands).

    ``logits [B, sum(slot_sizes)]`` (slots concatenated), ``targets [B, K]`` class per slot -> scalar.
    """
    if targets.shape[1] != len(slot_sizes) or logits.shape[1] != sum(slot_sizes):
        raise ValueError(f"slot_cross_entropy: logits {tuple(logits.shape)}, targets {tuple(targets.shape)}, "
                         f"slots {list(slot_sizes)} do not fit")
    parts = logits.split(list(slot_sizes), dim=1)
    return sum(F.cross_entropy(p, targets[:, k]) for k, p in enumerate(parts))


def slot_argmax(logits: Tensor, slot_sizes: Sequence[int]) -> Tensor:
    """Predicted class per slot: ``[B, sum(slot_sizes)] -> [B, K]``."""
    return torch.stack([p.argmax(dim=1) for p in logits.split(list(slot_sizes), dim=1)], dim=1)


def ctc_loss(logits: Tensor, lengths: Tensor, targets: list[Tensor]) -> Tensor:
    """CTC with blank 0, per-item loss divided by target length then averaged, infinities zeroed
    (``nn.CTCLoss(zero_infinity=True)`` as in s3prl). ``logits [B, T, V]``, ``lengths [B]``,
    ``targets``: B tensors of token ids (no blanks) -> scalar."""
    log_probs = logits.float().log_softmax(dim=-1).transpose(0, 1)  # (T, B, V)
    target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    flat = torch.cat(list(targets)).long() if targets else torch.zeros(0, dtype=torch.long)
    return F.ctc_loss(log_probs, flat.to(logits.device), lengths.cpu(), target_lengths, blank=BLANK,
                      reduction="mean", zero_infinity=True)
