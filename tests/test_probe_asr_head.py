"""SUPERB ASR probe head: s3prl's 1024-d projector and SpecAugment on the weighted sum (asr/config.yaml)."""

import pytest
import torch

from s3kit.eval.heads import (
    ASR_PROJECTOR_DIM, PROJECTOR_DIM, ProbeModel, SpecAugment, SpecAugmentConfig, WeightedSum, axis_masks, time_warp,
)
from s3kit.eval.probe import TASKS, ProbeConfig, build_probe


class _Labels:
    output_size = 7


def test_asr_probe_is_s3prl_asr_head_and_pr_is_not():
    asr = build_probe(TASKS["asr"], _Labels(), num_layers=3, dim=48, cfg=ProbeConfig(lstm_hidden=8), layer_index=None)
    assert asr.head.projector.out_features == ASR_PROJECTOR_DIM == 1024
    assert isinstance(asr.specaug, SpecAugment)
    assert asr.specaug.cfg == SpecAugmentConfig(5, 4, (0, 50), 2, (0, 40))  # s3prl asr/config.yaml specaug block
    pr = build_probe(TASKS["pr"], _Labels(), 3, 48, ProbeConfig(), None)
    assert pr.head.projector.out_features == PROJECTOR_DIM == 256 and pr.specaug is None
    ks = build_probe(TASKS["ks"], _Labels(), 3, 48, ProbeConfig(), None)
    assert ks.head.projector.out_features == 256 and ks.specaug is None
    # explicit options win over the task's defaults
    off = build_probe(TASKS["asr"], _Labels(), 3, 48, ProbeConfig(lstm_hidden=8, proj_dim=64, specaug=False), None)
    assert off.head.projector.out_features == 64 and off.specaug is None
    with pytest.raises(ValueError, match="frame-level"):
        build_probe(TASKS["ks"], _Labels(), 3, 48, ProbeConfig(specaug=True), None)


def test_specaug_masks_the_representation_in_training_only():
    torch.manual_seed(0)
    model = build_probe(TASKS["asr"], _Labels(), 2, 96, ProbeConfig(lstm_hidden=8), None)
    seen = []
    model.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    states = torch.randn(3, 2, 60, 96) + 5.0  # no exact zeros in the weighted sum
    lengths = torch.tensor([60, 50, 40])
    model.eval()
    model(states, lengths)
    model.train()
    model(states, lengths)
    clean, augmented = seen
    assert torch.equal(clean, model.featurizer(states))  # eval: untouched
    valid = torch.arange(60)[None] < lengths[:, None]  # (B, T)
    zero_cols = (augmented == 0).all(dim=1)  # (B, D): feature dimensions masked over every frame
    zero_rows = (augmented == 0).all(dim=2) & valid  # (B, T): masked frames
    assert zero_cols.any() or zero_rows.any()
    assert zero_cols.sum(1).max() <= 4 * 49 and zero_rows.sum(1).max() <= 2 * 39


def test_time_warp_is_a_piecewise_linear_time_map():
    # on a linear ramp the warp must map output frame i to input time (i + 0.5) * center / warped - 0.5
    # on the left part (align_corners=False); torch's bicubic kernel (a = -0.75) follows a line to
    # within 0.1 frame away from the ends, while the warp moves frames by up to 4 here
    T, center, warped = 40, 20, 24
    ramp = torch.arange(T, dtype=torch.float32)[:, None].repeat(1, 3)  # (T, D)
    out = time_warp(ramp, center, warped)
    assert out.shape == (T, 3)
    i = torch.arange(2, warped - 2, dtype=torch.float32)
    assert torch.allclose(out[2 : warped - 2, 0], (i + 0.5) * center / warped - 0.5, atol=0.1)
    j = torch.arange(2, T - warped - 2, dtype=torch.float32)  # right part: (T - center) frames into (T - warped)
    expect = center + (j + 0.5) * (T - center) / (T - warped) - 0.5
    assert torch.allclose(out[warped + 2 : T - 2, 0], expect, atol=0.1)
    assert (out[:, 0] - ramp[:, 0]).abs().max() > 3
    assert torch.equal(out[:, 0], out[:, 2])  # the feature axis is not interpolated


def test_axis_masks_spans():
    torch.manual_seed(1)
    m = axis_masks(100, 2, (0, 40), batch=500)
    runs = [int(r.sum()) for r in m]
    assert max(runs) <= 2 * 39 and sum(runs) > 0
    single = axis_masks(100, 1, (0, 40), batch=2000).sum(1).float()
    assert single.max() == 39 and abs(single.mean() - 19.5) < 1.0  # width ~ U{0..39}: mean 19.5, se 0.26
    widths_one = axis_masks(100, 1, (3, 4), batch=50)
    assert torch.all(widths_one.sum(1) == 3)  # width drawn from [3, 4): always 3, contiguous
    first = widths_one.float().argmax(1)
    assert torch.all(widths_one[torch.arange(50), first + 2])


def test_specaug_leaves_short_items_unwarped_and_respects_eval():
    aug = SpecAugment(SpecAugmentConfig(time_warp_window=5, freq_masks=0, time_masks=0))
    x = torch.randn(1, 10, 4)
    aug.train()
    assert torch.equal(aug(x, torch.tensor([10])), x)  # T - W <= W: s3prl skips the warp
    aug.eval()
    y = torch.randn(2, 30, 4)
    assert aug(y) is y
    aug.train()
    torch.manual_seed(0)
    assert not torch.allclose(aug(y, torch.tensor([30, 30])), y)
    with pytest.raises(ValueError, match="lo < hi"):
        SpecAugmentConfig(time_mask_width=(5, 5))
    assert isinstance(ProbeModel(WeightedSum(1), torch.nn.Identity()).specaug, type(None))
