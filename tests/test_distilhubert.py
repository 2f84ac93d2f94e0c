"""DistilHuBERT: eq. (1) by hand, teacher init, cache, distillation on synthetic audio, export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from s3kit.methods.distilhubert import (
    DistilConfig,
    DistilHuBERT,
    PredictionHeads,
    build_student,
    export_transformers,
    layer_loss,
)
from s3kit.testing import sine, tiny_hf_model, write_wav
from s3kit.train import TrainConfig, train
from s3kit.upstream.hf import HFUpstream


def test_layer_loss_hand_value():
    pred = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (B=1, T=2, D=2)
    target = torch.tensor([[[1.0, 1.0], [0.0, -2.0]]])
    # frame 1: L1/D = 1/2; cos = 1/sqrt(2).  frame 2: L1/D = 4/2 = 2; cos = -1
    f1 = 0.5 - math.log(1 / (1 + math.exp(-1 / math.sqrt(2))))
    f2 = 2.0 - math.log(1 / (1 + math.exp(1.0)))
    assert float(layer_loss(pred, target)) == pytest.approx((f1 + f2) / 2, rel=1e-6)
    assert float(layer_loss(pred, target, cos_weight=0.0)) == pytest.approx(1.25)
    mask = torch.tensor([[True, False]])
    assert float(layer_loss(pred, target, mask=mask)) == pytest.approx(f1, rel=1e-6)
    with pytest.raises(ValueError, match="shape"):
        layer_loss(pred, target[:, :1])


def test_heads_shapes_and_gradients():
    heads = PredictionHeads(8, 3, 6)
    x = torch.randn(2, 5, 8, requires_grad=True)
    y = heads(x)
    assert y.shape == (3, 2, 5, 6)
    y[1].sum().backward()
    assert heads.weight.grad[1].abs().sum() > 0 and heads.weight.grad[0].abs().sum() == 0


@pytest.mark.parametrize("kind", ["hubert", "wav2vec2", "wavlm"])
def test_student_init_copies_teacher_tensors(kind):
    teacher = tiny_hf_model(kind, layers=4)
    student = build_student(teacher, layers=2)
    assert type(student) is type(teacher) and student.config.num_hidden_layers == 2
    t, s = teacher.state_dict(), student.state_dict()
    for k, v in s.items():
        assert torch.equal(v, t[k]), k
    assert any(k.startswith("feature_extractor.conv_layers.0") for k in s)
    assert any(k.startswith("encoder.layers.1.") for k in s) and not any(k.startswith("encoder.layers.2.") for k in s)
    # and the copy is real: the first two layers compute what the teacher's first two do
    wav = torch.from_numpy(sine(300, 0.5))[None]
    ht, hs = HFUpstream(teacher)(wav), HFUpstream(student.eval())(wav)
    for i in range(2):  # inputs of layer 1 and 2 equal (post-LN models apply no final norm)
        assert torch.allclose(ht.states[i], hs.states[i], atol=1e-5)


def test_ablation_options_validate():
    with pytest.raises(ValueError, match="out of range"):
        DistilConfig(targets=(4, 8, 12)).resolve_targets(4)
    assert DistilConfig(pred_last_only=True).resolve_targets(4) == (4,)
    with pytest.raises(ValueError, match="needs 3 targets"):
        DistilConfig(hidden_layers_no_heads=True, targets=(2, 4)).resolve_targets(4)


# ----------------------------------------------------------------------------- synthetic corpus


def _corpus(root, n: int, seed: int):
    """n utterances of 0.5-0.9 s: tones + noise, written as WAVs, as a lhotse CutSet."""
    from lhotse import CutSet, Recording, RecordingSet

    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        dur = float(rng.uniform(0.5, 0.9))
        wav = sine(float(rng.uniform(150, 900)), dur, 0.3) + sine(float(rng.uniform(900, 3000)), dur, 0.1)
        wav = wav + 0.05 * rng.standard_normal(len(wav)).astype(np.float32)
        path = write_wav(root / f"u{seed}_{i}.wav", wav)
        recs.append(Recording.from_file(path, recording_id=f"u{seed}_{i}"))
    return CutSet.from_manifests(recordings=RecordingSet.from_recordings(recs))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distil")
    teacher = HFUpstream(tiny_hf_model("hubert", layers=4, hidden=32, seed=1))
    return root, teacher, _corpus(root / "train", 12, 0), _corpus(root / "val", 4, 1)


def _run(root, teacher, train_cuts, val_cuts, name, cache=None, steps=30, **kw):
    from s3kit.data.loader import make_loader

    torch.manual_seed(0)
    cfg = DistilConfig(**{"layers": 2, "targets": (2, 4), **kw})
    method = DistilHuBERT(teacher, cfg, cache=cache)
    tcfg = TrainConfig(out_dir=str(root / name), total_steps=steps, lr=5e-3, warmup=3, schedule="constant",
                       log_every=10, val_every=steps, save_every=steps, progress=False)
    data = make_loader(train_cuts, max_duration=5.0, seed=0)
    val = make_loader(val_cuts, max_duration=10.0, shuffle=False)
    from s3kit.train import validate

    before = validate(method, val)["loss"]
    res = train(method, data, tcfg, val_data=val)
    return method, before, res


def test_distillation_lowers_val_loss_and_cache_matches_live(setup):
    from s3kit.train.cache import ensure_cache

    root, teacher, train_cuts, val_cuts = setup
    _, before, live = _run(root, teacher, train_cuts, val_cuts, "live")
    after = live.val[-1][1]["loss"]
    assert after < 0.75 * before, (before, after)

    cache = ensure_cache(root / "cache", teacher, [2, 4], train_cuts, progress=False)
    assert len(cache) == len(train_cuts)
    calls = []
    hook = teacher.register_forward_hook(lambda *a: calls.append(1))
    try:
        _, _, cached = _run(root, teacher, train_cuts, val_cuts, "cached", cache=cache, steps=10)
    finally:
        hook.remove()
    assert len(calls) <= 2 * 2  # only the two validation passes over <= 2 val batches ran the teacher
    # same seed, same batches, constant schedule: the cached run follows the live one step by step
    # (fp16 targets), and its validation loss equals the live run's at that step
    for s in range(1, 11):
        assert cached.losses[s] == pytest.approx(live.losses[s], rel=1e-2), s
    assert cached.losses[10] < 0.9 * cached.losses[1]
    # the cache is reused for the same key and rebuilt when the targets change
    assert ensure_cache(root / "cache", teacher, [2, 4], train_cuts, progress=False).directory == cache.directory
    other = ensure_cache(root / "cache", teacher, [4], train_cuts, progress=False)
    assert other.directory != cache.directory and not cache.directory.exists()


def test_cached_targets_equal_live_teacher(setup, tmp_path):
    from s3kit.data.loader import make_loader
    from s3kit.train.cache import ensure_cache

    root, teacher, train_cuts, _ = setup
    cache = ensure_cache(tmp_path, teacher, [2, 4], train_cuts, progress=False)
    method = DistilHuBERT(teacher, DistilConfig(layers=2, targets=(2, 4)), cache=cache)
    batch = next(iter(make_loader(train_cuts, max_duration=4.0, seed=0)))
    T = int(method.student.num_frames(batch.lengths).max())
    zero = torch.zeros_like(batch.lengths)
    cached = method.teacher_targets(batch.wavs, batch.lengths, batch.ids, zero, T)
    live = method.teacher_targets(batch.wavs, batch.lengths, None, zero, T)
    mask = method.student.num_frames(batch.lengths)[:, None] > torch.arange(T)[None]
    diff = (cached - live).abs()[:, mask]
    assert float(diff.max()) < 1e-2 * float(live.abs().max())  # fp16 storage


def test_crop_is_frame_aligned_with_cache(setup, tmp_path):
    from s3kit.data.loader import make_loader
    from s3kit.train.cache import ensure_cache

    root, teacher, train_cuts, _ = setup
    cache = ensure_cache(tmp_path, teacher, [4], train_cuts, progress=False)
    cfg = DistilConfig(layers=2, targets=(4,), crop_samples=6400)  # 0.4 s crops of 0.5-0.9 s utterances
    method = DistilHuBERT(teacher, cfg, cache=cache).train()
    batch = next(iter(make_loader(train_cuts, max_duration=4.0, seed=0)))
    torch.manual_seed(3)
    wavs, lengths, offsets = method._crop(batch.wavs, batch.lengths)
    assert int(lengths.max()) == 6400 and bool((offsets > 0).any())
    for b in range(len(batch.ids)):  # cropped audio is the original at offset * 320
        s = int(offsets[b]) * 320
        assert torch.equal(wavs[b, : lengths[b]], batch.wavs[b, s : s + int(lengths[b])])
    out = method.step(batch)
    assert torch.isfinite(out["loss"])


def test_checkpoint_export_and_load_upstream(setup, tmp_path):
    from transformers import AutoModel

    from s3kit.upstream import load_upstream

    root, teacher, train_cuts, val_cuts = setup
    method, _, res = _run(root, teacher, train_cuts, val_cuts, "export", steps=3)
    ckpt = res.checkpoint
    # the checkpoint holds the student + heads, never the teacher
    from s3kit import checkpoint

    state, meta = checkpoint.load(ckpt)
    assert meta["upstream"] == "s3kit.methods.distilhubert:upstream_from_checkpoint"
    assert not any(k.startswith("teacher.") for k in state) and any(k.startswith("heads.") for k in state)

    up = load_upstream(ckpt)
    out = export_transformers(ckpt, tmp_path / "hf")
    hf = AutoModel.from_pretrained(out).eval()
    assert type(hf).__name__ == "HubertModel" and hf.config.num_hidden_layers == 2
    assert not any("head" in k for k in hf.state_dict())
    wav = torch.from_numpy(sine(440, 0.8) + 0.01 * np.random.default_rng(0).standard_normal(12800).astype(np.float32))[None]
    with torch.no_grad():
        ref = hf(wav, output_hidden_states=True).hidden_states
        mine = up(wav).states
        trained = method.student.eval()(wav).states
    assert len(mine) == len(ref) == 3
    for a, b, c in zip(mine, ref, trained):
        assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)


def test_cli_distill_then_export(setup, tmp_path):
    from transformers import AutoModel

    from s3kit.cli import main
    from s3kit.data.manifest import save_cuts
    from s3kit.testing import tiny_hf_dir

    root, _, train_cuts, val_cuts = setup
    teacher_dir = tiny_hf_dir(tmp_path / "teacher", kind="wav2vec2", layers=4, seed=2)
    train_m = save_cuts(train_cuts, tmp_path / "train.jsonl.gz")
    val_m = save_cuts(val_cuts, tmp_path / "val.jsonl.gz")
    out = tmp_path / "run"
    rc = main(["distill", "distilhubert", "--teacher", str(teacher_dir), "--manifest", str(train_m),
               "--val-manifest", str(val_m), "--recipe", "recipes/distilhubert.yaml", "--out", str(out),
               "targets=[2,4]", "train.total_steps=3", "train.progress=false", "max_duration=4"])
    assert rc == 0
    ckpt = out / "checkpoints" / "step-00000003"
    assert ckpt.is_dir() and any((out / "teacher_cache").glob("teacher-*/index.json"))
    assert main(["export", "--format", "transformers", str(ckpt), str(tmp_path / "hf")]) == 0
    hf = AutoModel.from_pretrained(tmp_path / "hf")
    assert type(hf).__name__ == "Wav2Vec2Model" and hf.config.num_hidden_layers == 2


@pytest.mark.parametrize("opts", [dict(hidden_layers_no_heads=True, targets=(1, 2, 4)), dict(pred_last_only=True),
                                  dict(keep_heads=True)])
def test_ablations_train_and_rebuild(setup, tmp_path, opts):
    from s3kit.upstream import load_upstream

    root, teacher, train_cuts, val_cuts = setup
    method, _, res = _run(tmp_path, teacher, train_cuts, val_cuts, "abl", steps=2, **{"targets": (2, 4), **opts})
    assert method.targets == ((4,) if opts.get("pred_last_only") else tuple(opts.get("targets", (2, 4))))
    assert (method.heads is None) == bool(opts.get("hidden_layers_no_heads"))
    up = load_upstream(res.checkpoint)
    wav = torch.from_numpy(sine(500, 0.5))[None]
    n_states = 3 + (len(method.targets) if opts.get("keep_heads") else 0)
    assert len(up(wav).states) == n_states == up.num_layers


def test_cache_invalidated_by_teacher_weights_and_options(setup, tmp_path):
    import copy

    from s3kit.train.cache import ensure_cache

    _, teacher, train_cuts, _ = setup
    cuts = train_cuts.subset(first=3)
    first = ensure_cache(tmp_path, teacher, [4], cuts, progress=False)
    changed = copy.deepcopy(teacher)
    with torch.no_grad():
        changed.model.encoder.layers[3].final_layer_norm.bias.add_(0.1)
    second = ensure_cache(tmp_path, changed, [4], cuts, progress=False)
    assert second.directory != first.directory and not first.directory.exists()
    changed.normalize = not changed.normalize
    assert ensure_cache(tmp_path, changed, [4], cuts, progress=False).directory != second.directory
    assert ensure_cache(tmp_path, changed, [4], train_cuts.subset(first=2), progress=False).key != second.key


# ----------------------------------------------------------------------------- s3kit MelHuBERT teacher


def _tiny_melhubert(layers: int = 3, seed: int = 0, **kw):
    from s3kit.models.melhubert import MelHubert, config_for

    torch.manual_seed(seed)
    cfg = config_for("tiny", **{"num_layers": layers, "hidden_size": 32, "ffn_size": 64, "num_heads": 2,
                                "pos_conv_kernel": 8, "pos_conv_groups": 4, **kw})
    enc = MelHubert(cfg)
    g = torch.Generator().manual_seed(seed)
    # non-trivial normalisation statistics, as a pretrained teacher has (fbank log-energies ~ 5..15)
    enc.front_end.set_stats(5.0 + 10.0 * torch.rand(cfg.fbank_bins, generator=g), 1.0 + 3.0 * torch.rand(cfg.fbank_bins, generator=g))
    return enc.eval()


def test_melhubert_student_init_copies_teacher_tensors():
    from s3kit.models.melhubert import MelHubert, MelHubertUpstream

    teacher = _tiny_melhubert(layers=3)
    student = build_student(teacher, layers=2)
    assert type(student) is MelHubert and student.config.num_layers == 2
    assert student.config == type(teacher.config)(**{**vars(teacher.config), "num_layers": 2})
    t, s = teacher.state_dict(), student.state_dict()
    for k, v in s.items():
        assert torch.equal(v, t[k]), k
    for k in ("front_end.mean", "front_end.std", "pre_extract_proj.weight", "pos_conv.conv.bias",
              "pos_conv.conv.parametrizations.weight.original0", "pos_conv.conv.parametrizations.weight.original1",
              "norm.weight", "layers.1.ffn.fc2.weight"):
        assert k in s, k
    assert not any(k.startswith("layers.2.") for k in s)
    wav = torch.from_numpy(sine(300, 0.5))[None]
    ht, hs = MelHubertUpstream(teacher)(wav), MelHubertUpstream(student.eval())(wav)
    assert len(hs.states) == 3
    for i in range(3):  # post-LN: the student's first two layers compute the teacher's
        assert torch.equal(ht.states[i], hs.states[i]), i
    # random init ablation: learned weights are fresh, the fbank statistics (data, not weights) still copied
    fresh = build_student(teacher, layers=2, init_from_teacher=False).state_dict()
    assert torch.equal(fresh["front_end.mean"], t["front_end.mean"]) and torch.equal(fresh["front_end.std"], t["front_end.std"])
    assert not torch.equal(fresh["layers.0.ffn.fc1.weight"], t["layers.0.ffn.fc1.weight"])
    with pytest.raises(ValueError, match="exceed"):
        build_student(teacher, layers=4)
    # MelHubertUpstream, bare MelHubert and a checkpoint-loaded teacher all give a MelHuBERT student
    for form in (teacher, MelHubertUpstream(teacher)):
        method = DistilHuBERT(form, DistilConfig(layers=2, targets=(1, 3)))
        assert isinstance(method.student, MelHubertUpstream) and method.heads.weight.shape == (2, 32, 32)


@pytest.fixture(scope="module")
def mh_setup(tmp_path_factory):
    from s3kit.models.melhubert import save_upstream
    from s3kit.testing import tone_cuts
    from s3kit.upstream import load_upstream

    root = tmp_path_factory.mktemp("distil_mh")
    save_upstream(root / "teacher", _tiny_melhubert(layers=3, seed=1))
    teacher = load_upstream(root / "teacher")
    train_cuts = tone_cuts(root / "train", n=12, classes=3, seconds=(0.5, 0.9), seed=0)
    # tone_cuts names every set utt000...; the cache is looked up by cut id, so keep val ids distinct
    val_cuts = tone_cuts(root / "val", n=4, classes=3, seconds=(0.5, 0.9), seed=1).modify_ids(lambda i: f"val-{i}")
    return root, teacher, train_cuts, val_cuts


def test_melhubert_distillation_lowers_val_loss_and_reloads(mh_setup, tmp_path):
    from s3kit import checkpoint
    from s3kit.models.melhubert import MelHubertUpstream
    from s3kit.upstream import load_upstream

    from s3kit.train.cache import ensure_cache

    root, teacher, train_cuts, val_cuts = mh_setup
    assert isinstance(teacher, MelHubertUpstream)
    cache = ensure_cache(tmp_path / "cache", teacher, [1, 3], train_cuts, progress=False)  # one teacher pass, not 20
    method, before, res = _run(tmp_path, teacher, train_cuts, val_cuts, "mh", cache=cache, steps=20, targets=(1, 3))
    after = res.val[-1][1]["loss"]
    assert after < 0.6 * before, (before, after)  # measured 1.50 -> 0.61

    state, meta = checkpoint.load(res.checkpoint)
    assert meta["upstream"] == "s3kit.methods.distilhubert:upstream_from_checkpoint"
    assert meta["student"]["model_type"] == "melhubert" and meta["student"]["config"]["num_layers"] == 2
    assert not any(k.startswith("teacher.") for k in state) and "student.front_end.mean" in state
    up = load_upstream(res.checkpoint)
    assert up.num_layers == 3 and up.frame_rate == 50.0
    wav = torch.from_numpy(sine(440, 0.8) + 0.01 * np.random.default_rng(0).standard_normal(12800).astype(np.float32))[None]
    with torch.no_grad():
        mine, trained = up(wav).states, method.student.eval()(wav).states
    assert len(mine) == len(trained) == 3
    for a, b in zip(mine, trained):
        assert torch.equal(a, b)
    from s3kit.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="MelHuBERT has no transformers class; the s3kit checkpoint is the export"):
        export_transformers(res.checkpoint, tmp_path / "hf")
    kept = load_upstream(res.checkpoint, keep_heads=True)  # ablation "w/ prediction heads" rebuilds too
    assert len(kept(wav).states) == 3 + 2


def test_melhubert_cache_keys_on_teacher_and_matches_live(mh_setup, tmp_path):
    import copy
    from dataclasses import replace

    from s3kit.data.loader import make_loader
    from s3kit.models.melhubert import MelHubert, MelHubertUpstream
    from s3kit.train.cache import ensure_cache

    _, teacher, train_cuts, _ = mh_setup
    cache = ensure_cache(tmp_path, teacher, [1, 3], train_cuts, progress=False)
    method = DistilHuBERT(teacher, DistilConfig(layers=2, targets=(1, 3), crop_samples=6400), cache=cache)
    batch = next(iter(make_loader(train_cuts, max_duration=4.0, seed=0)))
    T = int(method.student.num_frames(batch.lengths).max())
    zero = torch.zeros_like(batch.lengths)
    cached = method.teacher_targets(batch.wavs, batch.lengths, batch.ids, zero, T)
    live = method.teacher_targets(batch.wavs, batch.lengths, None, zero, T)
    mask = method.student.num_frames(batch.lengths)[:, None] > torch.arange(T)[None]
    assert float((cached - live).abs()[:, mask].max()) < 1e-2 * float(live.abs().max())  # fp16 storage
    # frame-aligned crops (320 samples = one 20 ms MelHuBERT frame) read the cache
    method.train()
    torch.manual_seed(3)
    wavs, lengths, offsets = method._crop(batch.wavs, batch.lengths)
    for b in range(len(batch.ids)):
        s = int(offsets[b]) * 320
        assert torch.equal(wavs[b, : lengths[b]], batch.wavs[b, s : s + int(lengths[b])])
    assert torch.isfinite(method.step(batch)["loss"])
    # the key covers the MelHuBERT config (num_heads changes no shape) and the fbank statistics
    enc = teacher.encoder
    heads = MelHubert(replace(enc.config, num_heads=4))
    heads.load_state_dict(enc.state_dict())
    other = ensure_cache(tmp_path, MelHubertUpstream(heads).eval(), [1, 3], train_cuts, progress=False)
    assert other.key != cache.key
    stats = copy.deepcopy(teacher)
    stats.encoder.front_end.set_stats(stats.encoder.front_end.mean + 0.5, stats.encoder.front_end.std)
    assert ensure_cache(tmp_path, stats, [1, 3], train_cuts, progress=False).key not in (cache.key, other.key)
    assert ensure_cache(tmp_path, teacher, [1, 3], train_cuts, progress=False).key == cache.key


def test_cli_distill_melhubert_teacher_dir(mh_setup, tmp_path, capsys):
    from s3kit.cli import main
    from s3kit.data.manifest import save_cuts
    from s3kit.upstream import load_upstream

    root, _, train_cuts, val_cuts = mh_setup
    train_m = save_cuts(train_cuts, tmp_path / "train.jsonl.gz")
    val_m = save_cuts(val_cuts, tmp_path / "val.jsonl.gz")
    out = tmp_path / "run"
    rc = main(["distill", "distilhubert", "--teacher", str(root / "teacher"), "--manifest", str(train_m),
               "--val-manifest", str(val_m), "--recipe", "recipes/distilhubert.yaml", "--out", str(out),
               "targets=[1,3]", "train.total_steps=3", "train.progress=false", "max_duration=4"])
    assert rc == 0
    assert "s3kit.load_upstream" in capsys.readouterr().out
    ckpt = out / "checkpoints" / "step-00000003"
    assert any((out / "teacher_cache").glob("teacher-*/index.json"))
    up = load_upstream(ckpt)
    assert up.num_layers == 3 and up.body.encoder.config.num_layers == 2
    assert main(["export", "--format", "transformers", str(ckpt), str(tmp_path / "hf")]) == 2
    assert "MelHuBERT has no transformers class" in capsys.readouterr().err


def test_compression_study_distils_melhubert(mh_setup, tmp_path):
    from s3kit.eval.compression import Evaluation, StudyConfig, _distill

    root, _, train_cuts, _ = mh_setup
    cfg = StudyConfig(distill_layers=(4, 8), distill_targets=(4, 12), distill_steps=2, distill_batch_size=4,
                      max_duration=4.0, latency_seconds=0.2, latency_repeats=1, progress=False, device="cpu")
    rows, note = _distill(root / "teacher", train_cuts, {}, Evaluation(out=tmp_path), cfg, tmp_path / "distill")
    assert note is None
    assert [r["layers"] for r in rows] == [1, 2] and all(r["targets"] == [1, 3] for r in rows)
    assert rows[0]["params"] < rows[1]["params"]


def test_feature_grad_mult_scales_and_freezes_cnn_gradient(setup):
    """s3prl's ``feature_grad_mult``: the CNN gradient is the unscaled one times m; 0 freezes it
    (no CNN gradient, no CNN parameters to optimise) and leaves the forward pass unchanged."""
    _, teacher, train_cuts, _ = setup
    from s3kit.data.loader import make_loader

    batch = next(iter(make_loader(train_cuts, max_duration=5.0, seed=0)))
    grads, losses, methods = {}, {}, {}
    for m in (1.0, 0.1, 0.0):
        torch.manual_seed(0)
        method = DistilHuBERT(teacher, DistilConfig(layers=2, targets=(2, 4), feature_grad_mult=m)).eval()
        loss = method.step(batch)["loss"]
        loss.backward()
        fe = method.student_model.feature_extractor
        grads[m] = [p.grad for p in fe.parameters()]
        losses[m], methods[m] = float(loss.detach()), method
        later = method.student_model.encoder.layers[0].attention.q_proj.weight.grad
        assert later is not None and later.abs().sum() > 0
    assert losses[1.0] == losses[0.1] == losses[0.0]  # the forward pass is the same
    for g1, g01 in zip(grads[1.0], grads[0.1]):
        assert g1.abs().sum() > 0
        torch.testing.assert_close(g01, 0.1 * g1, rtol=1e-4, atol=1e-9)
    assert all(g is None for g in grads[0.0])
    frozen = {id(p) for p in methods[0.0].student_model.feature_extractor.parameters()}
    assert not frozen & {id(p) for p in methods[0.0].trainable_parameters()}
    with pytest.raises(ValueError, match="feature_grad_mult"):
        DistilConfig(feature_grad_mult=-1)
