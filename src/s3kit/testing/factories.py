"""Tiny transformers encoders and audio for tests and demos; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from s3kit.audio import SAMPLE_RATE


def tiny_hf_config(kind: str = "hubert", layers: int = 2, hidden: int = 32, heads: int = 2, ffn: int = 64,
                   conv: int = 32, norm: str = "group", **kw):
    """A transformers config of ``kind`` (hubert | wav2vec2 | wavlm) with the real 320-sample CNN stride.

    ``norm="group"`` is the Base CNN (group norm, post-LN transformer); ``"layer"`` the Large one
    (layer-norm CNN, pre-LN "stable layer norm" transformer).
    """
    from transformers import HubertConfig, Wav2Vec2Config, WavLMConfig

    cls = {"hubert": HubertConfig, "wav2vec2": Wav2Vec2Config, "wavlm": WavLMConfig}[kind]
    args = dict(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
        conv_dim=(conv,) * 7, feat_extract_norm=norm, do_stable_layer_norm=(norm == "layer"),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, layerdrop=0.0,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        mask_time_prob=0.0, apply_spec_augment=False,
    )
    if kind == "wav2vec2":
        args.update(codevector_dim=16, proj_codevector_dim=16, num_codevectors_per_group=8, num_codevector_groups=2)
    if kind == "wavlm":
        args.update(num_buckets=32, max_bucket_distance=64)
    args.update(kw)
    return cls(**args)


def tiny_hf_model(kind: str = "hubert", seed: int = 0, **kw):
    """A randomly initialised tiny ``HubertModel`` / ``Wav2Vec2Model`` / ``WavLMModel`` in eval mode."""
    import torch
    from transformers import HubertModel, Wav2Vec2Model, WavLMModel

    torch.manual_seed(seed)
    cfg = tiny_hf_config(kind, **kw)
    if kind == "wavlm":
        cfg._attn_implementation = "eager"
    model = {"hubert": HubertModel, "wav2vec2": Wav2Vec2Model, "wavlm": WavLMModel}[kind](cfg)
    return model.eval()


def tiny_hf_dir(directory: str | Path, kind: str = "hubert", seed: int = 0, **kw) -> Path:
    """Save a tiny model with ``save_pretrained`` (config.json + model.safetensors) and return the dir."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    directory = Path(directory)
    tiny_hf_model(kind, seed=seed, **kw).save_pretrained(directory)
    return directory


def sine(freq: float = 440.0, seconds: float = 1.0, amplitude: float = 0.5, sr: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def speechlike(seconds: float = 1.5, seed: int = 0, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A harmonic sweep (f0 120 +- 60 Hz, 7 harmonics) with a 4 Hz syllable-rate envelope and a little
    noise, peak 0.3: frames differ, so a teacher's codes should too."""
    t = np.arange(int(sr * seconds)) / sr
    f0 = 120 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wav = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    wav += 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * wav / np.abs(wav).max()).astype(np.float32)


def write_wav(path: str | Path, wav: np.ndarray, sr: int = SAMPLE_RATE, subtype: str = "PCM_16") -> Path:
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav, sr, subtype=subtype)
    return path


def tone_cuts(directory: str | Path, n: int = 6, classes: int = 2, seconds=(0.5, 1.5), seed: int = 0,
              key: str = "keyword"):
    """A CutSet of ``n`` wav files: tones whose frequency depends on the class label (``custom[key]``),
    with lengths spread over ``seconds`` and a little noise; speakers ``spk{i % 3}``."""
    from lhotse import CutSet, Recording, SupervisionSegment

    rng = np.random.default_rng(seed)
    directory = Path(directory)
    cuts = []
    for i in range(n):
        label = i % classes
        dur = float(rng.uniform(*seconds))
        wav = sine(300.0 * (label + 1), dur, 0.3) + 0.01 * rng.standard_normal(int(dur * SAMPLE_RATE)).astype(np.float32)
        path = write_wav(directory / f"utt{i:03d}.wav", wav)
        rec = Recording.from_file(path, recording_id=f"utt{i:03d}")
        sup = SupervisionSegment(id=f"utt{i:03d}", recording_id=rec.id, start=0.0, duration=rec.duration,
                                 speaker=f"spk{i % 3}", custom={key: f"class{label}"})
        cut = rec.to_cut()
        cut.supervisions = [sup]
        cuts.append(cut)
    return CutSet.from_cuts(cuts)


BAD_AUDIO_KINDS = ("truncated", "missing", "empty", "non_finite", "channels", "sample_rate")


def bad_audio_cuts(directory: str | Path, n_good: int = 4, kinds=BAD_AUDIO_KINDS, seed: int = 0):
    """``(cuts, bad)``: ``n_good`` good tone cuts (labels as :func:`tone_cuts`) followed by one
    broken cut per entry of ``kinds``; ``bad`` maps each broken cut's id to its kind, i.e. what
    ``s3kit data check`` must report. Each manifest entry is made from a good 1 s, 16 kHz mono
    file, which is then damaged the way real corpora are:

    ``truncated``: a FLAC cut in half; ``missing``: deleted; ``empty``: rewritten with 0 samples;
    ``non_finite``: float samples with NaNs; ``channels``: rewritten as stereo; ``sample_rate``:
    rewritten at 8 kHz (the manifest is stale in the last two).
    """
    import soundfile as sf
    from lhotse import CutSet, Recording, SupervisionSegment

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    good = tone_cuts(directory, n=n_good, seed=seed)
    rng = np.random.default_rng(seed + 1)
    cuts, bad = list(good), {}
    for kind in kinds:
        cut_id = f"bad_{kind}"
        wav = sine(500.0, 1.0, 0.3) + 0.01 * rng.standard_normal(SAMPLE_RATE).astype(np.float32)
        path = directory / f"{cut_id}.{'flac' if kind == 'truncated' else 'wav'}"
        if kind == "non_finite":
            wav[100:200] = np.nan
            sf.write(str(path), wav, SAMPLE_RATE, subtype="FLOAT")
        else:
            sf.write(str(path), wav, SAMPLE_RATE, subtype="PCM_16")
        rec = Recording.from_file(path, recording_id=cut_id)
        if kind == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        elif kind == "missing":
            path.unlink()
        elif kind == "empty":
            sf.write(str(path), np.zeros(0, np.float32), SAMPLE_RATE, subtype="PCM_16")
        elif kind == "channels":
            sf.write(str(path), np.stack([wav, wav], axis=1), SAMPLE_RATE, subtype="PCM_16")
        elif kind == "sample_rate":
            sf.write(str(path), wav[::2], SAMPLE_RATE // 2, subtype="PCM_16")
        elif kind != "non_finite":
            raise ValueError(f"unknown bad-audio kind {kind!r}; choose from {BAD_AUDIO_KINDS}")
        cut = rec.to_cut()
        cut.supervisions = [SupervisionSegment(id=cut_id, recording_id=rec.id, start=0.0, duration=rec.duration,
                                               speaker="spk0", custom={"keyword": "class0"})]
        cuts.append(cut)
        bad[cut_id] = kind
    return CutSet.from_cuts(cuts), bad
