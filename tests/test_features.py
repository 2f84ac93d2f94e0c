"""Features against independent references: kaldi-native-fbank (Kaldi C++ port) for Fbank/MFCC
and mel banks, numpy's rfft and hand-computed pure-tone values for the STFT features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from s3kit.features import (
    FEATURES,
    MFCC,
    Fbank,
    LogMel,
    Spectrogram,
    add_deltas,
    hz_to_mel,
    make_feature,
    mel_filters,
    mel_to_hz,
)

knf = pytest.importorskip("kaldi_native_fbank")

SR = 16000


def speechy(n: int, seed: int = 0) -> torch.Tensor:
    """Harmonics with a wobbling pitch plus noise, peak about 0.5: float waveform ``[n]``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64) / SR
    f0 = 120 + 30 * torch.sin(2 * math.pi * 3 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / SR
    x = sum(torch.sin(k * phase) / k for k in range(1, 8)) * 0.2
    return (x + 0.02 * torch.randn(n, generator=g, dtype=torch.float64)).float()


def kaldi_reference(wav: torch.Tensor, mfcc: bool, **opts) -> np.ndarray:
    """kaldi-native-fbank features ``[T, F]`` of a float wave, fed as int16-scale samples."""
    o = knf.MfccOptions() if mfcc else knf.FbankOptions()
    o.frame_opts.dither = 0.0
    o.frame_opts.snip_edges = opts.get("snip_edges", False)
    o.frame_opts.window_type = opts.get("window_type", "povey")
    o.mel_opts.num_bins = opts.get("num_mel_bins", 23 if mfcc else 80)
    o.use_energy = opts.get("use_energy", False)
    if mfcc:
        o.num_ceps = opts.get("num_ceps", 13)
    extractor = (knf.OnlineMfcc if mfcc else knf.OnlineFbank)(o)
    extractor.accept_waveform(SR, (wav.double() * 2**15).tolist())
    extractor.input_finished()
    frames = [extractor.get_frame(i) for i in range(extractor.num_frames_ready)]
    return np.stack(frames) if frames else np.zeros((0, extractor.dim), dtype=np.float32)


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"num_mel_bins": 64},
        {"snip_edges": True},
        {"num_mel_bins": 40, "window_type": "hamming"},  # MelHuBERT's front end
        {"use_energy": True},
    ],
)
def test_fbank_matches_kaldi_native_fbank(opts):
    wav = speechy(12345)
    feats, n = Fbank(**opts)(wav[None])
    ref = kaldi_reference(wav, mfcc=False, **opts)
    assert feats.shape == (1, *ref.shape) and int(n[0]) == ref.shape[0]
    # log-energies of order 10-25 in float32: agreement to ~1e-4 is float rounding
    np.testing.assert_allclose(feats[0].numpy(), ref, atol=2e-3, rtol=0)


@pytest.mark.parametrize("opts", [{}, {"use_energy": True}, {"snip_edges": True, "num_ceps": 20}])
def test_mfcc_matches_kaldi_native_fbank(opts):
    wav = speechy(9000, seed=1)
    feats, n = MFCC(**opts)(wav[None])
    ref = kaldi_reference(wav, mfcc=True, **opts)
    assert feats.shape == (1, *ref.shape) and int(n[0]) == ref.shape[0]
    np.testing.assert_allclose(feats[0].numpy(), ref, atol=3e-3, rtol=1e-5)


@pytest.mark.parametrize("snip_edges", [False, True])
def test_kaldi_frame_counts_match_reference(snip_edges):
    fb = Fbank(snip_edges=snip_edges)
    for n in [300, 399, 400, 401, 559, 560, 1000, 16000, 16079, 16080]:
        wav = speechy(n, seed=n)
        ref = kaldi_reference(wav, mfcc=False, snip_edges=snip_edges)
        assert int(fb.num_frames(torch.tensor([n]))[0]) == ref.shape[0], n
        feats, _ = fb(wav[None])
        assert feats.shape[1] == ref.shape[0]
        # short items exercise the repeated edge reflection
        np.testing.assert_allclose(feats[0].numpy(), ref, atol=2e-3, rtol=0)


def test_deltas_on_a_ramp_are_hand_computed():
    T = 10
    c = torch.arange(T, dtype=torch.float32)[None, :, None]  # c_t = t, one coefficient
    out = add_deltas(c, torch.tensor([T]))
    assert out.shape == (1, T, 3)
    delta, delta2 = out[0, :, 1], out[0, :, 2]
    # interior: sum_j j (t + j) / 10 = (1 + 1 + 4 + 4) / 10 = 1; second difference of a line = 0
    torch.testing.assert_close(delta[4:-4], torch.ones(T - 8))
    torch.testing.assert_close(delta2[4:-4], torch.zeros(T - 8))
    # first frame, edges repeated: (1 (1 - 0) + 2 (2 - 0)) / 10 = 0.5
    assert delta[0].item() == pytest.approx(0.5)
    assert delta[-1].item() == pytest.approx(0.5)
    # an item of length 6 in a batch of 10 frames uses its own last frame as the edge
    padded = add_deltas(c, torch.tensor([6]))
    torch.testing.assert_close(padded[0, :6], add_deltas(c[:, :6], torch.tensor([6]))[0])


