"""Batches hold what the papers' batches hold: utterance counts, or seconds after the crop."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from lhotse import CutSet, Recording, RecordingSet
from lhotse.testing.dummies import dummy_cut

from s3kit.data.loader import make_loader
from s3kit.methods import pretrain as P
from s3kit.testing import sine, tiny_hf_model, write_wav
from s3kit.train import TrainConfig


def _long_cuts(n: int = 24, seconds: float = 20.0) -> CutSet:
    return CutSet.from_cuts(dummy_cut(i, duration=seconds) for i in range(n))


@pytest.mark.parametrize("shuffle", [True, False])
def test_loader_counts_each_utterance_as_its_crop(shuffle):
    cuts = _long_cuts()
    # MelHuBERT: 12 utterances of 7.5 s crops = 90 s; the 20 s originals would allow only 4
    capped = make_loader(cuts, max_duration=90.0, max_cuts=12, length_cap=7.5, shuffle=shuffle)
    assert capped.batch_sizes() == [12, 12]
    assert make_loader(cuts, max_duration=90.0, max_cuts=12, shuffle=shuffle).batch_sizes() == [4] * 6
    # the loader's own crop sizes batches by the cropped lengths too ("seconds after cropping")
    assert make_loader(cuts, max_duration=24.0, crop=2.0, shuffle=shuffle).batch_sizes() == [12, 12]
    assert "12.0 utterances per batch (min 12, max 12)" in capped.describe()


def test_pretraining_batch_defaults_are_the_papers():
    mel, hub = P.PretrainConfig(kind="melhubert", max_frames=375), P.PretrainConfig(kind="hubert", max_frames=781)
    assert (mel.utterances_per_batch, mel.seconds_per_batch) == (12, pytest.approx(90.0))  # 12 x 7.5 s crops
    assert (hub.utterances_per_batch, hub.seconds_per_batch) == (None, 87.5)  # fairseq max_tokens, no cap
    assert hub.crop_seconds == pytest.approx(15.62)
    with pytest.raises(ValueError, match="holds no"):
        P.PretrainConfig(max_frames=100, max_duration=1.0)


def _recordings(root, n: int, seconds: float) -> CutSet:
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        wav = sine(float(rng.uniform(200, 2000)), seconds, 0.3) + 0.02 * rng.standard_normal(int(seconds * 16000))
        recs.append(Recording.from_file(write_wav(root / f"u{i}.wav", wav.astype(np.float32)), recording_id=f"u{i}"))
    return CutSet.from_manifests(recordings=RecordingSet.from_recordings(recs))


def _logged(out_dir, name: str) -> list[float]:
    with open(out_dir / "metrics.csv") as f:
        return [float(r["value"]) for r in csv.DictReader(f) if r["split"] == "train" and r["name"] == name]


def test_melhubert_pretraining_batches_hold_batch_size_utterances(tmp_path, capsys):
    cuts = _recordings(tmp_path / "wav", 12, 2.0)
    # 0.5 s crops: 6 utterances = 3 s; counted by their full 2 s they would be 1 per 3 s batch
    cfg = P.PretrainConfig(kind="melhubert", model={"num_layers": 1, "hidden_size": 32, "ffn_size": 64, "num_heads": 2,
                                                    "pos_conv_kernel": 16, "pos_conv_groups": 4},
                           max_frames=25, num_clusters=4, batch_size=6, max_duration=3.0)
    tc = TrainConfig(out_dir=str(tmp_path / "run"), total_steps=2, log_every=1, save_every=10, progress=False, device="cpu")
    P.pretrain(cuts, cfg, tc)
    assert _logged(tmp_path / "run", "utterances") == [6.0, 6.0]
    assert "batches: 6.0 utterances per batch (min 6, max 6)" in capsys.readouterr().out


def test_distilhubert_batches_hold_batch_size_utterances(tmp_path, capsys):
    from s3kit.methods.distilhubert import DistilConfig, distill
    from s3kit.upstream.hf import HFUpstream

    cuts = _recordings(tmp_path / "wav", 8, 2.0)
    teacher = HFUpstream(tiny_hf_model("hubert", layers=2, hidden=32, seed=1))
    # 0.5 s crops: 4 utterances fit 2 s; by their full 2 s only one would
    cfg = DistilConfig(layers=1, targets=(1, 2), crop_samples=8000, batch_size=4, max_duration=2.0, cache=False,
                       train=TrainConfig(out_dir=str(tmp_path / "d"), total_steps=2, log_every=1, save_every=10,
                                         progress=False, device="cpu"))
    distill(teacher, cuts, cfg)
    assert _logged(tmp_path / "d", "utterances") == [4.0, 4.0]
    assert "distilhubert batches: 4.0 utterances per batch (min 4, max 4)" in capsys.readouterr().out
