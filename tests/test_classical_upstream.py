"""Classical features behind the Upstream protocol."""

from __future__ import annotations

import math

import pytest
import torch

from s3kit.features import FEATURES, make_feature
from s3kit.upstream.base import Hidden, Upstream
from s3kit.upstream.classical import ClassicalUpstream, build_classical

DIMS = {"fbank": 80, "mel": 80, "mfcc": 13, "stft": 201, "spectrogram": 201}


def wave(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    return 0.3 * torch.sin(2 * math.pi * (200 + 50 * seed) * t) + 0.05 * torch.randn(n, generator=g)


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_hidden_shapes_and_lengths(name):
    up = build_classical(name)
    assert isinstance(up, Upstream) and isinstance(up, ClassicalUpstream)
    assert up.name == name and up.frame_rate == 100.0
    assert up.hidden_sizes == [DIMS[name]] and up.num_layers == 1
    lens = torch.tensor([16000, 8000, 4000])
    wavs = torch.zeros(3, 16000)
    for i, n in enumerate(lens.tolist()):
        wavs[i, :n] = wave(n, i)
    hidden = up(wavs, lens)
    assert isinstance(hidden, Hidden) and len(hidden.states) == 1
    expected = up.num_frames(lens)
    # 10 ms hop: about 100 frames per second of audio
    assert (expected - lens // 160).abs().max() <= 1
    assert hidden.lengths.tolist() == expected.tolist()
    assert hidden.states[0].shape == (3, int(up.num_frames(torch.tensor([16000]))[0]), DIMS[name])
    assert hidden.frame_rate == 100.0
    assert hidden.mask.sum(1).tolist() == expected.tolist()
    assert hidden.pooled().shape == (3, 1, DIMS[name])


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_padded_batch_equals_one_by_one(name):
    up = build_classical(name)
    lens = [12000, 5000, 777]
    wavs = torch.full((3, max(lens)), -0.5)  # padding junk must not reach valid frames
    for i, n in enumerate(lens):
        wavs[i, :n] = wave(n, i)
    batch = up(wavs, torch.tensor(lens))
    for i, n in enumerate(lens):
        alone = up(wavs[i : i + 1, :n])  # lengths None = full length
        T = int(alone.lengths[0])
        assert int(batch.lengths[i]) == T
        torch.testing.assert_close(batch.states[0][i, :T], alone.states[0][0], rtol=1e-5, atol=1e-4)
    # mean over valid frames equals the unpadded mean
    alone = up(wavs[2:3, : lens[2]])
    torch.testing.assert_close(batch.pooled()[2], alone.pooled()[0], rtol=1e-5, atol=1e-4)


def test_options_reach_the_feature_and_bad_options_are_explained():
    up = build_classical("fbank", num_mel_bins=64)
    assert up.hidden_sizes == [64]
    assert build_classical("mfcc", deltas=True).hidden_sizes == [39]
    torch.testing.assert_close(
        up(wave(3000, 0)[None]).states[0], make_feature("fbank", num_mel_bins=64)(wave(3000, 0)[None])[0]
    )
    with pytest.raises(ValueError, match="Did you mean 'num_mel_bins'"):
        build_classical("fbank", num_mel_bin=64)
    with pytest.raises(ValueError, match="Did you mean 'mfcc'"):
        build_classical("mfc")
