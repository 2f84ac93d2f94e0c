import torch
from torch import nn

from s3kit.eval.efficiency import count_macs, count_parameters, measure
from s3kit.upstream.base import Hidden, Upstream


class FrameLinear(Upstream):
    """Non-overlapping 400-sample frames -> Linear(400, 8): MACs per second = 40 * 400 * 8."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(400, 8)
        self.hidden_sizes = [8]
        self.frame_rate = 40.0

    def num_frames(self, lengths):
        return lengths // 400

    def forward(self, wavs, lengths=None):
        frames = wavs[:, : wavs.shape[1] // 400 * 400].reshape(wavs.shape[0], -1, 400)  # (B, T, 400)
        out = self.proj(frames)
        return Hidden([out], torch.full((wavs.shape[0],), out.shape[1]), self.frame_rate)


def test_macs_and_params_known_answer():
    up = FrameLinear()
    assert count_parameters(up) == 400 * 8 + 8
    assert count_macs(up, seconds=1.0) == 40 * 400 * 8


def test_measure_reports_consistent_rtf():
    eff = measure(FrameLinear(), seconds=2.0, repeats=3)
    assert eff.params == 3208 and eff.seconds == 2.0
    assert abs(eff.rtf - eff.latency_ms / 1000 / 2.0) < 1e-12 and eff.latency_ms > 0
