"""The upstream protocol: waveforms in, one tensor per layer out.

Dimension legend: ``B`` batch, ``S`` samples, ``T`` frames, ``D`` features, ``L`` layers.

``states[0]`` is the input of the first transformer layer (CNN / feature-projection output,
or the feature itself for classical upstreams) and ``states[i]`` the output of layer ``i``,
so "HuBERT layer 9" is ``states[9]`` everywhere in s3kit.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class Hidden:
    """What every upstream returns.

    states: L+1 tensors ``[B, T, D]`` (padded frames beyond ``lengths`` are undefined).
    lengths: ``[B]`` valid frames per item.
    frame_rate: frames per second (50.0 for a 20 ms hop).
    """

    states: list[Tensor]
    lengths: Tensor
    frame_rate: float

    @property
    def mask(self) -> Tensor:
        """``[B, T]`` bool, True on valid frames."""
        T = self.states[0].shape[1]
        return torch.arange(T, device=self.lengths.device)[None, :] < self.lengths[:, None]

    def pooled(self, layers: list[int] | None = None) -> Tensor:
        """Mean over valid frames per layer: ``[B, L', D]`` for the chosen layers (all by default)."""
        layers = list(range(len(self.states))) if layers is None else layers
        m = self.mask.unsqueeze(-1).to(self.states[0].dtype)  # (B, T, 1)
        denom = m.sum(1).clamp_min(1.0)
        return torch.stack([(self.states[i] * m).sum(1) / denom for i in layers], dim=1)


# s3kit's fbank / log-mel encoders (no waveform CNN) under this many parameters infer faster on CPU
# in length-sorted batches of up to 16 s than one at a time (benchmarks/cpu_batching.py, 1 thread,
# medians of 7 paired rounds: tiny MelHuBERT 1.75x on 1 s clips, 1.02x on 1.5-5 s utterances; KWS
# student 1.45x / 1.09x; small M2D ViT 1.88x / 1.50x). Larger ones were not measured: they keep one
# utterance at a time, as HuBERT Base must (s3kit.data.loader.inference_plan).
SMALL_MODEL_PARAMS = 5_000_000
SMALL_MODEL_CPU_BATCH_SECONDS = 16.0


class SmallModelBatching:
    """Mixin for s3kit's fbank / log-mel upstreams: ``cpu_batch_seconds`` is 16 s under 5 M
    parameters, else None (one utterance at a time, the base class's default)."""

    @property
    def cpu_batch_seconds(self) -> float | None:
        small = sum(p.numel() for p in self.parameters()) < SMALL_MODEL_PARAMS
        return SMALL_MODEL_CPU_BATCH_SECONDS if small else None


class Upstream(nn.Module, abc.ABC):
    """Base class: subclasses implement ``forward(wavs [B, S], lengths [B]) -> Hidden``.

    Attributes every upstream sets: ``name``, ``frame_rate`` (Hz), ``num_layers`` (len of
    ``states``), ``hidden_sizes`` (D of each state). ``weighted_sum_layers`` says which states a
    SUPERB weighted sum uses by default (all of them unless an upstream narrows it).
    """

    name: str = "upstream"
    frame_rate: float = 50.0
    hidden_sizes: list[int]
    # seconds of audio per batch for inference on CPU (None: one utterance at a time; see
    # s3kit.data.loader.inference_plan); s3kit's fbank / log-mel models: SmallModelBatching
    cpu_batch_seconds: float | None = None

    @property
    def num_layers(self) -> int:
        return len(self.hidden_sizes)

    @property
    def weighted_sum_layers(self) -> list[int]:
        """State indices the probe's learned weighted sum spans unless told otherwise: every
        state here (s3prl's ``Featurizer`` over all hidden states). An upstream whose paper sums
        fewer overrides this (M2D-S: the transformer layers, not the patch embedding)."""
        return list(range(self.num_layers))

    @abc.abstractmethod
    def num_frames(self, lengths: Tensor) -> Tensor:
        """Valid frames ``[B]`` for ``lengths`` samples ``[B]``."""

    @abc.abstractmethod
    def forward(self, wavs: Tensor, lengths: Tensor | None = None) -> Hidden:
        """``wavs [B, S]`` float at 16 kHz, ``lengths [B]`` samples -> :class:`Hidden`."""


def full_lengths(wavs: Tensor, lengths: Tensor | None) -> Tensor:
    """``lengths`` or, when None, every item at full length ``[B]``."""
    if lengths is None:
        return torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long, device=wavs.device)
    return lengths.to(device=wavs.device, dtype=torch.long)


class EncoderUpstream(Upstream):
    """An s3kit encoder behind the protocol: ``encoder.features(wavs, lengths) -> (feats,
    frame_lengths)`` then ``encoder(feats, frame_lengths) -> states``; ``encoder.config`` has
    ``hidden_size`` and ``num_layers``. Subclasses set ``frame_rate`` and ``num_frames``."""

    def __init__(self, encoder: nn.Module, name: str):
        super().__init__()
        self.encoder = encoder
        self.name = name
        self.hidden_sizes = [encoder.config.hidden_size] * (encoder.config.num_layers + 1)

    def forward(self, wavs: Tensor, lengths: Tensor | None = None) -> Hidden:
        feats, flen = self.encoder.features(wavs, lengths)
        return Hidden(states=self.encoder(feats, flen), lengths=flen, frame_rate=self.frame_rate)
