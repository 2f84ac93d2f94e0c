"""Classical features as one-layer upstreams: the social-bias paper's baselines (STFT,
spectrogram, log-mel, MFCC; Table 3) and the fbank that MelHuBERT-style students read.

Dimension legend: ``B`` batch, ``S`` samples, ``T`` frames, ``D`` feature bins.
"""

from __future__ import annotations

from torch import Tensor

from s3kit.features import FEATURES, make_feature
from s3kit.upstream.base import Hidden, Upstream, full_lengths


class ClassicalUpstream(Upstream):
    """One feature module as an upstream with a single state: ``states = [feats [B, T, D]]``."""

    def __init__(self, name: str, feature) -> None:
        super().__init__()
        self.name = name
        self.feature = feature
        self.frame_rate = float(feature.frame_rate)
        self.hidden_sizes = [feature.dim]

    def num_frames(self, lengths: Tensor) -> Tensor:
        """Valid frames ``[B]`` for ``lengths`` samples ``[B]``."""
        return self.feature.num_frames(lengths)

    def forward(self, wavs: Tensor, lengths: Tensor | None = None) -> Hidden:
        """``wavs [B, S]`` float at 16 kHz, ``lengths [B]`` samples -> ``Hidden`` with one state."""
        feats, frame_lengths = self.feature(wavs, full_lengths(wavs, lengths))
        return Hidden(states=[feats], lengths=frame_lengths, frame_rate=self.frame_rate)


def build_classical(name: str, **options) -> ClassicalUpstream:
    """``fbank | mel | mfcc | stft | spectrogram`` (see ``s3kit.features.FEATURES``) as an upstream;
    ``options`` are the feature's keyword arguments, e.g. ``num_mel_bins=64``."""
    return ClassicalUpstream(name, make_feature(name, **options))


__all__ = ["FEATURES", "ClassicalUpstream", "build_classical"]
