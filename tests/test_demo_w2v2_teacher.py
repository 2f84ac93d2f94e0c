"""The shipped wav2vec 2.0 demo teacher (src/s3kit/assets/demo_w2v2_teacher): small, loadable as an
upstream and as the DVCC teacher codebook, and its codebook is not collapsed."""

from pathlib import Path

import torch

import s3kit
from s3kit.methods.dvcc import load_teacher
from s3kit.testing import speechlike
from s3kit.upstream import load_upstream

ASSET = Path(s3kit.__file__).resolve().parent / "assets" / "demo_w2v2_teacher"


def test_asset_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in ASSET.iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    assert sum(files.values()) < 8_000_000  # shipped in the wheel (package-data assets/**/*)


def test_loads_as_upstream_and_teacher_codebook():
    torch.manual_seed(0)
    up = load_upstream(str(ASSET))
    assert up.num_layers == 5 and up.hidden_sizes[-1] == 192 and up.frame_rate == 50.0
    wav = torch.from_numpy(speechlike())[None]
    lengths = torch.tensor([wav.shape[1]])
    with torch.no_grad():
        hidden = up(wav, lengths)
    assert len(hidden.states) == 5 and torch.isfinite(hidden.states[-1]).all()
    up2, codebook = load_teacher(str(ASSET), need_codebook=True)
    codes, flen = codebook.codes(wav, lengths)  # (1, Tt, G)
    assert codes.shape == (1, int(flen[0]), 2) and int(flen[0]) == hidden.states[0].shape[1]
    assert codebook.vectors(codes).shape == (1, int(flen[0]), codebook.code_dim)
    # a trained, non-collapsed codebook: a 1.5 s input uses several entries per group
    for g in range(2):
        assert len(torch.unique(codes[0, :, g])) >= 3