def test_mfcc_deltas_shape_and_static_part():
    wav = speechy(8000)
    static, _ = MFCC()(wav[None])
    full, _ = MFCC(deltas=True)(wav[None])
    assert MFCC(deltas=True).dim == 39 and full.shape[-1] == 39
    torch.testing.assert_close(full[..., :13], static)


def test_hz_to_mel_hand_values():
    assert float(hz_to_mel(torch.tensor(1000.0))) == pytest.approx(15.0)  # Slaney knee
    assert float(hz_to_mel(torch.tensor(6400.0))) == pytest.approx(42.0)  # 27 mel per x6.4
    assert float(hz_to_mel(torch.tensor(200.0))) == pytest.approx(3.0)
    assert float(hz_to_mel(torch.tensor(700.0), "htk")) == pytest.approx(2595 * math.log10(2))
    f = torch.tensor([0.0, 50.0, 999.0, 1000.0, 4321.0, 8000.0])
    for scale in ("slaney", "htk"):
        torch.testing.assert_close(mel_to_hz(hz_to_mel(f, scale), scale).float(), f)


@pytest.mark.parametrize("scale,norm", [("slaney", "slaney"), ("htk", None)])
def test_mel_filters_match_kaldi_native_fbank_librosa_mode(scale, norm):
    mo = knf.MelBanksOptions()
    mo.num_bins, mo.low_freq, mo.high_freq = 80, 50.0, 8000.0
    mo.is_librosa, mo.use_slaney_mel_scale, mo.norm = True, scale == "slaney", norm or ""
    fo = knf.FrameExtractionOptions()
    fo.round_to_power_of_two = False  # 400-point FFT as in M2D-S
    ref = np.array(knf.MelBanks(mo, fo, 1.0).get_matrix())  # (n_mels, n_freqs)
    ours = mel_filters(80, 400, SR, 50.0, 8000.0, scale, norm).numpy().T
    np.testing.assert_allclose(ours, ref, atol=3e-5 * ref.max())


def tone(freq: float, amp: float, n: int) -> torch.Tensor:
    return (amp * torch.sin(2 * math.pi * freq * torch.arange(n, dtype=torch.float64) / SR)).float()


