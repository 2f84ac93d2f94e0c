"""The compression study's weight-pruning schedule (bias paper §3.3, REFERENCE-NOTES §D)."""

from __future__ import annotations

import torch

from s3kit import checkpoint, load_upstream
from s3kit.eval.compression import StudyConfig, study
from s3kit.methods import prune
from s3kit.testing import tiny_hf_dir, tone_cuts
from s3kit.train.trainer import STATE_KEY


def test_weight_levels_scored_after_their_fine_tuning_with_one_optimiser(tmp_path, monkeypatch):
    model = tiny_hf_dir(tmp_path / "m", heads=4, ffn=64)
    cuts = tone_cuts(tmp_path / "audio", n=6, seconds=(0.3, 0.6))
    # tolerance 0: never a plateau, so each level waits interval (5) + max_wait (3) = 8 updates,
    # checked in chunks of interval / 5 = 1 update after the first 5
    wc = prune.WeightPruneConfig(interval=5, window=2, tolerance=0.0, max_wait=3)
    cfg = StudyConfig(methods=("weight",), weight=wc, max_prunes=2, latency_seconds=0.2, latency_repeats=1,
                      progress=False, device="cpu")
    at_prune = []  # the prunable weights right after each prune
    real = prune.WeightMasks.prune_to

    def spy(self, sparsity):
        real(self, sparsity)
        at_prune.append([getattr(m, n).detach().clone() for m, n in self.targets])

    monkeypatch.setattr(prune.WeightMasks, "prune_to", spy)
    rep = study(model, cuts, tmp_path / "out", cfg)
    rows = rep["rows"]
    assert [r["target_sparsity"] for r in rows] == [0.2, 0.3]
    for row, before in zip(rows, at_prune):
        stored = load_upstream(row["checkpoint"])
        after = [getattr(m, n).detach() for m, n in prune.prunable_weights(prune.encoder_of(stored))]
        assert any(not torch.equal(a, b) for a, b in zip(after, before))  # fine-tuning moved the kept weights
        # sparsity as stored: the 0.2 level is 0.200 of the prunable entries (zero-initialised biases included)
        assert abs(row["sparsity"] - row["target_sparsity"]) < 1e-3
        assert row["sparsity"] == prune.zero_fraction(stored)
        # one Adam through the level's plateau checks: its step count is the level's 8 updates
        _, meta = checkpoint.load(row["checkpoint"])
        adam_steps = {v for k, v in meta[STATE_KEY]["optimizer"]["scalars"].items() if k.endswith(".step")}
        tensors = checkpoint.load_tensors(row["checkpoint"], "optimizer")
        adam_steps |= {float(v) for k, v in tensors.items() if k.endswith(".step")}
        assert adam_steps == {8.0}
    # every level, the last included, is fine-tuned (8 updates) after its prune and before it is scored
    assert [(r["pruned_at"], r["train_step"]) for r in rows] == [(8, 16), (16, 24)]
