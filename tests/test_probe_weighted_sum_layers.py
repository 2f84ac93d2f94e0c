"""Which states the SUPERB weighted sum spans: all by default, M2D-S's transformer layers only
(its patch embedding ``states[0]`` stays available for analysis) (issue 16 item 8)."""

import pytest
import torch

from s3kit.eval.probe import ProbeConfig, run_probe
from s3kit.models.m2d_vit import M2DUpstream, M2DViT, arch_config
from s3kit.testing import tone_cuts
from s3kit.upstream import load_upstream


@pytest.fixture(scope="module")
def m2d():
    torch.manual_seed(0)
    return M2DUpstream(M2DViT(arch_config("tiny", input_frames=48)).encoder, name="m2d-tiny").eval()


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones")
    return [tone_cuts(root / s, n=n, seed=k) for k, (s, n) in enumerate((("train", 8), ("dev", 4), ("test", 4)))]


def _cfg(tmp_path, **kw):
    return ProbeConfig(lr=1e-3, max_updates=4, eval_every=2, cache_dir=str(tmp_path / "cache"), progress=False, **kw)


def test_m2d_keeps_the_patch_embedding_but_sums_the_blocks(m2d):
    depth = m2d.cfg.depth
    assert m2d.num_layers == depth + 1  # states[0] still returned
    with torch.no_grad():
        hidden = m2d(torch.randn(1, 16000))
    assert len(hidden.states) == depth + 1
    assert m2d.weighted_sum_layers == list(range(1, depth + 1))
    assert load_upstream("mfcc").weighted_sum_layers == [0]


def test_probe_weighted_sum_spans_m2d_transformer_layers(m2d, splits, tmp_path):
    r = run_probe(m2d, "ks", *splits, _cfg(tmp_path))
    assert r.layers == [1, 2] and len(r.layer_weights) == 2
    assert abs(sum(r.layer_weights) - 1.0) < 1e-6
    # explicit choices still win: cache_layers is what the sum spans, and state 0 can be probed alone
    r0 = run_probe(m2d, "ks", *splits, _cfg(tmp_path, cache_layers=[0, 1, 2]))
    assert r0.layers == [0, 1, 2] and len(r0.layer_weights) == 3
    r_emb = run_probe(m2d, "ks", *splits, _cfg(tmp_path, layer=0))
    assert r_emb.layer_weights[r_emb.layers.index(0)] == 1.0
