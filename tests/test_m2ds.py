"""M2D-S: EMA, masking, losses, noise mixing, teacher alignment, the ViT upstream, a short training run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from s3kit.data.augment import mix_log_mel
from s3kit.methods import m2ds
from s3kit.methods.m2ds import (M2DS, TABLE5, M2DSConfig, align_teacher, ema_decay, ema_update, m2d_loss,
                                noisy_input, offline_loss, random_mask)
from s3kit.models.m2d_vit import M2DUpstream, M2DViT, arch_config, by_time
from s3kit.upstream.base import Hidden, Upstream

SR = 16000


def tiny_cfg(**kw):
    return arch_config("tiny", input_frames=48, **kw)


# ----------------------------------------------------------------------------- EMA


def test_ema_update_matches_formula():
    torch.manual_seed(0)
    target, online = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o.detach())


def test_ema_decay_schedule_is_linear_then_flat():
    assert ema_decay(0, 100) == pytest.approx(0.99995)
    assert ema_decay(50, 100) == pytest.approx(0.99997)
    assert ema_decay(100, 100) == pytest.approx(0.99999)
    assert ema_decay(500, 100) == pytest.approx(0.99999)


def test_on_step_end_moves_target_towards_online():
    torch.manual_seed(0)
    model = M2DViT(tiny_cfg())
    cfg = M2DSConfig(lambda_off=0.0, noise_ratio=0.0, ema_start=0.5, ema_end=0.5)
    method = M2DS(model, cfg)
    with torch.no_grad():
        for p in model.encoder.blocks.parameters():
            p.add_(1.0)
    t_before = [p.clone() for p in model.target.blocks.parameters()]
    method.on_step_end(1)
    for t, b, o in zip(model.target.blocks.parameters(), t_before, model.encoder.blocks.parameters()):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * o.detach())


# ----------------------------------------------------------------------------- masking + losses


def test_random_mask_partitions_patches():
    g = torch.Generator().manual_seed(0)
    visible, masked = random_mask(4, 52, 0.6, generator=g)
    assert visible.shape == (4, int(52 * 0.4)) and masked.shape == (4, 52 - int(52 * 0.4))
    for v, m in zip(visible, masked):
        assert torch.equal(torch.cat([v, m]).sort().values, torch.arange(52))
        assert not set(v.tolist()) & set(m.tolist())
    assert not torch.equal(visible[0], visible[1])  # a fresh permutation per item


def test_m2d_loss_hand_computed():
    pred = torch.tensor([[[1.0, 0.0]]])
    target = torch.tensor([[[3.0, 1.0]]])  # standardised -> (1, -1)/sqrt(2): 45 degrees from pred
    assert float(m2d_loss(pred, target)) == pytest.approx(2 - 2 * math.cos(math.pi / 4), abs=1e-5)
    # standardisation: a shifted and scaled target gives the same loss
    assert float(m2d_loss(pred, 10 * target + 7)) == pytest.approx(float(m2d_loss(pred, target)), abs=1e-5)


def test_offline_loss_hand_computed_and_masked():
    pred = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])
    assert float(offline_loss(pred, teacher, standardize_target=False)) == pytest.approx(1.0)  # (2 + 0) / 2
    valid = torch.tensor([[True, False]])
    assert float(offline_loss(pred, teacher, valid, standardize_target=False)) == pytest.approx(2.0)


def test_target_side_gets_no_gradient():
    torch.manual_seed(0)
    model = M2DViT(tiny_cfg(offline_dim=8))
    x = torch.randn(2, 80, 48)
    vis, msk = random_mask(2, model.cfg.num_patches, 0.6)
    out = model(x, vis, msk)
    assert not out["z_m"].requires_grad
    pred_m = out["pred"].gather(1, msk[..., None].expand(-1, -1, out["pred"].shape[-1]))
    h = model.offline_prediction(out["z_v"], out["pred"], vis, msk)
    (m2d_loss(pred_m, out["z_m"]) + offline_loss(h, torch.randn(2, 12, 8))).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.target.parameters())
    for name in ("encoder.blocks.0.attn.qkv.weight", "encoder.patch_embed.weight", "predictor.mask_token",
                 "offline.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- noise mixing


def test_mixing_at_alpha_zero_returns_clean_logmel():
    torch.manual_seed(0)
    speech = torch.randn(2, 80, 48) - 10.0
    noise = torch.randn(2, 80, 48) - 12.0
    out = noisy_input(speech, noise, 0.0, speech_mean=-10.0, speech_std=4.0, noise_mean=-12.0)
    torch.testing.assert_close(out, (speech + 10.0) / 4.0)
    torch.testing.assert_close(mix_log_mel(speech, noise, 0.0), speech)


def test_mixing_is_linear_mel_weighted_sum():
    speech, noise = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    out = noisy_input(speech, noise, 0.2, speech_mean=0.5, speech_std=2.0, noise_mean=1.0)
    expected = math.log(0.8 * math.exp(0.5) + 0.2 * math.exp(1.0)) / 2.0
    assert float(out) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("patch_width", [2, 4])
def test_align_teacher_maps_frames_to_patch_columns(patch_width):
    Tt = 30
    teacher = torch.arange(Tt, dtype=torch.float32)[None, :, None].repeat(2, 1, 3)  # frame i has value i
    C = 60 // patch_width  # 60 mel frames = 30 teacher frames
    aligned, valid = align_teacher(teacher, C, patch_width, lengths=torch.tensor([30, 25]))
    k = patch_width // 2
    expected = torch.tensor([np.mean(range(c * k, (c + 1) * k)) for c in range(C)], dtype=torch.float32)
    torch.testing.assert_close(aligned[0, :, 0], expected)
    assert valid[0].all()
    assert valid[1].tolist() == [(c + 1) * k <= 25 for c in range(C)]


class FrameIndexTeacher(Upstream):
    """A 50 Hz 'teacher' whose frame i (samples [320 i, 320 i + 320)) is the vector [i, i]."""

    frame_rate = 50.0
    hidden_sizes = [2, 2]

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # the teacher cache finds the device from a parameter

    def num_frames(self, lengths):
        return torch.as_tensor(lengths) // 320

    def forward(self, wavs, lengths=None):
        lengths = torch.full((wavs.shape[0],), wavs.shape[1]) if lengths is None else lengths
        T = wavs.shape[1] // 320
        idx = torch.arange(T, dtype=torch.float32)[None, :, None].expand(wavs.shape[0], T, 2)
        return Hidden(states=[idx, idx], lengths=self.num_frames(lengths), frame_rate=50.0)


def _click(n: int, at: int) -> np.ndarray:
    wav = np.zeros(n, dtype=np.float32)
    wav[at] = 1.0
    return wav


@pytest.mark.parametrize("patch_time", [2, 4])
def test_method_crop_aligns_teacher_with_mel(patch_time):
    """A click at the centre of teacher frame 20 must land in the patch column whose teacher target
    holds frame 20, wherever the random crop starts."""
    torch.manual_seed(0)
    cfg = M2DSConfig(noise_ratio=0.0, lambda_m2d=0.0, lambda_off=1.0, teacher_layer=1, input_frames=48,
                     patch_time=patch_time)
    model = M2DViT(tiny_cfg(patch_time=patch_time, offline_dim=2))
    method = M2DS(model, cfg, teacher=FrameIndexTeacher())
    frame, n = 20, 9600  # 61 mel frames: a 48-frame crop starts at 0..12 and always holds mel frame 41
    wavs = torch.from_numpy(np.stack([_click(n, 320 * frame + 160)] * 2))
    starts = set()
    for seed in range(6):
        prep = method.prepare((wavs, torch.tensor([n, n])), generator=torch.Generator().manual_seed(seed))
        starts.update(prep["starts"].tolist())
        for b in range(2):
            col = int(prep["speech"][b].max(0).values.argmax()) // patch_time  # the click's column
            value = float(prep["teacher"][b, col, 0])  # mean of the column's teacher frame indices
            # 80x2: exactly frame 20; 80x4: the mean of the pair holding it, (19, 20) or (20, 21)
            assert abs(value - frame) == (0.0 if patch_time == 2 else 0.5), (seed, b, value)
            assert bool(prep["valid"][b, col])
    assert len(starts) > 2  # the crop really moved


def test_cached_teacher_follows_loader_crop(tmp_path):
    """Teacher frames read from the cache line up with a window the loader cut out of the utterance."""
    from lhotse import CutSet, Recording

    from s3kit.testing import write_wav
    from s3kit.train.cache import ensure_cache

    frame = 60
    path = write_wav(tmp_path / "click.wav", _click(2 * SR, 320 * frame + 160) * 0.9, subtype="FLOAT")
    cut = Recording.from_file(path, recording_id="click").to_cut()
    teacher = FrameIndexTeacher()
    cache = ensure_cache(tmp_path / "cache", teacher, [1], CutSet.from_cuts([cut]), progress=False)
    cfg = M2DSConfig(noise_ratio=0.0, lambda_m2d=0.0, lambda_off=1.0, teacher_layer=1, input_frames=48, patch_time=2)
    method = M2DS(M2DViT(tiny_cfg(patch_time=2, offline_dim=2)), cfg, teacher=teacher, cache=cache,
                  cut_starts={cut.id: 0.0})
    from s3kit.data.loader import AudioDataset

    for offset in (0.9, 0.9123, 0.9271):  # not multiples of 20 ms; the click (1.21 s) stays inside
        window = cut.truncate(offset=offset, duration=0.6, preserve_id=True)
        batch = AudioDataset()[[window]]
        prep = method.prepare(batch, generator=torch.Generator().manual_seed(0))
        col = int(prep["speech"][0].max(0).values.argmax()) // 2
        assert int(prep["teacher"][0, col, 0]) == frame, (offset, col)


# ----------------------------------------------------------------------------- model + upstream


def test_by_time_concatenates_frequency_patches():
    x = torch.arange(2 * 3, dtype=torch.float32).view(1, 6, 1)  # Fp=2, Tp=3: tokens f*3+t
    assert by_time(x, 2)[0].tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]


def test_upstream_padded_batch_matches_one_by_one_and_chunks():
    torch.manual_seed(0)
    cfg = tiny_cfg(patch_freq=40)  # 2 frequency patches per column
    model = M2DViT(cfg)
    model.encoder.set_norm_stats(-8.0, 4.0)
    up = M2DUpstream(model.encoder).eval()
    wavs = torch.randn(2, 10000) * 0.1  # 0.625 s = 63 mel frames > 48: two chunks
    lengths = torch.tensor([10000, 5000])
    wavs[1, 5000:] = 0
    with torch.no_grad():
        h = up(wavs, lengths)
        single = up(wavs[1:, :5000], lengths[1:])
    assert len(h.states) == cfg.depth + 1 and h.frame_rate == 25.0
    assert h.states[-1].shape == (2, int(up.num_frames(torch.tensor([10000]))[0]), 2 * cfg.dim)
    assert h.lengths.tolist() == up.num_frames(lengths).tolist()
    n = int(h.lengths[1])
    for a, b in zip(h.states, single.states):
        torch.testing.assert_close(a[1, :n], b[0, :n], atol=1e-4, rtol=1e-4)


def test_table5_ablations_are_configs():
    base = M2DSConfig()
    assert (base.lambda_m2d, base.lambda_off, base.noise_ratio, base.mask_ratio) == (1.0, 0.5, 0.2, 0.6)
    a, b, e = base.ablation("a"), base.ablation("b"), base.ablation("e")
    assert not a.uses_teacher and a.uses_noise
    assert b.lambda_m2d == 0 and not b.uses_noise
    assert e.lambda_m2d == e.lambda_off == 1.0 and e.noise_ratio == 0.2
    assert set(TABLE5) == {"a", "b", "c", "d", "e"}
    M2DS(M2DViT(tiny_cfg()), a, noise=object())  # M2D only: no teacher needed
    with pytest.raises(ValueError, match="noise"):
        M2DS(M2DViT(tiny_cfg()), a)


# ----------------------------------------------------------------------------- end to end


def test_pretrain_lowers_both_losses_and_checkpoint_is_an_upstream(tmp_path):
    from s3kit.testing import tiny_hf_dir, tone_cuts
    from s3kit.train.trainer import TrainConfig
    from s3kit.upstream import load_upstream

    torch.manual_seed(0)
    teacher = tiny_hf_dir(tmp_path / "teacher", layers=2, hidden=32)
    speech = tone_cuts(tmp_path / "speech", n=8, classes=4, seconds=(0.8, 1.6))
    noise = tone_cuts(tmp_path / "noise", n=2, classes=1, seconds=(0.7, 0.7), seed=5)
    steps = 24
    cfg = M2DSConfig(arch="tiny", input_frames=48, teacher_layer=2, lambda_off=1.0, batch_size=8,
                     ema_start=0.99, ema_end=0.999,
                     train=TrainConfig(out_dir=str(tmp_path / "run"), total_steps=steps, lr=2e-3, warmup=5,
                                       schedule="cosine", optimizer="adamw", betas=(0.9, 0.95), weight_decay=0.05,
                                       clip=3.0, log_every=10, save_every=1000, progress=False, amp=False))
    logs = []
    result, method = m2ds.pretrain_m2ds(speech, noise, str(teacher), cfg, progress=False,
                                        callbacks=[lambda s, l: logs.append(l)])
    assert result.step == steps
    for key in ("m2d", "off"):
        first = np.mean([l[key] for l in logs[:5]])
        last = np.mean([l[key] for l in logs[-5:]])
        assert last < first, (key, first, last)
    assert method.cache is not None  # teacher features came from the cache
    up = load_upstream(result.checkpoint)
    assert isinstance(up, M2DUpstream)
    assert float(up.encoder.norm_std) == pytest.approx(float(method.model.encoder.norm_std))
    h = up(torch.randn(1, 8000) * 0.1)
    assert len(h.states) == 3 and h.states[0].shape[-1] == 64
