"""Rewiring Mixed negatives: the paper's union of Twin's and Neutral's by default (§2.1), the
official code's chosen view as an option (issue 16 item 9)."""

import math

import pytest
import torch

from s3kit.data.loader import AudioDataset
from s3kit.methods import rewire as rw
from tests.test_rewire import mixed_rewire


def _cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def test_default_is_the_papers_union_and_chosen_is_kept():
    assert rw.RewireConfig().mixed_negatives == "union"
    assert rw.RewireConfig(mixed_negatives="chosen").mixed_negatives == "chosen"
    with pytest.raises(ValueError, match="now called 'union'"):
        rw.RewireConfig(mixed_negatives="both")


def test_an_anchor_skips_the_other_view_of_its_own_utterance():
    # anchor 0 owns the extra negative n: only anchor 1's denominator has it (N_i: views of s_j, j != i)
    a = [[1.0, 0.0], [0.0, 1.0]]
    p = [[1.0, 1.0], [-1.0, 1.0]]
    n = [0.6, -0.8]
    tau = 0.5
    e = lambda u, v: math.exp(_cos(u, v) / tau)  # noqa: E731
    l0 = -math.log(e(a[0], p[0]) / (e(a[0], p[0]) + e(a[0], p[1]) + e(a[0], a[1])))
    l1 = -math.log(e(a[1], p[1]) / (e(a[1], p[1]) + e(a[1], p[0]) + e(a[1], a[0]) + e(a[1], n)))
    got = rw.info_nce(torch.tensor(a), torch.tensor(p), torch.tensor([n]), tau=tau, negative_owner=torch.tensor([0]))
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="negative_owner"):
        rw.info_nce(torch.tensor(a), torch.tensor(p), None, tau=tau, negative_owner=torch.tensor([0]))


def _mixed(tmp_path, **kw):
    method, cuts = mixed_rewire(tmp_path, **kw)
    return method, AudioDataset()[cuts]


def test_union_encodes_both_views_of_every_utterance(tmp_path):
    method, batch = _mixed(tmp_path)
    torch.manual_seed(0)
    anchors, positives, extra, kinds, owners = method.views(batch)
    assert len(extra) == 4 and owners == [0, 1, 2, 3]  # each utterance's other view
    for i, (pos, ext) in enumerate(zip(positives, extra)):
        twin_view, neutral_view = (pos, ext) if kinds[i] == "twin" else (ext, pos)
        assert twin_view.shape == anchors[i].shape and (twin_view == 0).sum() > 0  # the zeroed span
        assert torch.equal(neutral_view, torch.from_numpy(method.neutral.get(batch.cuts[i])))  # short: not halved
    torch.manual_seed(0)
    assert torch.isfinite(method.step(batch)["loss"])


def test_chosen_keeps_the_official_codes_negatives(tmp_path):
    method, batch = _mixed(tmp_path, mixed_negatives="chosen")
    torch.manual_seed(0)
    _, _, extra, _, owners = method.views(batch)
    assert extra == [] and owners == []
