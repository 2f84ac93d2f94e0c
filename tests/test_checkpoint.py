import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from s3kit import checkpoint
from s3kit.checkpoint import CheckpointError


@dataclass
class Cfg:
    width: int = 8


def test_roundtrip_and_meta(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    d = checkpoint.save(tmp_path / "ck", m, Cfg(), extra_tensors={"opt": {"m": torch.ones(3)}}, step=7)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "opt.safetensors"]
    m2 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    meta = checkpoint.load_into(m2, d)
    assert meta["step"] == 7 and meta["config"] == {"width": 8} and meta["class"] == "Sequential"
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(checkpoint.load_tensors(d, "opt")["m"], torch.ones(3))


def test_tied_weights_are_saved(tmp_path):
    lin = nn.Linear(3, 3)
    m = nn.ModuleDict({"a": lin, "b": lin})  # shared storage: safetensors alone would refuse
    checkpoint.save(tmp_path / "ck", m)
    state, _ = checkpoint.load(tmp_path / "ck")
    assert torch.equal(state["a.weight"], state["b.weight"])


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path):
    m = nn.Linear(2, 2)
    checkpoint.save(tmp_path / "ck", m, step=1)
    checkpoint.save(tmp_path / "ck", m, step=2)
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_architecture_mismatch_lists_keys(tmp_path):
    checkpoint.save(tmp_path / "ck", nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)))
    other = nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError) as e:
        checkpoint.load_into(other, tmp_path / "ck")
    msg = str(e.value)
    assert "missing keys (2): 2.bias, 2.weight" in msg
    assert "0.weight: checkpoint (8, 4) vs model (16, 4)" in msg


def test_incomplete_or_corrupt_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "nope")
    d = checkpoint.save(tmp_path / "ck", nn.Linear(2, 2))
    (d / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        checkpoint.load(d)
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        checkpoint.load(d)