def test_spectrogram_of_pure_tone_is_hand_computed():
    # 1000 Hz = bin 25 of a 400-point FFT (40 Hz bins); 25 whole cycles per frame, so the
    # periodic-Hann spectrum is exactly A sum(w) / 2 at the bin and A sum(w) / 4 beside it.
    A, k = 0.3, 25
    wav = tone(1000.0, A, 8000)
    mag, n = Spectrogram(power=1.0)(wav[None])
    assert mag.shape == (1, 1 + 8000 // 160, 201) and int(n[0]) == 51
    window_sum = 200.0  # sum of the 400-point periodic Hann window
    interior = mag[0, 2:-2]  # centre frames away from the reflected edges
    assert (interior.argmax(-1) == k).all()
    torch.testing.assert_close(interior[:, k], torch.full((47,), A * window_sum / 2), rtol=1e-4, atol=0)
    torch.testing.assert_close(interior[:, k + 1], torch.full((47,), A * window_sum / 4), rtol=1e-4, atol=0)
    power, _ = Spectrogram(power=2.0)(wav[None])
    torch.testing.assert_close(power, mag**2)


@pytest.mark.parametrize("center", [True, False])
def test_spectrogram_matches_numpy_rfft(center):
    wav = speechy(5000, seed=3).numpy().astype(np.float64)
    x = np.pad(wav, 200, mode="reflect") if center else wav
    T = 1 + (len(x) - 400) // 160
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic Hann
    ref = np.abs(np.stack([np.fft.rfft(x[t * 160 : t * 160 + 400] * window) for t in range(T)]))
    ours, n = Spectrogram(center=center)(torch.from_numpy(wav).float()[None])
    assert ours.shape == (1, T, 201) and int(n[0]) == T
    np.testing.assert_allclose(ours[0].numpy(), ref, atol=1e-4 * ref.max(), rtol=0)


def test_logmel_of_pure_tone_is_hand_computed():
    A = 0.3
    lm = LogMel()
    feats, n = lm(tone(1000.0, A, 8000)[None])
    assert feats.shape == (1, 51, 80) and lm.dim == 80 and lm.frame_rate == 100.0
    fb = mel_filters(80, 400, SR, 50.0, 8000.0).double()
    # power spectrum of the tone: (A 100)^2 at bin 25, (A 50)^2 at bins 24 and 26, else 0
    power = torch.zeros(201, dtype=torch.float64)
    power[25], power[24], power[26] = (A * 100) ** 2, (A * 50) ** 2, (A * 50) ** 2
    expected = torch.log(power @ fb + torch.finfo(torch.float32).eps).float()
    interior = feats[0, 2:-2]
    active = expected > -5  # bands the tone reaches; others are at the eps floor
    torch.testing.assert_close(interior[:, active], expected[active].expand(47, -1), rtol=0, atol=1e-3)
    assert (interior[:, ~active] < -5).all()
    # the loudest band is the one whose centre is nearest 1000 Hz
    centres = mel_to_hz(torch.linspace(float(hz_to_mel(50.0)), float(hz_to_mel(8000.0)), 82)[1:-1])
    assert int(interior[0].argmax()) == int((centres - 1000.0).abs().argmin())


FEATURE_NAMES = sorted(FEATURES)


@pytest.mark.parametrize("name", FEATURE_NAMES)
@pytest.mark.parametrize("snip", [False, True])
def test_padded_batch_equals_one_by_one(name, snip):
    opts = {"snip_edges": snip} if name in ("fbank", "mfcc") else {"center": not snip}
    if name == "mfcc":
        opts["deltas"] = True
    feat = make_feature(name, **opts)
    lens = [16000, 7321, 1000, 450, 130]
    wavs = torch.zeros(len(lens), max(lens))
    for i, n in enumerate(lens):
        wavs[i, :n] = speechy(n, seed=i)
        wavs[i, n:] = 0.7  # junk padding must not leak into valid frames
    feats, frame_lengths = feat(wavs, torch.tensor(lens))
    assert feats.shape == (len(lens), int(feat.num_frames(torch.tensor([max(lens)]))[0]), feat.dim)
    assert frame_lengths.tolist() == feat.num_frames(torch.tensor(lens)).tolist()
    for i, n in enumerate(lens):
        alone, alone_len = feat(wavs[i : i + 1, :n])
        T = int(frame_lengths[i])
        assert int(alone_len[0]) == T and alone.shape[1] == T
        torch.testing.assert_close(feats[i, :T], alone[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", FEATURE_NAMES)
def test_attributes_and_gradient(name):
    feat = make_feature(name)
    assert feat.frame_rate == 100.0
    wav = speechy(4000)[None].requires_grad_(True)
    feats, _ = feat(wav, None)
    assert feats.shape[-1] == feat.dim and torch.isfinite(feats).all()
    feats.sum().backward()
    assert wav.grad is not None and wav.grad.abs().sum() > 0


def test_feature_dims():
    assert make_feature("fbank").dim == 80
    assert make_feature("fbank", num_mel_bins=64).dim == 64
    assert make_feature("mfcc").dim == 13 and make_feature("mfcc", deltas=True).dim == 39
    assert make_feature("mel").dim == 80
    assert make_feature("stft").power == 1.0 and make_feature("stft").dim == 201
    assert make_feature("spectrogram").power == 2.0


def test_make_feature_errors_suggest_close_names():
    with pytest.raises(ValueError, match="Did you mean 'fbank'"):
        make_feature("fbnak")
    with pytest.raises(ValueError, match="Did you mean 'n_mels'"):
        make_feature("mel", n_mel=64)
    with pytest.raises(ValueError, match="Did you mean 'num_mel_bins'"):
        make_feature("fbank", num_mel_bin=64)


def test_bad_input_shapes_are_explained():
    with pytest.raises(ValueError, match=r"\[B, S\]"):
        Fbank()(torch.zeros(16000))
    with pytest.raises(ValueError, match="lengths"):
        LogMel()(torch.zeros(2, 100), torch.tensor([100, 200]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", FEATURE_NAMES)
def test_cuda_matches_cpu(name):
    feat = make_feature(name)
    wavs = torch.stack([speechy(8000, seed=0), speechy(8000, seed=1)])
    lens = torch.tensor([8000, 5000])
    cpu, cpu_n = feat(wavs, lens)
    gpu, gpu_n = feat.cuda()(wavs.cuda(), lens.cuda())
    assert gpu_n.cpu().tolist() == cpu_n.tolist()
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-3)


def test_front_ends_have_no_trainable_parameters():
    """lhotse keeps window, mel banks and the log floor as nn.Parameters; an optimiser over a
    model's parameters must not move a fixed signal transform (a floor below 0 makes log NaN)."""
    import torch

    from s3kit.features import MFCC, Fbank

    for feat in (Fbank(num_mel_bins=40), MFCC()):
        assert list(feat.parameters()) == []
        before = {k: v.clone() for k, v in feat.state_dict().items()}
        assert before, "constants must stay in the state dict (checkpoints keep loading)"
        model = torch.nn.Sequential()
        model.add_module("front", feat)
        model.add_module("proj", torch.nn.Linear(feat.dim, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=1.0)
        wav = torch.randn(2, 8000)
        feats, _ = feat(wav, torch.tensor([8000, 6000]))
        model.proj(feats).sum().backward()
        opt.step()
        for k, v in feat.state_dict().items():
            assert torch.equal(v, before[k]), k
