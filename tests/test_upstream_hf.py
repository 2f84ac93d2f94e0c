import pytest
import torch

from s3kit import Hidden, load_upstream
from s3kit.testing import tiny_hf_dir


def _batch():
    torch.manual_seed(0)
    lengths = torch.tensor([16000, 9000, 4000])
    wavs = torch.randn(3, 16000) * (torch.arange(16000)[None] < lengths[:, None])
    return wavs, lengths


@pytest.mark.parametrize("kind", ["hubert", "wav2vec2", "wavlm"])
@pytest.mark.parametrize("norm", ["group", "layer"])
def test_padded_batch_equals_one_by_one(tmp_path, kind, norm):
    up = load_upstream(tiny_hf_dir(tmp_path / kind, kind=kind, norm=norm))
    wavs, lengths = _batch()
    with torch.no_grad():
        h = up(wavs, lengths)
        assert isinstance(h, Hidden) and len(h.states) == 3 and h.frame_rate == 50.0
        assert h.lengths.tolist() == [49, 27, 12]
        for i in range(3):
            single = up(wavs[i : i + 1, : lengths[i]])
            n = int(single.lengths[0])
            for a, b in zip(single.states, h.states):
                torch.testing.assert_close(a[0, :n], b[i, :n], atol=1e-4, rtol=0)


def test_group_norm_cnn_needs_per_utterance_run(tmp_path):
    """The reason for the per-utterance CNN: a batched group-norm CNN changes padded items."""
    up = load_upstream(tiny_hf_dir(tmp_path, kind="hubert", norm="group"))
    wavs, lengths = _batch()
    with torch.no_grad():
        batched = up.model.feature_extractor(wavs)[1, :, :27]
        own = up.model.feature_extractor(wavs[1:2, :9000])[0]
    assert (batched - own).abs().max() > 1e-2


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_states_match_transformers_hidden_states(tmp_path, norm):
    up = load_upstream(tiny_hf_dir(tmp_path, kind="hubert", norm=norm))
    wav = torch.randn(1, 8000)
    with torch.no_grad():
        ours = up(wav).states
        theirs = up.model(up._normalize(wav, torch.tensor([8000])) if up.normalize else wav, output_hidden_states=True).hidden_states
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_max_layer_skips_later_layers_without_changing_states(tmp_path, norm):
    up = load_upstream(tiny_hf_dir(tmp_path, kind="wav2vec2", norm=norm, layers=3))
    wavs, lengths = _batch()
    with torch.no_grad():
        full = up(wavs, lengths).states
        for k in range(4):
            part = up(wavs, lengths, max_layer=k).states
            assert len(part) == k + 1
            for a, b in zip(part, full):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such upstream directory"):
        load_upstream(str(tmp_path / "nope.ckpt"))
    with pytest.raises(FileNotFoundError, match="no network here"):
        load_upstream("someone/not-a-cached-model")


@pytest.mark.parametrize("per_utterance", [True, False])
def test_feature_grad_mult_scales_the_cnn_gradient_in_train_mode(per_utterance):
    from s3kit.testing import tiny_hf_model
    from s3kit.upstream.hf import HFUpstream

    wavs = torch.randn(2, 4000) * 0.1
    lengths = torch.tensor([4000, 3000])
    grads = {}
    for m in (1.0, 0.5, 0.0):
        up = HFUpstream(tiny_hf_model("hubert", layers=2, hidden=32, seed=3), per_utterance_cnn=per_utterance,
                        feature_grad_mult=m).train()
        torch.manual_seed(0)  # same dropout masks in every run
        up(wavs, lengths).states[-1].pow(2).sum().backward()
        grads[m] = [p.grad for p in up.model.feature_extractor.parameters()]
        assert up.model.encoder.layers[0].attention.q_proj.weight.grad is not None
    for g1, gh in zip(grads[1.0], grads[0.5]):
        torch.testing.assert_close(gh, 0.5 * g1, rtol=1e-4, atol=1e-8)
    assert all(g is None for g in grads[0.0])
    with pytest.raises(ValueError, match="feature_grad_mult"):
        HFUpstream(tiny_hf_model("hubert", layers=2, hidden=32), feature_grad_mult=-0.1)
