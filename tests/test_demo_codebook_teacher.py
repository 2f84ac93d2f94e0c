"""The shipped codebook teacher (src/s3kit/assets/demo_codebook_teacher): a Gumbel codebook learned
on the shipped MelHuBERT demo teacher. Small, bound to that teacher's weights, loadable as the
DVCC teacher codebook, and its codes are in use (not collapsed)."""

import json
from pathlib import Path

import torch

import s3kit
from s3kit.methods.dvcc import load_teacher
from s3kit.testing import speechlike
from s3kit.upstream import load_upstream

ASSETS = Path(s3kit.__file__).resolve().parent / "assets"
ASSET = ASSETS / "demo_codebook_teacher"


def test_asset_is_small_and_names_the_shipped_teacher():
    files = {p.name: p.stat().st_size for p in ASSET.iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    assert sum(files.values()) < 1_000_000  # the codebook only; the teacher is ../demo_teacher
    meta = json.loads((ASSET / "config.json").read_text())
    assert meta["feature_codebook"]["teacher"] == "../demo_teacher" and "trainer_state" not in meta


def test_loads_as_teacher_and_codebook_with_codes_in_use():
    up = load_upstream(str(ASSET))  # the rows without the codebook distil the MelHuBERT teacher itself
    ref = load_upstream(str(ASSETS / "demo_teacher"))
    wav = torch.from_numpy(speechlike())[None]
    lengths = torch.tensor([wav.shape[1]])
    with torch.no_grad():
        torch.testing.assert_close(up(wav, lengths).states[-1], ref(wav, lengths).states[-1])
    _, codebook = load_teacher(str(ASSET), need_codebook=True)
    codes, flen = codebook.codes(wav, lengths)
    assert codes.shape == (1, int(flen[0]), codebook.num_groups)
    assert codebook.vectors(codes).shape == (1, int(flen[0]), codebook.code_dim)
    for g in range(codebook.num_groups):  # a 1.5 s input uses several entries per group
        assert len(torch.unique(codes[0, :, g])) >= 3
