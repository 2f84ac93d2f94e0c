"""Contrastive rewiring (s3kit.methods.rewire): InfoNCE, Twin / Neutral positives, the method, end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from s3kit.methods import rewire as rw
from s3kit.testing import tiny_hf_dir, tone_cuts


def _cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


# ----------------------------------------------------------------------------- InfoNCE


def test_info_nce_matches_hand_computation_on_two_pairs():
    a = [[1.0, 0.0], [0.0, 1.0]]
    p = [[1.0, 1.0], [-1.0, 1.0]]
    tau = 0.5
    # anchor 0: candidates p0 (positive), p1, a1 ; anchor 1: p1 (positive), p0, a0
    c = {(i, j): _cos(a[i], p[j]) for i in range(2) for j in range(2)}
    caa = _cos(a[0], a[1])
    l0 = -math.log(math.exp(c[0, 0] / tau) / (math.exp(c[0, 0] / tau) + math.exp(c[0, 1] / tau) + math.exp(caa / tau)))
    l1 = -math.log(math.exp(c[1, 1] / tau) / (math.exp(c[1, 1] / tau) + math.exp(c[1, 0] / tau) + math.exp(caa / tau)))
    got = rw.info_nce(torch.tensor(a), torch.tensor(p), tau=tau)
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)

    # one extra negative n joins both denominators
    n = [0.6, -0.8]
    e0, e1 = math.exp(_cos(a[0], n) / tau), math.exp(_cos(a[1], n) / tau)
    m0 = -math.log(math.exp(c[0, 0] / tau) / (math.exp(c[0, 0] / tau) + math.exp(c[0, 1] / tau) + math.exp(caa / tau) + e0))
    m1 = -math.log(math.exp(c[1, 1] / tau) / (math.exp(c[1, 1] / tau) + math.exp(c[1, 0] / tau) + math.exp(caa / tau) + e1))
    got = rw.info_nce(torch.tensor(a), torch.tensor(p), torch.tensor([n]), tau=tau)
    assert got.item() == pytest.approx((m0 + m1) / 2, rel=1e-6)


def test_nt_xent_is_the_mean_of_both_directions_and_scale_invariant():
    g = torch.Generator().manual_seed(0)
    a, p = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    sym = rw.nt_xent(a, p)
    assert sym.item() == pytest.approx(0.5 * (rw.info_nce(a, p) + rw.info_nce(p, a)).item(), rel=1e-6)
    assert rw.info_nce(3 * a, 0.1 * p).item() == pytest.approx(rw.info_nce(a, p).item(), rel=1e-5)  # cosine
    # identical views of orthogonal items: the loss approaches 0 as tau -> 0
    eye = torch.eye(4)
    assert rw.info_nce(eye, eye, tau=0.04).item() < 1e-6


def test_info_nce_gradient_pulls_positives_together():
    a = torch.tensor([[1.0, 0.2], [0.1, 1.0]], requires_grad=True)
    p = torch.tensor([[0.5, 0.5], [0.6, 0.4]])
    loss = rw.info_nce(a, p, tau=0.1)
    loss.backward()
    with torch.no_grad():
        moved = a - 0.05 * a.grad
        assert rw.info_nce(moved, p, tau=0.1) < loss


def test_info_nce_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        rw.info_nce(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="negatives"):
        rw.info_nce(torch.ones(2, 3), torch.ones(2, 3), torch.ones(1, 4))


# ----------------------------------------------------------------------------- positives


def test_twin_zeroes_exactly_twenty_percent_in_one_span_starting_in_first_four_fifths():
    n = 10_000
    starts = []
    for seed in range(200):
        out = rw.twin(torch.ones(n), rng=seed)
        zero = torch.nonzero(out == 0).flatten()
        assert zero.numel() == n // 5  # exactly 20 % of the samples
        assert int(zero[-1] - zero[0]) + 1 == n // 5  # one contiguous span
        starts.append(int(zero[0]))
    assert min(starts) >= 0 and max(starts) < 4 * n // 5
    assert max(starts) > 0.7 * n and min(starts) < 0.1 * n  # uniform over the first four fifths


def test_split_long_takes_one_half_above_threshold():
    wav = torch.arange(100_001, dtype=torch.float32)
    first, second = rw.split_long(wav, 0), rw.split_long(wav, 1)
    assert first.numel() == second.numel() == 50_000
    assert first[0] == 0 and second[0] == 50_000
    short = torch.arange(90_000, dtype=torch.float32)
    assert rw.split_long(short, 1) is short


def test_neutral_lookup_fails_clearly_when_transcript_is_missing(tmp_path):
    cuts = tone_cuts(tmp_path / "a", n=2)  # tones: no transcript in the supervisions
    bank = rw.NeutralBank(None, cache=tmp_path / "cache")
    with pytest.raises(rw.NeutralMissingError, match=r"utt000.*no transcript.*neutral_of"):
        bank.prepare(cuts)
    with pytest.raises(rw.NeutralMissingError, match="utt001"):
        bank.get(list(cuts)[1])


def test_neutral_lookup_by_neutral_of_label(tmp_path):
    cuts = list(tone_cuts(tmp_path / "a", n=3))
    renders = list(tone_cuts(tmp_path / "b", n=3, seed=5))
    for r, c in zip(renders, reversed(cuts)):  # rendering ids differ; the label links them
        r.supervisions[0].custom["neutral_of"] = c.id
    bank = rw.NeutralBank(renders, cache=tmp_path / "cache", tts=False)
    assert bank.prepare(cuts) == 0
    from s3kit.data.loader import load_cut_audio

    np.testing.assert_array_equal(bank.get(cuts[0]), load_cut_audio(renders[2]))


def test_neutral_synthesised_from_transcript_and_cached(tmp_path):
    from s3kit.data import tts

    if "espeak" not in tts.available_engines():
        pytest.skip("espeak-ng not installed")
    cuts = list(tone_cuts(tmp_path / "a", n=1))
    cuts[0].supervisions[0].text = "Turn the lights on"
    bank = rw.NeutralBank(None, voice="espeak:en-us", cache=tmp_path / "cache")
    assert bank.prepare(cuts, progress=False) == 1
    wav = bank.get(cuts[0])
    assert wav.dtype == np.float32 and wav.size > 8000
    again = rw.NeutralBank(None, voice="espeak:en-us", cache=tmp_path / "cache")
    assert again.prepare(cuts, progress=False) == 0  # reused from the cache


def test_config_checks_and_paper_defaults():
    cfg = rw.RewireConfig()
    assert (cfg.tau, cfg.pairs, cfg.span, cfg.dropout, cfg.max_samples) == (0.04, 4, 0.2, 0.1, 90_000)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.optimizer, cfg.train.clip) == (1e-6, 0.01, "adamw", None)
    assert rw.RewireConfig(mode="neutral").total_updates(6600) == 11_550  # 7 epochs of 6.6k / 4
    with pytest.raises(ValueError, match="mode"):
        rw.RewireConfig(mode="tween")


# ----------------------------------------------------------------------------- the method


def _batch(cuts):
    from s3kit.data.loader import AudioDataset

    return AudioDataset()[cuts]


def test_rewire_step_lowers_the_loss_on_a_fixed_batch(tmp_path):
    from s3kit.upstream import load_upstream

    up = load_upstream(tiny_hf_dir(tmp_path / "m", hidden=32))
    method = rw.Rewire(up, rw.RewireConfig(mode="twin", dropout=0.0))
    assert all(m.p == 0.0 for m in up.modules() if isinstance(m, torch.nn.Dropout))
    batch = _batch(tone_cuts(tmp_path / "c", n=4, classes=2, seconds=(0.4, 0.6)))  # two tones: two items share one
    method.train()
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3)
    torch.manual_seed(0)
    first = None
    for _ in range(8):
        torch.manual_seed(1)  # the same views every step: the loss must fall
        out = method.step(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = out["loss"].item() if first is None else first
    torch.manual_seed(1)
    with torch.no_grad():
        last = method.step(batch)["loss"].item()
    assert last < 0.8 * first, (first, last)  # measured 1.28 -> 0.68


def mixed_rewire(tmp_path, **kw) -> tuple[rw.Rewire, list]:
    """A Mixed-mode Rewire on a tiny HuBERT over 4 tone cuts, each with a tone "neutral render"
    in the bank (no TTS); ``kw`` go to RewireConfig. Returns (method, cuts)."""
    from s3kit.upstream import load_upstream

    up = load_upstream(tiny_hf_dir(tmp_path / "m"))
    cuts = list(tone_cuts(tmp_path / "c", n=4, classes=4, seconds=(0.4, 0.6)))
    renders = list(tone_cuts(tmp_path / "n", n=4, seed=3, seconds=(0.4, 0.6)))
    for r, c in zip(renders, cuts):
        r.supervisions[0].custom["neutral_of"] = c.id
    bank = rw.NeutralBank(renders, cache=tmp_path / "cache", tts=False)
    return rw.Rewire(up, rw.RewireConfig(mode="mixed", **kw), bank), cuts


def test_mixed_uses_both_views(tmp_path):
    method, cuts = mixed_rewire(tmp_path, mixed_negatives="union")
    assert all(m.p == pytest.approx(0.1) for m in method.upstream.modules() if isinstance(m, torch.nn.Dropout))
    shares = []
    for seed in range(4):
        torch.manual_seed(seed)
        out = method.step(_batch(cuts))
        assert torch.isfinite(out["loss"])
        shares.append(out["twin_share"].item())
    assert 0.0 < np.mean(shares) < 1.0


def test_rewire_end_to_end_writes_a_transformers_model(tmp_path):
    from transformers import AutoModel

    from s3kit.upstream import load_upstream

    src = tiny_hf_dir(tmp_path / "m", hidden=32)
    cuts = tone_cuts(tmp_path / "c", n=8, classes=4, seconds=(0.4, 0.6))
    cfg = rw.RewireConfig(mode="twin", updates=3)
    cfg = rw.RewireConfig(**{**cfg.__dict__, "train": rw.dataclasses.replace(cfg.train, lr=1e-3, progress=False)})
    out = rw.rewire(str(src), cuts, cfg, out_dir=tmp_path / "run")
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    AutoModel.from_pretrained(out)  # a plain transformers directory
    new, old = load_upstream(out), load_upstream(src)
    assert type(new).__name__ == "HFUpstream"
    diff = max((a - b).abs().max().item() for a, b in zip(new.state_dict().values(), old.state_dict().values()))
    assert diff > 0
    # the saved config keeps the model's own dropout (rewiring's 0.1 is training-only)
    assert new.model.config.hidden_dropout == 0.0
    assert all(m.p == 0.0 for m in new.modules() if isinstance(m, torch.nn.Dropout))
    info = rw.json.loads((tmp_path / "run" / "rewire.json").read_text())
    assert info["updates"] == 3 and info["utterances"] == 8


def test_table2_layout_matches_the_paper():
    rows = [
        {"fraction": f, "model": m, "seed": s, "task": "ks", "metric": "accuracy", "higher_is_better": True,
         "test": t, "updates_to_best": u}
        for f, m, s, t, u in [(0.01, "base", 0, 0.80, 9200), (0.01, "base", 1, 0.90, 9200),
                              (0.01, "twin", 0, 0.86, 2000), (0.01, "twin", 1, 0.86, 2000),
                              (0.05, "base", 0, 0.94, 20000), (0.05, "twin", 0, 0.94, 3750)]
    ]
    md = rw.table2(rows).splitlines()
    assert md[0] == "| Tr. | Model | KS accuracy ↑ [95 % CI] | ⌚ |"
    # two seeds: mean [t interval], 0.85 ± t_{.975,1} 0.0707 / sqrt 2 = 0.85 ± 0.635
    assert md[2] == "| 1% | base | 85.00 [21.47, 100.00], 2 seeds | 9.2k [9.2k, 9.2k] |"  # t interval clipped at 100 %
    assert md[3] == "| 1% | twin | 86.00 [86.00, 86.00], 2 seeds | 2k [2k, 2k] |"
    # one seed without per-item results: no interval to give, and it says so
    assert md[5] == "| 5% | twin | 94.00 [n.a.], 1 seed | 3.75k |"
