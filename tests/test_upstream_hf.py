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


def test_group_norm_cnn_batched_is_exact_where_transformers_is_not(tmp_path):
    """transformers' batched group-norm CNN changes a padded item; the masked group norm does not."""
    from s3kit.upstream.hf import feature_encoder

    up = load_upstream(tiny_hf_dir(tmp_path, kind="hubert", norm="group"))
    wavs, lengths = _batch()
    fe = up.model.feature_extractor
    with torch.no_grad():
        theirs = fe(wavs)
        ours = feature_encoder(fe, wavs, lengths)
        for i, n in enumerate([49, 27, 12]):
            own = fe(wavs[i : i + 1, : lengths[i]])[0]
            torch.testing.assert_close(ours[i, :, :n], own, atol=1e-4, rtol=0)
        assert (theirs[1, :, :27] - fe(wavs[1:2, :9000])[0]).abs().max() > 1e-2


@pytest.mark.parametrize("groups", [8, 2])
def test_masked_group_norm_equals_group_norm_per_item_with_gradients(groups):
    from s3kit.upstream.hf import masked_group_norm

    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(groups, 8)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    lengths = torch.tensor([50, 31, 7])
    x = (torch.randn(3, 8, 50) * 3 + 1).requires_grad_(True)
    y = masked_group_norm(x, lengths, norm)
    loss = sum((y[b, :, :n] * (b + 1)).sum() for b, n in enumerate(lengths.tolist()))
    loss.backward()
    gx, gw = x.grad.clone(), norm.weight.grad.clone()
    x.grad, norm.weight.grad = None, None
    ref = sum((norm(x[b : b + 1, :, :n])[0] * (b + 1)).sum() for b, n in enumerate(lengths.tolist()))
    ref.backward()
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(y[b, :, :n], norm(x[b : b + 1, :, :n])[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(gx, x.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(gw, norm.weight.grad, atol=1e-4, rtol=0)


@pytest.mark.parametrize("groups", [8, 2])
def test_conv_group_norm_statistics_from_input_patches_are_exact(groups):
    """The first CNN layer's norm statistics come from the input patches' moments; values and the
    conv weight's gradient equal GroupNorm(conv(x_i)) run item by item."""
    from s3kit.upstream.hf import conv_group_norm

    torch.manual_seed(1)
    conv = torch.nn.Conv1d(1, 8, kernel_size=10, stride=5, bias=True)
    norm = torch.nn.GroupNorm(groups, 8)
    torch.nn.init.normal_(norm.weight)
    lengths = torch.tensor([400, 263, 57])
    wavs = torch.randn(3, 400) * (torch.arange(400)[None] < lengths[:, None]) + 0.3
    y = conv_group_norm(conv, norm, wavs, lengths)
    frames = [(n - 10) // 5 + 1 for n in lengths.tolist()]
    sum(y[b, :, :t].pow(2).sum() for b, t in enumerate(frames)).backward()
    g = conv.weight.grad.clone()
    conv.weight.grad = None
    ref = [norm(conv(wavs[b : b + 1, None, :n]))[0] for b, n in enumerate(lengths.tolist())]
    sum(r.pow(2).sum() for r in ref).backward()
    for b, t in enumerate(frames):
        assert ref[b].shape[-1] == t
        torch.testing.assert_close(y[b, :, :t], ref[b], atol=1e-4, rtol=0)
    torch.testing.assert_close(g, conv.weight.grad, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("kind", ["hubert", "wav2vec2"])
@pytest.mark.parametrize("norm", ["group", "layer"])
def test_padded_batch_matches_transformers_one_by_one(tmp_path, kind, norm):
    """Each item of a padded batch gives what ``model(wav_i, output_hidden_states=True)`` gives."""
    up = load_upstream(tiny_hf_dir(tmp_path, kind=kind, norm=norm))
    wavs, lengths = _batch()
    with torch.no_grad():
        h = up(wavs, lengths)
        for i, n in enumerate(lengths.tolist()):
            wav = wavs[i : i + 1, :n]
            wav = up._normalize(wav, torch.tensor([n])) if up.normalize else wav
            theirs = up.model(wav, output_hidden_states=True).hidden_states
            t = int(h.lengths[i])
            for a, b in zip(h.states, theirs):
                torch.testing.assert_close(a[i, :t], b[0], atol=1e-4, rtol=0)


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


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_feature_grad_mult_scales_the_cnn_gradient_in_train_mode(norm):
    from s3kit.testing import tiny_hf_model
    from s3kit.upstream.hf import HFUpstream

    wavs = torch.randn(2, 4000) * 0.1
    lengths = torch.tensor([4000, 3000])
    grads = {}
    for m in (1.0, 0.5, 0.0):
        up = HFUpstream(tiny_hf_model("hubert", layers=2, hidden=32, seed=3, norm=norm),
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
