"""``s3kit export --format transformers`` of pruned models: removed heads and FFN rows come back
as zero weights, so ``from_pretrained`` loads the directory and gives the pruned model's outputs
(issue 16 item 10)."""

import json

import pytest
import torch

from s3kit import load_upstream
from s3kit.cli import main
from s3kit.methods import prune
from s3kit.testing import tiny_hf_model
from s3kit.upstream.hf import HFUpstream


def _states(up, wavs, lengths):
    with torch.no_grad():
        h = up(wavs, lengths)
    return [s * h.mask[..., None] for s in h.states]  # padded frames are not compared


def _pruned_dir(kind, tmp_path, norm="group"):
    torch.manual_seed(0)
    up = HFUpstream(tiny_hf_model(kind, seed=0, heads=4, ffn=64, norm=norm)).eval()
    prune.prune_heads(up, 0, [1, 2])  # unequal head counts: 2 and 3
    prune.prune_heads(up, 1, [0])
    prune.prune_rows(up, 0, list(range(5, 15)))  # unequal FFN widths: 54 and 34
    prune.prune_rows(up, 1, list(range(0, 60, 2)))
    return prune.save_pruned(tmp_path / "pruned", up)


@pytest.mark.parametrize("kind,norm", [("hubert", "group"), ("wav2vec2", "layer"), ("wavlm", "group")])
def test_export_is_loadable_by_from_pretrained_with_identical_outputs(kind, norm, tmp_path):
    from transformers import AutoModel

    src = _pruned_dir(kind, tmp_path, norm)
    pruned = load_upstream(src)
    assert prune.heads_per_layer(pruned) == [2, 3] and prune.ffn_widths(pruned) == [54, 34]
    out = prune.export_transformers(src, tmp_path / "hf")
    kw = {"attn_implementation": "eager"} if kind == "wavlm" else {}
    model, info = AutoModel.from_pretrained(str(out), output_loading_info=True, **kw)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.num_attention_heads == 4 and model.config.intermediate_size == 64
    restored = HFUpstream(model.eval(), normalize=pruned.normalize)
    g = torch.Generator().manual_seed(1)
    wavs, lengths = torch.randn(2, 8000, generator=g) * 0.1, torch.tensor([8000, 6400])
    for a, b in zip(_states(pruned, wavs, lengths), _states(restored, wavs, lengths)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # the removed parts are zeros: layer 0's heads 1 and 2 (8 rows each of the 32-wide Q)
    q = model.encoder.layers[0].attention.q_proj.weight
    assert torch.all(q[8:24] == 0) and torch.any(q[:8] != 0)


def test_cli_exports_pruned_and_refuses_melhubert(tmp_path, capsys):
    from s3kit.checkpoint import CheckpointError
    from s3kit.models.melhubert import MelHubert, MelHubertConfig, MelHubertUpstream

    src = _pruned_dir("hubert", tmp_path)
    assert main(["export", "--format", "transformers", str(src), str(tmp_path / "hf")]) == 0
    assert "speed-up needs s3kit.load_upstream" in capsys.readouterr().out
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_attention_heads"] == 4
    mel = MelHubertUpstream(MelHubert(MelHubertConfig(num_layers=1, hidden_size=32, ffn_size=64, num_heads=4,
                                                      num_clusters=8, pos_conv_kernel=8, pos_conv_groups=4)))
    prune.prune_heads(mel, 0, [0])
    prune.save_pruned(tmp_path / "mel", mel)
    with pytest.raises(CheckpointError, match="MelHuBERT"):
        prune.export_transformers(tmp_path / "mel", tmp_path / "mel-hf")


def test_cli_export_dispatches_pretraining_checkpoints(tmp_path):
    from transformers import AutoModel, Wav2Vec2Config, Wav2Vec2ForPreTraining

    from s3kit import checkpoint
    from s3kit.methods import pretrain as P
    from s3kit.testing.factories import tiny_hf_config

    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(tiny_hf_config("wav2vec2"))
    assert isinstance(model.config, Wav2Vec2Config)
    checkpoint.save(tmp_path / "pt", model, None, **P._model_meta(model, P.PretrainConfig(kind="wav2vec2")))
    assert main(["export", "--format", "transformers", str(tmp_path / "pt"), str(tmp_path / "hf")]) == 0
    loaded = AutoModel.from_pretrained(str(tmp_path / "hf"))
    torch.testing.assert_close(loaded.encoder.layers[0].attention.q_proj.weight,
                               model.wav2vec2.encoder.layers[0].attention.q_proj.weight)
    assert main(["export", "--format", "transformers", str(tmp_path), str(tmp_path / "x")]) == 2  # no config.json
