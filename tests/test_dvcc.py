"""DVCC + teacher-codebook distillation: losses against hand-computed values, the method end to end."""

from __future__ import annotations

import math

import pytest
import torch

from s3kit.methods.dvcc import (
    DVCCConfig,
    DVCCDistiller,
    LayerWeights,
    batch_view_loss,
    dvcc_loss,
    feature_view_loss,
    parse_layers,
    sample_negatives,
    scaled_to_one,
    teacher_codebook_loss,
    teacher_frame_of,
    utterance_distill_loss,
)
from s3kit.models.kws_student import PAPER_PARAMS, KWSStudent, config_for, count_parameters

# 2 x 3 example (b = 2, d = 3); every column and row has a non-zero norm.
H = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
O = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])


def test_feature_view_hand_computed():
    # columns: h = (1,0), (0,1), (1,1); o = (1,1), (1,0), (0,1)
    # C = [[1/√2, 1, 0], [1/√2, 0, 1], [1, 1/√2, 1/√2]]
    # on-diagonal: 2 (1/√2 - 1)^2 + (0 - 1)^2 = 4 - 2√2; off-diagonal squares: 1 + 0 + 1/2 + 1 + 1 + 1/2 = 4
    for alpha in (5e-3, 0.0, 1.0):
        expected = 4 - 2 * math.sqrt(2) + alpha * 4
        assert feature_view_loss(H, O, alpha).item() == pytest.approx(expected, abs=1e-6)


def test_batch_view_hand_computed():
    # rows have norm √2: G = [[1/2, 1], [1/2, 1/2]]; on: 2 (1/2 - 1)^2 = 1/2; off: 1 + 1/4
    for beta in (5e-3, 0.0, 1.0):
        assert batch_view_loss(H, O, beta).item() == pytest.approx(0.5 + 1.25 * beta, abs=1e-6)


def test_no_mean_centering_and_scale_invariance():
    # eq. (3)/(5) normalise by root sum of squares: a constant shift changes the value ...
    assert feature_view_loss(H + 1, O).item() != pytest.approx(feature_view_loss(H, O).item())
    # ... a per-column (feature view) / per-row (batch view) positive scale does not
    s = torch.tensor([2.0, 3.0, 0.5])
    assert feature_view_loss(H * s, O).item() == pytest.approx(feature_view_loss(H, O).item(), abs=1e-6)
    r = torch.tensor([[4.0], [0.1]])
    assert batch_view_loss(H * r, O).item() == pytest.approx(batch_view_loss(H, O).item(), abs=1e-6)
    # perfect match: identity correlations except the weighted off-diagonals
    X = torch.eye(3)
    assert feature_view_loss(X, X).item() == pytest.approx(0.0, abs=1e-6)


def test_sg_scaling_each_term_one_gradients_flow():
    Hs = torch.randn(8, 16)
    Os = torch.randn(8, 16, requires_grad=True)
    l_c = feature_view_loss(Hs, Os)
    l_g = batch_view_loss(Hs, Os)
    assert scaled_to_one(l_c).item() == pytest.approx(1.0, abs=1e-6)
    assert scaled_to_one(l_g).item() == pytest.approx(1.0, abs=1e-6)
    total = dvcc_loss(Hs, Os)
    assert total.item() == pytest.approx(2.0, abs=1e-6)
    total.backward()
    g = Os.grad.clone()
    assert g.abs().sum() > 0
    # the gradient is ∇L_C / L_C + ∇L_G / L_G
    O2 = Os.detach().clone().requires_grad_(True)
    lc, lg = feature_view_loss(Hs, O2), batch_view_loss(Hs, O2)
    (lc / lc.item() + lg / lg.item()).backward()
    torch.testing.assert_close(g, O2.grad, rtol=1e-5, atol=1e-7)


