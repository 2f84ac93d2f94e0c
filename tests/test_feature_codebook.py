"""A Gumbel codebook learned on a frozen MelHuBERT teacher: the teacher codebook of the KWS rows."""

from __future__ import annotations

import math

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    from s3kit.models.melhubert import MelHubert, config_for, save_upstream

    torch.manual_seed(0)
    cfg = config_for("tiny", num_layers=2, hidden_size=32, ffn_size=64, num_heads=2, pos_conv_kernel=8,
                     pos_conv_groups=4)
    enc = MelHubert(cfg)
    enc.front_end.set_stats(torch.full((cfg.fbank_bins,), 8.0), torch.full((cfg.fbank_bins,), 2.0))
    return save_upstream(tmp_path_factory.mktemp("mh") / "teacher", enc)


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    from s3kit.testing import tone_cuts

    return tone_cuts(tmp_path_factory.mktemp("tones"), n=8, classes=2, seconds=(0.6, 1.0))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_teacher, tones):
    from s3kit.methods.feature_codebook import FeatureCodebookConfig, train_feature_codebook
    from s3kit.train.trainer import TrainConfig

    out = tmp_path_factory.mktemp("fc") / "run"
    cfg = FeatureCodebookConfig(groups=2, entries=8, code_dim=8, proj_dim=8, num_negatives=5, max_duration=4.0,
                                crop=None, train=TrainConfig(out_dir=str(out), total_steps=4, lr=1e-2, warmup=0,
                                                             progress=False, save_every=4))
    return train_feature_codebook(tiny_teacher, tones, cfg)


def test_training_moves_only_the_codebook(trained, tiny_teacher):
    from s3kit import checkpoint
    from s3kit.methods.feature_codebook import load_feature_codebook

    assert trained.step == 4 and all(math.isfinite(v) for v in trained.losses.values())
    state, meta = checkpoint.load(trained.checkpoint)
    assert not [k for k in state if k.startswith("codebook.upstream.")]  # the frozen teacher is not saved
    assert meta["feature_codebook"]["layer"] == 1  # the middle state of 3
    up, cb = load_feature_codebook(trained.checkpoint)
    ref, _ = checkpoint.load(tiny_teacher)
    torch.testing.assert_close(up.encoder.state_dict()["pre_extract_proj.weight"], ref["pre_extract_proj.weight"])
    torch.testing.assert_close(cb.quantizer.weight_proj.weight, state["codebook.quantizer.weight_proj.weight"])


def test_codes_and_vectors_match_the_transformers_quantizer(trained):
    from s3kit.methods.feature_codebook import CodeVectorUpstream, load_feature_codebook

    up, cb = load_feature_codebook(trained.checkpoint)
    wav = torch.randn(2, 12000) * 0.1
    lengths = torch.tensor([12000, 9000])
    codes, flen = cb.codes(wav, lengths)
    assert codes.shape == (2, int(flen.max()), 2) and flen.tolist() == up.num_frames(lengths).tolist()
    x = up(wav, lengths).states[1]
    cb.quantizer.eval()
    q, _ = cb.quantizer(x)  # eval mode: argmax one-hot code vectors
    torch.testing.assert_close(cb.vectors(codes), q)
    torch.testing.assert_close(cb.codes(wav, lengths)[0], codes)  # deterministic
    hid = CodeVectorUpstream(cb)(wav, lengths)
    assert len(hid.states) == 1 and hid.states[0].shape == (2, codes.shape[1], 8)


def test_dvcc_uses_it_as_the_teacher_codebook(trained, tones, tmp_path):
    from s3kit.methods.dvcc import DVCCConfig, DVCCDistiller, distill_dvcc, load_teacher, teacher_frame_of
    from s3kit.models.kws_student import KWSStudent, config_for
    from s3kit.train.trainer import TrainConfig
    from s3kit.upstream import load_upstream

    up, cb = load_teacher(trained.checkpoint, need_codebook=True)
    assert cb.code_dim == 8 and up.num_layers == 3
    assert load_upstream(trained.checkpoint).num_layers == 3  # the non-codebook rows get the teacher itself
    torch.manual_seed(0)
    m = DVCCDistiller(KWSStudent(config_for("tiny")), DVCCConfig(student="tiny", num_negatives=4), teacher=up, codebook=cb)
    wavs, lengths = torch.randn(2, 9000) * 0.1, torch.tensor([9000, 7000])
    seen = {}
    import s3kit.methods.dvcc as dvcc

    orig = dvcc.frame_codebook_loss
    dvcc.frame_codebook_loss = lambda pred, tgt, mask, neg, *a: seen.update(
        pos=tgt[mask], neg=tgt[mask.nonzero()[:, 0][:, None], neg[mask]]) or orig(pred, tgt, mask, neg, *a)
    try:
        out = m.step({"wavs": wavs, "lengths": lengths})
    finally:
        dvcc.frame_codebook_loss = orig
    assert math.isfinite(float(out["l_tcode"]))
    codes, _ = cb.codes(wavs, lengths)
    book = cb.vectors(codes).flatten(0, 1)  # every teacher code vector of the batch
    # eq. (8)'s positives and negatives are the codebook's quantised vectors
    for v in (seen["pos"], seen["neg"].flatten(0, 1)):
        assert (v.detach()[:, None] == book[None]).all(-1).any(1).all()
    for codebook in ("teacher", "scratch"):
        cfg = DVCCConfig(student="tiny", loss="dvcc", codebook=codebook, batch_size=4, num_negatives=5,
                         train=TrainConfig(out_dir=str(tmp_path / codebook), total_steps=2, lr=1e-3, warmup=0,
                                           progress=False, save_every=2))
        res = distill_dvcc(trained.checkpoint, tones, cfg)
        assert res.step == 2 and all(math.isfinite(v) for v in res.losses.values())
    assert teacher_frame_of(torch.tensor([0, 2, 4])).tolist() == [0, 1, 2]


def test_a_changed_teacher_is_refused(trained, tmp_path):
    import shutil

    from s3kit import checkpoint
    from s3kit.methods.feature_codebook import export, load_feature_codebook

    state, meta = checkpoint.load(trained.checkpoint)
    teacher = meta["feature_codebook"]["teacher"]
    shutil.copytree(teacher, tmp_path / "teacher")
    shipped = export(trained.checkpoint, tmp_path / "shipped", "../teacher")  # relative to the shipped dir
    assert checkpoint.load(shipped)[1]["feature_codebook"]["teacher"] == "../teacher"
    assert "trainer_state" not in checkpoint.load(shipped)[1]
    load_feature_codebook(shipped)
    tstate, tmeta = checkpoint.load(tmp_path / "teacher")
    tstate["pre_extract_proj.weight"] = tstate["pre_extract_proj.weight"] + 0.01
    checkpoint.save(tmp_path / "teacher", tstate, tmeta.pop("config"), class_name=tmeta.pop("class"), **tmeta)
    with pytest.raises(ValueError, match="retrain"):
        load_feature_codebook(shipped)
