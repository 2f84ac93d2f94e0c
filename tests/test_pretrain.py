"""Pretraining: span masks, masked-prediction loss, k-means units, Table 2 sizes, a tiny MelHuBERT learning."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from s3kit.data.loader import AudioBatch
from s3kit.methods import pretrain as P
from s3kit.models import melhubert as M

TINY = dict(num_layers=2, hidden_size=64, ffn_size=128, num_heads=2, pos_conv_kernel=16, pos_conv_groups=4,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
FREQS = np.array([200, 350, 500, 800, 1200, 1800, 2600, 3500])


def _toy_corpus(n=32, segments=15, seg=1600, seed=0):
    """Utterances of 100 ms tones from 8 frequencies: MFCC k-means finds the tones."""
    rng = np.random.default_rng(seed)
    t = np.arange(seg) / 16000
    wavs = []
    for _ in range(n):
        tones = [0.3 * np.sin(2 * np.pi * f * t) for f in rng.choice(FREQS, segments)]
        wavs.append(torch.from_numpy((np.concatenate(tones) + 0.01 * rng.standard_normal(segments * seg)).astype(np.float32)))
    cuts = [SimpleNamespace(id=f"u{i}", start=0.0) for i in range(n)]
    return wavs, cuts


def _batches(wavs, cuts, size=8):
    for i in range(0, len(wavs), size):
        w = torch.stack(wavs[i : i + size])
        yield AudioBatch(w, torch.full((len(w),), w.shape[1]), cuts[i : i + size], [c.id for c in cuts[i : i + size]])


@pytest.fixture(scope="module")
def toy():
    wavs, cuts = _toy_corpus()
    km = P.fit_kmeans(_batches(wavs, cuts), P.mfcc_features, num_clusters=16, seed=0, n_init=3)
    units = P.assign_units(_batches(wavs, cuts), P.mfcc_features, km, {"num_clusters": 16})
    return wavs, cuts, km, units


# ------------------------------------------------------------------ masking


def _expected_masked_fraction(T: int, k: int, span: int) -> float:
    """Exact E[masked fraction] for k starts drawn without replacement from N = T - span + 1:
    frame t is unmasked iff none of the c_t starts covering it is drawn."""
    N = T - span + 1
    total = 0.0
    for t in range(T):
        c = min(t, N - 1) - max(0, t - span + 1) + 1
        total += 1.0 - math.comb(N - c, k) / math.comb(N, k)
    return total / T


def test_span_mask_fraction_matches_configuration():
    g = torch.Generator().manual_seed(0)
    mask = P.compute_span_mask((400, 500), mask_prob=0.08, span=10, min_masks=0, generator=g)
    expected = _expected_masked_fraction(500, 40, 10)  # 0.08 * 500 = 40 starts exactly
    assert abs(expected - (1 - 0.92**10)) < 0.03  # the familiar ~57 % of HuBERT / wav2vec 2.0
    assert abs(mask.float().mean().item() - expected) < 0.005


def test_span_mask_start_count_with_unit_spans():
    # span 1: masked frames == starts; 0.08 * 510 = 40.8 -> 40 or 41, mean 40.8
    counts = P.compute_span_mask((2000, 510), 0.08, span=1, min_masks=0, generator=torch.Generator().manual_seed(1)).sum(1)
    assert set(counts.tolist()) <= {40, 41}
    assert abs(counts.float().mean().item() - 40.8) < 0.05


def test_span_mask_respects_lengths_min_masks_and_seed():
    lengths = torch.tensor([100, 30, 12])
    m1 = P.compute_span_mask((3, 100), 0.08, 10, min_masks=2, lengths=lengths, generator=torch.Generator().manual_seed(3))
    m2 = P.compute_span_mask((3, 100), 0.08, 10, min_masks=2, lengths=lengths, generator=torch.Generator().manual_seed(3))
    assert torch.equal(m1, m2)
    assert not m1[1, 30:].any() and not m1[2, 12:].any()
    assert m1[1].sum() >= 10  # 0.08 * 30 < 2 -> min_masks spans of 10 frames (overlap <= 9)
    spans = P.compute_span_mask((1, 5), 0.5, 10, min_masks=1)  # span longer than the item: clipped
    assert spans.all()


# ------------------------------------------------------------------ loss


def test_masked_prediction_loss_hand_computed_and_masked_only():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [0.0, 5.0]]], requires_grad=True)  # (1, 4, 2)
    targets = torch.tensor([[0, 0, 1, P.IGNORE]])
    mask = torch.tensor([[True, False, True, True]])
    loss = P.masked_prediction_loss(logits, targets, mask)
    expected = (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 2  # frames 0 and 2; frame 3 has no label
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert torch.all(logits.grad[0, 1] == 0) and torch.all(logits.grad[0, 3] == 0)  # unmasked / unlabelled
    assert logits.grad[0, 0].abs().sum() > 0
    changed = logits.detach().clone()
    changed[0, 1] = torch.tensor([-9.0, 9.0])  # an unmasked frame, now badly wrong
    assert P.masked_prediction_loss(changed, targets, mask).item() == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------ k-means units


def test_kmeans_ids_stable_for_a_seed_and_units_roundtrip(toy, tmp_path):
    wavs, cuts, km, units = toy
    km2 = P.fit_kmeans(_batches(wavs, cuts), P.mfcc_features, num_clusters=16, seed=0, n_init=3)
    again = P.assign_units(_batches(wavs, cuts), P.mfcc_features, km2)
    assert all(np.array_equal(units.ids[c.id], again.ids[c.id]) for c in cuts)
    assert len(units.ids["u0"]) == int(M.num_frames(torch.tensor([wavs[0].numel()]))[0])
    assert len(np.unique(np.concatenate(list(units.ids.values())))) >= 8  # the tones are separated
    path = P.save_units(tmp_path / "units.safetensors", units)
    loaded = P.load_units(path)
    assert loaded.meta["num_clusters"] == 16 and all(np.array_equal(loaded.ids[c.id], units.ids[c.id]) for c in cuts)
    # a crop starting 0.2 s into u3 (loader crop) plus a 5-frame offset (method crop) reads ids 15..
    cropped = SimpleNamespace(id="u3", start=0.2)
    tgt = loaded.targets([cropped], frames=20, offsets=[5])
    assert torch.equal(tgt[0], torch.from_numpy(units.ids["u3"][15:35].astype(np.int64)))
    tail = loaded.targets([SimpleNamespace(id="u3", start=0.0)], frames=100)
    assert (tail[0, len(units.ids["u3"]):] == P.IGNORE).all()
    with pytest.raises(KeyError, match="no k-means units"):
        loaded.targets([SimpleNamespace(id="other", start=0.0)], frames=5)


# ------------------------------------------------------------------ architectures


@pytest.mark.parametrize("kind", P.KINDS)
@pytest.mark.parametrize("arch", ["small", "slim", "base"])
def test_parameter_counts_match_table2(kind, arch):
    with torch.device("meta"):  # count without allocating
        model = P.build_model(kind, arch)
    millions = P.count_parameters(model) / 1e6
    assert abs(millions - P.TABLE2_PARAMS[(kind, arch)]) / P.TABLE2_PARAMS[(kind, arch)] < 0.05
    layers = model.config.num_layers if kind == "melhubert" else model.config.num_hidden_layers
    assert layers == P.ARCHS[arch][0]


def test_melhubert_upstream_padded_batch_equals_one_by_one(tmp_path):
    from s3kit import load_upstream

    torch.manual_seed(0)
    model = P.build_model("melhubert", "tiny", num_clusters=16, **TINY)
    up = model.upstream().eval()
    wavs = torch.randn(2, 16000) * 0.1
    lengths = torch.tensor([16000, 11000])
    batched = up(wavs, lengths)
    alone = up(wavs[1:, :11000], lengths[1:])
    assert batched.lengths.tolist() == [49, 34] and len(batched.states) == 3
    for a, b in zip(batched.states, alone.states):
        torch.testing.assert_close(a[1, :34], b[0], atol=1e-4, rtol=1e-4)
    M.save_upstream(tmp_path / "mh", model)
    loaded = load_upstream(tmp_path / "mh")
    torch.testing.assert_close(loaded(wavs, lengths).states[-1], batched.states[-1])


# ------------------------------------------------------------------ learning


def test_tiny_melhubert_masked_prediction_loss_drops(toy):
    wavs, cuts, _, units = toy
    torch.manual_seed(0)
    cfg = P.PretrainConfig(kind="melhubert", model=TINY, max_frames=50)
    method = P.build_method(cfg, units)
    method.model.encoder.front_end.set_stats(*P.fbank_stats(method.model, _batches(wavs, cuts)))
    batches = list(_batches(wavs, cuts))
    opt = torch.optim.Adam(method.parameters(), lr=2e-3)
    losses = []
    for step in range(80):
        out = method.step(batches[step % len(batches)])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[0] == pytest.approx(math.log(16), abs=0.3)  # untrained: uniform over 16 clusters
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.4


@pytest.mark.parametrize("kind", ["hubert", "wav2vec2"])
def test_hf_kinds_step_backward(kind, toy):
    wavs, cuts, _, units = toy
    torch.manual_seed(0)
    small = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2, conv_dim=(32,) * 7)
    if kind == "wav2vec2":
        small.update(num_negatives=10)
    cfg = P.PretrainConfig(kind=kind, model=small, max_frames=40)
    method = P.build_method(cfg, units)
    out = method.step(next(_batches(wavs, cuts, size=4)))
    assert torch.isfinite(out["loss"]) and out["loss"].item() > 0
    out["loss"].backward()
    head = method.model.label_embeddings if kind == "hubert" else method.model.quantizer.codevectors
    assert head.grad is not None and head.grad.abs().sum() > 0
    if kind == "hubert":
        assert out["loss"].item() == pytest.approx(math.log(16), abs=0.5)


# ------------------------------------------------------------------ trainer + CLI + checkpoints


def test_cli_pretrain_melhubert_checkpoints_are_upstreams(tmp_path):
    from lhotse import CutSet, Recording, RecordingSet

    from s3kit import load_upstream
    from s3kit.cli import main
    from s3kit.data.manifest import save_cuts
    from s3kit.testing import write_wav

    wavs, _ = _toy_corpus(n=12, segments=10)
    recs = [Recording.from_file(write_wav(tmp_path / f"u{i}.wav", w.numpy()), recording_id=f"u{i}") for i, w in enumerate(wavs)]
    manifest = save_cuts(CutSet.from_manifests(recordings=RecordingSet.from_recordings(recs)), tmp_path / "train.jsonl.gz")
    out = tmp_path / "run"
    model = "model={num_layers: 2, hidden_size: 32, ffn_size: 64, num_heads: 2, pos_conv_kernel: 16, pos_conv_groups: 4}"
    rc = main(["pretrain", "melhubert", "--manifest", str(manifest), "--out", str(out), "--steps", "3", "--save-at", "2",
               "--device", "cpu", "num_clusters=8", "max_frames=40", "max_duration=4", model, "train.progress=false"])
    assert rc == 0
    assert P.load_units(out / "targets" / "units.safetensors").meta["num_clusters"] == 8
    up = load_upstream(out / "checkpoints" / "step-00000002")
    hidden = up(wavs[0][None], None)
    assert isinstance(up, M.MelHubertUpstream) and len(hidden.states) == 3 and hidden.states[-1].shape[-1] == 32
    # the fbank statistics of the corpus travel with the checkpoint
    assert not torch.allclose(up.encoder.front_end.mean, torch.zeros(40))