def test_dvcc_training_reduces_both_views():
    torch.manual_seed(0)
    Hs = torch.randn(16, 8)
    W = torch.zeros(8, 8, requires_grad=True)
    X = Hs @ torch.randn(8, 8) + 0.1 * torch.randn(16, 8)  # student input linearly related to H
    opt = torch.optim.Adam([W], lr=0.05)
    start = (feature_view_loss(Hs, X @ (W + torch.eye(8))).item(), batch_view_loss(Hs, X @ (W + torch.eye(8))).item())
    for _ in range(200):
        opt.zero_grad()
        dvcc_loss(Hs, X @ (W + torch.eye(8))).backward()
        opt.step()
    end = (feature_view_loss(Hs, X @ (W + torch.eye(8))).item(), batch_view_loss(Hs, X @ (W + torch.eye(8))).item())
    assert end[0] < 0.5 * start[0] and end[1] < 0.5 * start[1]


def test_utterance_loss_eq2():
    h = torch.tensor([[1.0, 2.0]])
    o = torch.tensor([[1.0, 0.0]])
    cos = 1 / math.sqrt(5)
    expected = (0 + 2) / 2 - math.log(1 / (1 + math.exp(-cos)))
    assert utterance_distill_loss(h, o).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        utterance_distill_loss(h, o[:, :1])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_frame_codebook_loss_equals_the_loss_on_gathered_distractors(reduction):
    """The [B, T, T] cosine path gives eq. (8) on explicitly gathered [M, N, C] distractors: value
    and gradients (into predictions and targets), with repeated codes (distractors equal to the
    positive are left out) and an utterance with a single masked frame."""
    from s3kit.methods.dvcc import frame_codebook_loss, sample_negatives

    torch.manual_seed(0)
    B, T, C, N = 3, 12, 6, 5
    book = torch.randn(4, C)  # 4 code vectors: many frames share one
    targets = book[torch.randint(0, 4, (B, T))].requires_grad_(True)
    pred = torch.randn(B, T, C, requires_grad=True)
    mask = torch.rand(B, T) < 0.5
    mask[0, :] = False
    mask[0, 3] = True  # one masked frame: its only distractor is itself
    neg = sample_negatives(mask, N, generator=torch.Generator().manual_seed(1))
    fast = frame_codebook_loss(pred, targets, mask, neg, 0.1, reduction)
    rows = mask.nonzero()[:, 0]
    slow = teacher_codebook_loss(pred[mask], targets[mask], targets[rows[:, None], neg[mask]], 0.1, reduction)
    assert fast.item() == pytest.approx(slow.item(), rel=1e-5)
    g_fast = torch.autograd.grad(fast, (pred, targets))
    g_slow = torch.autograd.grad(slow, (pred, targets))
    for a, b in zip(g_fast, g_slow):
        assert torch.allclose(a, b, atol=1e-5)
    assert frame_codebook_loss(pred, targets, torch.zeros(B, T, dtype=torch.bool), neg).item() == 0.0


def test_teacher_codebook_loss_hand_computed():
    pred = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[[0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]]])  # the last equals the positive: dropped
    # cos: 1 (positive), 0, -1; κ = 0.1
    expected = -math.log(math.exp(10) / (math.exp(10) + math.exp(0) + math.exp(-10)))
    assert teacher_codebook_loss(pred, pos, neg, 0.1).item() == pytest.approx(expected, abs=1e-5)
    expected1 = -math.log(math.exp(1) / (math.exp(1) + math.exp(0) + math.exp(-1)))
    assert teacher_codebook_loss(pred, pos, neg, 1.0).item() == pytest.approx(expected1, abs=1e-5)
    two = teacher_codebook_loss(pred.repeat(2, 1), pos.repeat(2, 1), neg.repeat(2, 1, 1), 1.0, reduction="sum")
    assert two.item() == pytest.approx(2 * expected1, abs=1e-5)


