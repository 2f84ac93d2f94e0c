"""Pruning: physical head / row removal equals masking, weight masks, schedules, save -> reload."""

from __future__ import annotations

import pytest
import torch

from s3kit.methods import prune
from s3kit.models.melhubert import MelHubert, MelHubertConfig, MelHubertUpstream
from s3kit.testing import tiny_hf_model
from s3kit.upstream.hf import HFUpstream

KINDS = ("hubert", "wav2vec2", "wavlm", "melhubert")


def _upstream(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "melhubert":
        cfg = MelHubertConfig(num_layers=2, hidden_size=32, ffn_size=64, num_heads=4, num_clusters=8,
                              pos_conv_kernel=8, pos_conv_groups=4, dropout=0.0, attention_dropout=0.0,
                              activation_dropout=0.0)
        return MelHubertUpstream(MelHubert(cfg)).eval()
    return HFUpstream(tiny_hf_model(kind, seed=seed, heads=4, ffn=64)).eval()


def _wavs():
    g = torch.Generator().manual_seed(1)
    wavs = torch.randn(2, 8000, generator=g) * 0.1
    return wavs, torch.tensor([8000, 6400])


def _states(up, wavs, lengths):
    with torch.no_grad():
        h = up(wavs, lengths)
    return [s * h.mask[..., None] for s in h.states]  # padded frames are not compared


def _mask_heads_reference(up, layer: int, heads: list[int]):
    """Zero the chosen heads' slice of the per-head context before out_proj (a pre-hook); WavLM
    runs out_proj inside F.multi_head_attention_forward, so zero its columns instead (the same map)."""
    attn = prune.layer_parts(up)[layer].attn
    E = prune.head_dim(attn)
    cols = torch.tensor([h * E + e for h in heads for e in range(E)])
    if type(attn).__name__ == "WavLMAttention":
        with torch.no_grad():
            attn.out_proj.weight[:, cols] = 0.0
        return None

    def hook(_m, args):
        ctx = args[0].clone()
        ctx[..., cols] = 0.0
        return (ctx,)

    return attn.out_proj.register_forward_pre_hook(hook)


@pytest.mark.parametrize("kind", KINDS)
def test_head_pruning_equals_masking(kind):
    wavs, lengths = _wavs()
    plan = {0: [1, 3], 1: [0]}
    ref, pruned = _upstream(kind), _upstream(kind)
    for layer, heads in plan.items():
        _mask_heads_reference(ref, layer, heads)
        prune.prune_heads(pruned, layer, heads)
    assert prune.heads_per_layer(pruned) == [2, 3]
    assert prune.kept_heads(prune.layer_parts(pruned)[0].attn) == [0, 2]
    attn0 = prune.layer_parts(pruned)[0].attn
    assert attn0.q_proj.weight.shape == (2 * 8, 32) and attn0.out_proj.weight.shape == (32, 16)
    for a, b in zip(_states(ref, wavs, lengths), _states(pruned, wavs, lengths)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # unpruned differs, so the comparison can fail
    plain = _states(_upstream(kind), wavs, lengths)
    assert (plain[-1] - _states(pruned, wavs, lengths)[-1]).abs().max() > 1e-4
    # pruning again uses current indices and keeps original ids
    prune.prune_heads(pruned, 0, [1])
    assert prune.kept_heads(prune.layer_parts(pruned)[0].attn) == [0]
    with pytest.raises(ValueError, match="no attention head"):
        prune.prune_heads(pruned, 0, [0])


@pytest.mark.parametrize("kind", KINDS)
def test_row_pruning_equals_masking(kind):
    wavs, lengths = _wavs()
    rows = [0, 5, 17, 40, 63]
    ref, pruned = _upstream(kind), _upstream(kind)
    fc2 = prune.layer_parts(ref)[1].fc2
    fc2.register_forward_pre_hook(lambda _m, args: (args[0].index_fill(-1, torch.tensor(rows), 0.0),))
    prune.prune_rows(pruned, 1, rows)
    assert prune.ffn_widths(pruned) == [64, 59]
    for a, b in zip(_states(ref, wavs, lengths), _states(pruned, wavs, lengths)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_scores_hand_computed():
    # 2 heads of width 1 on D = 2: rows are heads
    w = [torch.tensor([[1.0, -2.0], [0.5, 0.5]])] * 3
    b = [torch.tensor([1.0, -3.0])] * 3
    torch.testing.assert_close(prune.head_l1_scores(w, b, 2), torch.tensor([12.0, 12.0]))
    torch.testing.assert_close(prune.head_l1_scores(w, [None] * 3, 2), torch.tensor([9.0, 3.0]))
    w1 = torch.tensor([[1.0, -1.0], [0.0, 2.0], [0.1, 0.1]])  # F = 3, D = 2
    b1 = torch.tensor([0.5, -0.5, 0.0])
    w2 = torch.tensor([[1.0, 0.0, -1.0], [1.0, 0.0, 1.0]])  # D = 2, F = 3
    torch.testing.assert_close(prune.row_l1_scores(w1, b1, w2), torch.tensor([4.5, 2.5, 2.2]))
    assert prune.lowest(torch.tensor([3.0, 1.0, 2.0, 1.0]), 2) == [1, 3]


def test_lowest_l1_pruning_removes_lowest_scores():
    up = _upstream("hubert")
    attn = prune.layer_parts(up)[0].attn
    with torch.no_grad():
        attn.q_proj.weight[8:16] *= 0.01  # head 1 becomes the weakest of layer 0
    removed = prune.prune_lowest_heads(up, per_layer=1)
    assert removed[0] == [1] and prune.heads_per_layer(up) == [3, 3]
    widths = prune.prune_lowest_rows(up, per_layer=16, min_rows=40)
    assert widths == [48, 48]
    assert prune.prune_lowest_rows(up, per_layer=16, min_rows=40) == [40, 40]


def test_weight_masks_survive_optimizer_step():
    up = _upstream("hubert").train()
    masks = prune.WeightMasks(up)
    masks.prune_to(0.5)
    assert abs(masks.sparsity - 0.5) < 1e-3
    assert abs(prune.zero_fraction(up) - 0.5) < 1e-3
    method = prune.PruneFinetune(prune.DistillFromOriginal(up, _upstream("hubert")), masks)
    opt = torch.optim.Adam(method.trainable_parameters(), lr=1e-2)
    wavs, lengths = _wavs()
    batch = type("B", (), {"wavs": wavs, "lengths": lengths})()
    before = [getattr(m, n).detach().clone() for m, n in masks.targets]
    for step in range(1, 3):
        opt.zero_grad()
        loss = method.step(batch)["loss"]
        loss.backward()
        opt.step()
        # without the mask, Adam moves pruned weights off zero ...
        assert prune.zero_fraction(up) < 0.5
        method.on_step_end(step)
        # ... and on_step_end puts them back
        assert abs(prune.zero_fraction(up) - 0.5) < 1e-3
    after = [getattr(m, n).detach() for m, n in masks.targets]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # the kept weights did train
    for (m, n), mask in zip(masks.targets, masks.masks):
        assert bool((getattr(m, n)[~mask] == 0).all())
    # iterative: a higher level keeps every earlier zero
    old = [m.clone() for m in masks.masks]
    masks.prune_to(0.6)
    assert all(bool((~o <= ~n).all()) for o, n in zip(old, masks.masks))
    assert abs(masks.sparsity - 0.6) < 1e-3


def test_global_magnitude_masks_hand_computed():
    a, b = torch.tensor([0.1, -5.0, 0.3]), torch.tensor([[2.0, -0.2], [0.05, 1.0]])
    ma, mb = prune.global_magnitude_masks([a, b], 3 / 7)
    assert ma.tolist() == [False, True, True] and mb.tolist() == [[True, False], [False, True]]


def test_sparsity_schedule_is_the_papers():
    levels = prune.sparsity_levels()
    expected = [0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.675, 0.7] + [round(0.7 + 0.01 * i, 2) for i in range(1, 11)]
    assert levels == pytest.approx(expected)
    assert levels[-1] == pytest.approx(0.8)


def test_head_and_row_schedules_are_the_papers():
    steps, total = prune.head_schedule(prune.HeadPruneConfig(), layers=12, heads=12)
    assert [s for s, _ in steps] == [1000 + k for k in (0, 25_000, 50_000, 75_000, 100_000, 125_000,
                                                        165_000, 205_000, 245_000, 285_000, 325_000)]
    assert [12 * h for _, h in steps][5] == 72 and steps[-1][1] == 1 and total == 366_000
    rows, total = prune.row_schedule(prune.RowPruneConfig(), 3072)
    assert len(rows) == 20 and rows[-1] == (1000 + 19 * 25_000, 512) and rows[0][1] == 2944


def test_plateau_trigger():
    cfg = prune.WeightPruneConfig(ema=0.5, window=4, tolerance=0.01, interval=5)
    trig = prune.PlateauTrigger(cfg)
    for step in range(1, 6):  # loss still falling fast: no prune even after `interval`
        trig.update(step, 10.0 / step)
    assert not trig.ready(5)
    for step in range(6, 20):
        trig.update(step, 1.0)
    assert trig.ready(19)
    trig.pruned(19)
    assert not trig.ready(20)  # interval restarts
    # max_wait forces a prune even without a plateau
    cfg = prune.WeightPruneConfig(ema=0.5, window=4, tolerance=1e-9, interval=2, max_wait=3)
    trig = prune.PlateauTrigger(cfg)
    for step in range(1, 6):
        trig.update(step, float(step))
    assert trig.ready(5) and not trig.ready(4)


@pytest.mark.parametrize("kind", ["hubert", "wavlm", "melhubert"])
def test_save_reload_same_outputs(kind, tmp_path):
    from s3kit import load_upstream

    wavs, lengths = _wavs()
    up = _upstream(kind)
    prune.prune_heads(up, 0, [2])
    prune.prune_heads(up, 1, [0, 1])
    prune.prune_rows(up, 0, list(range(10)))
    masks = prune.WeightMasks(up)
    masks.prune_to(0.3)
    prune.save_pruned(tmp_path / "p", up)
    again = load_upstream(tmp_path / "p")
    assert prune.heads_per_layer(again) == [3, 2] and prune.ffn_widths(again) == [54, 64]
    assert prune.kept_heads(prune.layer_parts(again)[1].attn) == [2, 3]
    assert abs(prune.zero_fraction(again) - 0.3) < 1e-3
    for a, b in zip(_states(up, wavs, lengths), _states(again, wavs, lengths)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def _stimuli(tmp_path):
    from s3kit.testing import tone_cuts

    cuts = tone_cuts(tmp_path / "audio", n=8, classes=4, key="group", seconds=(0.3, 0.6))
    names = {"class0": "pleasant", "class1": "unpleasant", "class2": "female", "class3": "male"}
    for c in cuts:
        c.supervisions[0].custom["group"] = names[c.supervisions[0].custom["group"]]
    return cuts


def test_study_runs_and_writes_outputs(tmp_path):
    from s3kit import load_upstream
    from s3kit.eval.compression import StudyConfig, study
    from s3kit.testing import tiny_hf_dir

    model = tiny_hf_dir(tmp_path / "m", heads=4, ffn=64)
    cuts = _stimuli(tmp_path)
    cfg = StudyConfig(methods=("head", "row", "weight"), steps_per_prune=1, max_prunes=1,
                      row=prune.RowPruneConfig(per_step=32, min_rows=16), latency_seconds=0.2, latency_repeats=1,
                      n_permutations=50, progress=False, device="cpu")
    rep = study(model, cuts, tmp_path / "out", cfg, stimuli=cuts)
    by = {r["method"]: r for r in rep["rows"]}
    assert rep["loss"] == "distill" and set(by) == {"head", "row", "weight"}
    assert by["head"]["heads"] == 6 and by["row"]["ffn"] == 64 and rep["base"]["params_removed"] == 0
    assert abs(by["weight"]["target_sparsity"] - 0.2) < 1e-9 and by["weight"]["params"] == rep["base"]["params"]
    assert by["head"]["macs_per_second"] < rep["base"]["macs_per_second"]
    assert "gender" in by["row"]["speat"]
    for f in ("study.json", "study.csv", "table.md", "d_vs_removed.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    assert "| head |" in (tmp_path / "out" / "table.md").read_text()
    # every step's checkpoint is an upstream with the pruned shapes
    again = load_upstream(by["head"]["checkpoint"])
    assert prune.heads_per_layer(again) == [3, 3]


def test_compress_cli_parses(tmp_path):
    import argparse

    from s3kit.commands import compress

    parser = argparse.ArgumentParser()
    compress.register(parser.add_subparsers())
    args = parser.parse_args(["compress", "study", "--model", "m", "--out", str(tmp_path), "--methods", "head,row",
                              "steps_per_prune=5"])
    assert args.methods == "head,row" and args.overrides == ["steps_per_prune=5"]
    assert compress.run_study(argparse.Namespace(**{**vars(args), "manifest": None, "data": None})) == 2
