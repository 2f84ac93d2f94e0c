"""The compression study's weight-pruning schedule (bias paper §3.3, REFERENCE-NOTES §D)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import s3kit
from s3kit import checkpoint, load_upstream
from s3kit.eval import compression
from s3kit.eval.compression import StudyConfig, load_subject, study, weight_schedule
from s3kit.methods import prune
from s3kit.testing import tiny_hf_dir, tone_cuts
from s3kit.train.trainer import STATE_KEY


def test_weight_levels_scored_after_their_fine_tuning_with_one_optimiser(tmp_path, monkeypatch):
    model = tiny_hf_dir(tmp_path / "m", heads=4, ffn=64)
    cuts = tone_cuts(tmp_path / "audio", n=6, seconds=(0.3, 0.6))
    # tolerance 0: never a plateau, so each level waits interval (3) + max_wait (2) = 5 updates,
    # checked in chunks of max(1, interval / 5) = 1 update after the first 3
    wc = prune.WeightPruneConfig(interval=3, window=2, tolerance=0.0, max_wait=2)
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
        # one Adam through the level's plateau checks: its step count is the level's 5 updates
        _, meta = checkpoint.load(row["checkpoint"])
        adam_steps = {v for k, v in meta[STATE_KEY]["optimizer"]["scalars"].items() if k.endswith(".step")}
        tensors = checkpoint.load_tensors(row["checkpoint"], "optimizer")
        adam_steps |= {float(v) for k, v in tensors.items() if k.endswith(".step")}
        assert adam_steps == {5.0}
    # every level, the last included, is fine-tuned (5 updates) after its prune and before it is scored
    assert [(r["pruned_at"], r["train_step"]) for r in rows] == [(5, 10), (10, 15)]


ASSET_W2V2 = Path(s3kit.__file__).resolve().parent / "assets" / "demo_w2v2_teacher"


def test_wav2vec2_fine_tuning_continues_the_pretrained_gumbel_temperature(tmp_path):
    from s3kit.methods.pretrain import gumbel_temperature

    subject = load_subject(ASSET_W2V2, tone_cuts(tmp_path / "audio", n=2))
    assert subject.contrastive and subject.pretrain_step == 800  # the shipped teacher's 800 updates
    method = subject.loss_method(None)
    # (2.0, 0.5, 0.9975) after 800 updates: 2 * 0.9975^800 = 0.27 -> the floor 0.5, not a restart at 2.0
    assert method.model.quantizer.temperature == pytest.approx(0.5)
    # the schedule continues from the pretraining step, through the prune offsets
    method.cfg = dataclasses.replace(method.cfg, gumbel_temperature=(2.0, 0.1, 0.999))
    prune.PruneFinetune(method, step_offset=100).on_step_end(7)
    assert method.model.quantizer.temperature == pytest.approx(2.0 * 0.999 ** (800 + 107))
    assert gumbel_temperature(method.cfg, 907) == pytest.approx(2.0 * 0.999**907)


def test_wav2vec2_weight_pruning_needs_a_recorded_schedule_by_default(tmp_path):
    cuts = tone_cuts(tmp_path / "audio", n=2)
    cfg = StudyConfig(methods=("weight",), progress=False, device="cpu")
    with pytest.raises(ValueError, match="--schedule-from RUN"):
        study(ASSET_W2V2, cuts, tmp_path / "out", cfg)
    assert not (tmp_path / "out" / "study.json").exists()  # refused before any work
    # a MelHuBERT / distillation subject keeps the plateau trigger
    assert weight_schedule(cfg, compression.Subject(None, "distill")) is None
    with pytest.raises(FileNotFoundError, match="compress study --methods weight"):
        weight_schedule(dataclasses.replace(cfg, schedule_from=str(tmp_path / "none")), compression.Subject(None, "distill"))


def test_weight_pruning_replays_a_recorded_schedule(tmp_path):
    recorded = tmp_path / "melhubert-study"
    recorded.mkdir()
    rows = [{"method": "weight", "step": 1, "pruned_at": 3, "train_step": 5, "target_sparsity": 0.2},
            {"method": "weight", "step": 2, "pruned_at": 5, "train_step": 9, "target_sparsity": 0.3},
            {"method": "head", "step": 1, "train_step": 2}]
    (recorded / "study.json").write_text(json.dumps({"rows": rows}))
    model = tiny_hf_dir(tmp_path / "m", heads=4, ffn=64)
    cuts = tone_cuts(tmp_path / "audio", n=4, seconds=(0.3, 0.5))
    cfg = StudyConfig(methods=("weight",), schedule_from=str(recorded), latency_seconds=0.2, latency_repeats=1,
                      progress=False, device="cpu")
    rep = study(model, cuts, tmp_path / "out", cfg)
    got = [(r["pruned_at"], r["train_step"], r["target_sparsity"]) for r in rep["rows"]]
    assert got == [(3, 5, 0.2), (5, 9, 0.3)]
    assert rep["weight_schedule"] == str(recorded / "study.json")
    for r in rep["rows"]:
        _, meta = checkpoint.load(r["checkpoint"])
        assert meta[STATE_KEY]["step"] == r["train_step"] - r["pruned_at"]  # fine-tuned up to the recorded next prune
        assert abs(r["sparsity"] - r["target_sparsity"]) < 1e-3


def test_cli_schedule_from(tmp_path, capsys):
    import argparse

    from s3kit.commands import compress
    from s3kit.data.manifest import save_cuts

    manifest = save_cuts(tone_cuts(tmp_path / "audio", n=2), tmp_path / "m.jsonl.gz")
    parser = argparse.ArgumentParser()
    compress.register(parser.add_subparsers())
    common = ["compress", "study", "--model", str(ASSET_W2V2), "--out", str(tmp_path / "o"), "--methods", "weight",
              "--manifest", str(manifest)]
    assert compress.run_study(parser.parse_args(common)) == 2  # wav2vec 2.0: says what to pass
    assert "--schedule-from RUN" in capsys.readouterr().err
    args = parser.parse_args([*common, "--schedule-from", str(tmp_path / "run")])
    assert args.schedule_from == str(tmp_path / "run")
    assert compress.run_study(args) == 2
    assert "no study.json" in capsys.readouterr().err


def test_each_fine_tuning_stretch_starts_at_its_own_temperature(tmp_path, monkeypatch):
    from s3kit.methods.pretrain import gumbel_temperature

    cuts = tone_cuts(tmp_path / "audio", n=4)
    subject = load_subject(ASSET_W2V2, cuts)
    subject.pretrain_cfg = dataclasses.replace(subject.pretrain_cfg, gumbel_temperature=(2.0, 0.1, 0.9999))  # mid-anneal at 800
    seen = []

    def fake_train(method, loader, tc, resume=False, callbacks=()):  # records the state the first update sees
        seen.append(method.inner.model.quantizer.temperature)
        return type("R", (), {"checkpoint": None})()

    monkeypatch.setattr("s3kit.train.trainer.train", fake_train)
    cfg = StudyConfig(progress=False, device="cpu")
    compression._finetune(subject, None, cuts, 5, 1e-5, tmp_path / "f", cfg, offset=40, resume=True, done=3)
    assert seen == [pytest.approx(gumbel_temperature(subject.pretrain_cfg, 800 + 40 + 3))]