def test_teacher_codebook_prefers_true_code_after_training():
    torch.manual_seed(0)
    G, V, C = 2, 8, 8
    book = torch.randn(G, V, C // G)
    T, B = 40, 4
    codes = torch.randint(0, V, (B, T, G))
    targets = torch.stack([book[g][codes[..., g]] for g in range(G)], -2).flatten(-2)  # (B, T, C)
    onehot = torch.nn.functional.one_hot(codes, V).float().flatten(-2)  # the "student input": (B, T, G*V)
    x = onehot + 0.3 * torch.randn_like(onehot)
    pred_layer = torch.nn.Linear(G * V, C)
    opt = torch.optim.Adam(pred_layer.parameters(), lr=0.05)
    mask = torch.rand(B, T) < 0.7

    def preferred(neg) -> float:
        """Share of masked frames whose prediction is closer (cosine) to the true code vector than
        to every distractor code that differs from it."""
        with torch.no_grad():
            p = pred_layer(x)[mask]  # (M, C)
            negs = targets.gather(1, neg.flatten(1)[..., None].expand(B, T * neg.shape[-1], C)).view(B, T, -1, C)[mask]
            pos_cos = torch.nn.functional.cosine_similarity(p, targets[mask], dim=-1)
            neg_cos = torch.nn.functional.cosine_similarity(p[:, None], negs, dim=-1)
            neg_cos = neg_cos.masked_fill((negs == targets[mask][:, None]).all(-1), -2.0)
            return (pos_cos > neg_cos.max(-1).values).float().mean().item()

    eval_neg = sample_negatives(mask, 20)
    before = preferred(eval_neg)
    losses = []
    for _ in range(80):
        neg = sample_negatives(mask, 20)
        negatives = targets.gather(1, neg.flatten(1)[..., None].expand(B, T * 20, C)).view(B, T, 20, C)
        loss = teacher_codebook_loss(pred_layer(x)[mask], targets[mask], negatives[mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    after = preferred(eval_neg)
    assert after > 0.85 and after > before + 0.5, (before, after)


def test_sample_negatives_same_utterance_masked_not_self():
    torch.manual_seed(0)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, [1, 3, 4, 8]] = True
    mask[1, [0, 9]] = True
    neg = sample_negatives(mask, 50)
    for b in range(2):
        for t in mask[b].nonzero().flatten().tolist():
            drawn = set(neg[b, t].tolist())
            assert t not in drawn
            assert drawn <= set(mask[b].nonzero().flatten().tolist())
    assert set(neg[0, 1].tolist()) == {3, 4, 8}  # 50 draws cover the 3 others


def test_teacher_frame_alignment():
    # student frame i centred at 160 i + 80, teacher frame j at 320 j + 200
    i = torch.arange(12)
    j = teacher_frame_of(i)
    centres_s = 160 * i + 80
    for ii, jj in zip(i.tolist(), j.tolist()):
        d = abs(320 * jj + 200 - centres_s[ii].item())
        assert all(d <= abs(320 * k + 200 - centres_s[ii].item()) for k in range(8))
    assert j.tolist()[:6] == [0, 0, 1, 1, 2, 2]


def test_parse_layers_and_weights():
    assert parse_layers("all", 13) == list(range(13))
    assert parse_layers("5-8", 13) == [5, 6, 7, 8]
    assert parse_layers("0-4,9-12", 13) == [0, 1, 2, 3, 4, 9, 10, 11, 12]
    with pytest.raises(ValueError, match="0..12"):
        parse_layers("5-13", 13)
    w = LayerWeights(4)
    x = torch.randn(3, 4, 5)
    torch.testing.assert_close(w(x), x.mean(1))  # zero logits: the plain average


def test_param_counts_large_small():
    counts = {a: count_parameters(KWSStudent(config_for(a))) for a in ("large", "small")}
    print(f"\nKWS student parameters: large {counts['large']:,} (paper 21 M), small {counts['small']:,} (paper 1.6 M)")
    for arch, n in counts.items():
        assert abs(n - PAPER_PARAMS[arch]) / PAPER_PARAMS[arch] < 0.03, (arch, n)


# ----------------------------------------------------------------------------- the method end to end


@pytest.fixture(scope="module")
def tiny_w2v2_pretraining(tmp_path_factory):
    from transformers import Wav2Vec2ForPreTraining
    from transformers.utils import logging as hf_logging

    from s3kit.testing import tiny_hf_config

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("w2v2pt")
    Wav2Vec2ForPreTraining(tiny_hf_config("wav2vec2", layers=2, hidden=32)).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tone_manifest(tmp_path_factory):
    from s3kit.testing import tone_cuts

    return tone_cuts(tmp_path_factory.mktemp("tones"), n=8, classes=2, seconds=(0.6, 1.0))


def test_teacher_codebook_codes_match_quantizer(tiny_w2v2_pretraining):
    from transformers import Wav2Vec2ForPreTraining

    from s3kit.methods.dvcc import load_teacher

    up, cb = load_teacher(tiny_w2v2_pretraining, need_codebook=True)
    wav = torch.randn(1, 8000) * 0.1
    codes, flen = cb.codes(wav, torch.tensor([8000]))
    model = Wav2Vec2ForPreTraining.from_pretrained(str(tiny_w2v2_pretraining)).eval()
    with torch.no_grad():
        ef = model.wav2vec2(wav).extract_features
        q, _ = model.quantizer(ef)
    torch.testing.assert_close(cb.vectors(codes), q, rtol=1e-5, atol=1e-6)
    assert up.num_layers == 3


def test_load_teacher_without_quantizer_is_clear(tmp_path):
    from s3kit.methods.dvcc import load_teacher
    from s3kit.testing import tiny_hf_dir

    d = tiny_hf_dir(tmp_path / "enc", kind="wav2vec2")
    with pytest.raises(ValueError, match="Wav2Vec2ForPreTraining"):
        load_teacher(d, need_codebook=True)


@pytest.mark.parametrize("loss,codebook", [("dvcc", "teacher"), ("utterance", "none"), ("batch", "scratch")])
def test_distill_dvcc_end_to_end(tmp_path, tiny_w2v2_pretraining, tone_manifest, loss, codebook):
    from s3kit.methods.dvcc import distill_dvcc
    from s3kit.train.trainer import TrainConfig
    from s3kit.upstream import load_upstream

    cfg = DVCCConfig(student="tiny", loss=loss, codebook=codebook, teacher_layers="1-2", batch_size=4,
                     num_negatives=5, train=TrainConfig(out_dir=str(tmp_path / "run"), total_steps=3, lr=1e-3,
                                                         warmup=0, progress=False, save_every=3))
    res = distill_dvcc(tiny_w2v2_pretraining, tone_manifest, cfg)
    assert res.step == 3 and all(math.isfinite(v) for v in res.losses.values())
    up = load_upstream(res.checkpoint)
    hid = up(torch.randn(2, 8000) * 0.1, torch.tensor([8000, 5000]))
    assert len(hid.states) == 3 and hid.states[-1].shape == (2, 50, 32) and hid.lengths.tolist() == [50, 31]
    if codebook == "teacher":  # the cache was written; a second run reuses it and gives the same features
        cache = tmp_path / "run" / "teacher_cache"
        assert len(list(cache.glob("pooled-*.safetensors"))) == 1 and len(list(cache.glob("codes-*.safetensors"))) == 1
        from s3kit.methods.dvcc import build_teacher_cache, load_teacher

        up, cb = load_teacher(tiny_w2v2_pretraining, need_codebook=True)
        pooled, codes = build_teacher_cache(tone_manifest, up, cb, cache, progress=False)
        cid = next(iter(tone_manifest)).id
        live = up(torch.from_numpy(next(iter(tone_manifest)).load_audio()).float()).pooled()
        torch.testing.assert_close(pooled[cid], live[0], rtol=1e-4, atol=1e-5)
        assert codes[cid].shape[1] == 2


def test_no_kd_baseline_saves_random_init(tmp_path, tone_manifest):
    from s3kit.methods.dvcc import distill_dvcc
    from s3kit.train.trainer import TrainConfig
    from s3kit.upstream import load_upstream

    cfg = DVCCConfig(student="tiny", loss="none", codebook="none", train=TrainConfig(out_dir=str(tmp_path / "b")))
    res = distill_dvcc(None, tone_manifest, cfg)
    assert res.step == 0
    up = load_upstream(res.checkpoint)
    assert up.encoder.front_end.std.min() > 0 and up.encoder.front_end.mean.abs().sum() > 0  # stats were set


def test_method_gradients_reach_student_and_layer_weights(tiny_w2v2_pretraining):
    from s3kit.methods.dvcc import load_teacher

    torch.manual_seed(0)
    up, cb = load_teacher(tiny_w2v2_pretraining, need_codebook=True)
    student = KWSStudent(config_for("tiny"))
    m = DVCCDistiller(student, DVCCConfig(student="tiny", num_negatives=4), teacher=up, codebook=cb)
    out = m.step({"wavs": torch.randn(3, 9000) * 0.1, "lengths": torch.tensor([9000, 7000, 6000])})
    assert set(out) >= {"loss", "l_c", "l_g", "l_tcode"}
    out["loss"].backward()
    assert m.layer_weights.logits.grad.abs().sum() > 0
    assert student.input_proj.weight.grad.abs().sum() > 0 and student.mask_emb.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.teacher.parameters())
    teacher_ids = {id(p) for p in m.teacher.parameters()} | {id(p) for p in m.codebook.parameters()}
    assert not teacher_ids & {id(p) for p in m.trainable_parameters()}
    assert not any(k.startswith(("teacher.", "codebook.")) for k in m.checkpoint_state())


def test_width_map_only_when_widths_differ():
    """Eq. (3)-(7) need H and O of one width: the 768-wide student of a 768-wide teacher (the
    paper's Combined_large) has no map, the 256-wide one a Linear(256, 768)."""
    from torch import nn

    cfg = DVCCConfig(codebook="none")
    large = DVCCDistiller(KWSStudent(config_for("large")), cfg, teacher_dim=768, teacher_states=13)
    small = DVCCDistiller(KWSStudent(config_for("small")), cfg, teacher_dim=768, teacher_states=13)
    assert isinstance(large.proj, nn.Identity)
    assert not [n for n in large.checkpoint_state() if n.startswith("proj.")]
    extra = sum(p.numel() for n, p in large.named_parameters() if not n.startswith("student."))
    assert extra == 13  # only the layer weights
    assert isinstance(small.proj, nn.Linear) and tuple(small.proj.weight.shape) == (768, 256)
    extra = sum(p.numel() for n, p in small.named_parameters() if not n.startswith("student."))
    assert extra == 13 + 256 * 768 + 768
    H = torch.randn(4, 768)
    O = torch.randn(4, 768)
    torch.testing.assert_close(large.proj(O), O)  # the student's own features enter eq. (3) and (5)
    assert small.proj(torch.randn(4, 256)).shape == H.shape


def test_self_codebook_baseline_needs_no_teacher(tmp_path, tone_manifest):
    """codebook=self: the student's own wav2vec 2.0 objective (the self-supervised no-KD baseline)."""
    from s3kit.methods.dvcc import SELF_CODEBOOK, distill_dvcc, fbank_stats
    from s3kit.train.trainer import TrainConfig

    torch.manual_seed(0)
    student = KWSStudent(config_for("tiny"))
    student.front_end.set_stats(*fbank_stats(student, tone_manifest))  # else every frame gets the same code
    cfg = DVCCConfig(student="tiny", loss="none", codebook="self", num_negatives=4)
    assert cfg.distills and not cfg.needs_teacher
    m = DVCCDistiller(student, cfg)
    G, V, C = SELF_CODEBOOK
    assert m.scratch.quantizer.weight_proj.weight.shape == (G * V, student.config.fbank_bins)
    wavs = torch.stack([torch.from_numpy(c.load_audio()[0, :9000]).float() for c in list(tone_manifest)[:3]])
    out = m.step({"wavs": wavs, "lengths": torch.tensor([9000, 9000, 9000])})
    assert set(out) >= {"loss", "l_tcode", "l_div"} and math.isfinite(float(out["loss"].detach()))
    out["loss"].backward()
    assert student.input_proj.weight.grad.abs().sum() > 0 and student.mask_emb.grad.abs().sum() > 0
    assert m.scratch.quantizer.weight_proj.weight.grad.abs().sum() > 0  # the codebook learns with the student
    res = distill_dvcc(None, tone_manifest, DVCCConfig(
        student="tiny", loss="none", codebook="self", batch_size=4, num_negatives=5,
        train=TrainConfig(out_dir=str(tmp_path / "ssl"), total_steps=2, lr=1e-3, warmup=0, progress=False, save_every=2)))
    assert res.step == 2 and all(math.isfinite(v) for v in res.losses.values())
