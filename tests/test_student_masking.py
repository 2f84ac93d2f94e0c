"""A transformers encoder trained by s3kit (DistilHuBERT student, pruning fine-tuning by
distillation) must not apply its config's SpecAugment to its input unless asked (issue 16 item 7)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from s3kit.methods.distilhubert import DistilConfig, DistilHuBERT
from s3kit.methods.prune import DistillFromOriginal
from s3kit.testing import tiny_hf_model
from s3kit.upstream.hf import HFUpstream

MASKING = dict(apply_spec_augment=True, mask_time_prob=0.5, mask_time_length=2)  # a released config, exaggerated


def _wavs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 32000, generator=g), torch.tensor([32000, 24000])


def _masked_frames(a, b):
    return int((a - b).abs().amax(-1).gt(1e-6).sum())


def test_hf_upstream_masks_only_when_asked():
    wavs, lengths = _wavs()
    up = HFUpstream(tiny_hf_model("wav2vec2", **MASKING), name="w2v2")
    up.eval()
    clean = up(wavs, lengths).states[0]
    up.train()
    torch.manual_seed(0)
    assert _masked_frames(up(wavs, lengths).states[0], clean) == 0  # no dropout in the tiny config
    up.spec_augment = True
    torch.manual_seed(0)
    assert _masked_frames(up(wavs, lengths).states[0], clean) > 20  # the config's masking, on request
    # explicit masks are applied either way, and only on the given frames
    up.spec_augment = False
    mask = torch.zeros(clean.shape[:2], dtype=torch.bool)
    mask[0, 3:7] = True
    out = up(wavs, lengths, mask_time_indices=mask).states[0]
    assert torch.equal(out[1], clean[1])
    moved = (out[0] - clean[0]).abs().amax(-1).gt(1e-6).nonzero().flatten()
    # states[0] follows the positional convolution (kernel 16): frames 3..6 and their neighbours move
    assert len(moved) >= 4 and int(moved.min()) >= 3 - 8 and int(moved.max()) <= 6 + 8


def test_pruning_distillation_student_input_is_unmasked():
    # student == teacher at the start, so with unmasked input every state matches:
    # L1 = 0 and the cosine term is -log sigmoid(1) exactly
    teacher = HFUpstream(tiny_hf_model("wav2vec2", **MASKING), name="teacher")
    method = DistillFromOriginal(HFUpstream(copy.deepcopy(teacher.model), name="student"), teacher)
    method.train()
    wavs, lengths = _wavs()
    batch = type("Batch", (), {"wavs": wavs, "lengths": lengths})()
    torch.manual_seed(0)
    loss = method.step(batch)["loss"]
    assert abs(float(loss.detach()) - float(-F.logsigmoid(torch.tensor(1.0)))) < 1e-5


@pytest.mark.parametrize("asked", [False, True])
def test_distilhubert_student_masks_only_with_the_option(asked):
    teacher = HFUpstream(tiny_hf_model("wav2vec2", layers=2, **MASKING), name="teacher")
    method = DistilHuBERT(teacher, DistilConfig(layers=1, targets=(1, 2), crop_samples=None, spec_augment=asked))
    wavs, lengths = _wavs()
    method.eval()
    clean = method.student(wavs, lengths).states[0]
    method.train()
    torch.manual_seed(0)
    changed = _masked_frames(method.student(wavs, lengths).states[0], clean)
    assert (changed > 20) if asked else (changed == 0)
    assert method.student.model.config.apply_spec_augment is asked
