"""The on-device keyword-spotting student (Yang et al., Interspeech 2023, §3.2): no CNN, 3 layers.

Dimension legend: ``B`` batch, ``S`` samples, ``T`` 10 ms frames, ``F`` fbank bins (64),
``D`` model width, ``L`` layers.

Figure, bottom to top::

    wav --Kaldi fbank 64 (25 ms / 10 ms, §3.1 "64-D LFBE")--> normalise (dataset mean / std)
        --input_proj--> [B, T, D] --masked frames := mask_emb (wav2vec 2.0 objective only)
        --+ sinusoidal position, LayerNorm--> states[0]
        --3 x post-LN transformer layer--> states[1..3]

The CNN of the wav2vec 2.0 teacher is removed ("reducing computation by approximately 33 %",
§3.2) and the transformer reads the filterbank directly. Positions are sinusoidal, so they cost
no parameters and any length exports to ONNX. Sizes (``ARCHS``): the paper gives only the width
(768 / 256), the depth (3) and the totals (21 M / 1.6 M); the FFN widths are the ones that
reproduce those totals: 4 x D for ``large`` (21.3 M, as wav2vec 2.0 Base) and 2 x D for
``small`` (1.6 M).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s3kit.upstream.base import EncoderUpstream, SmallModelBatching, full_lengths

SAMPLE_RATE = 16000
FBANK_BINS = 64  # §3.1: 64-D LFBE
FBANK_WINDOW_MS = 25.0  # §3.1 analysis window
FBANK_SHIFT_MS = 10.0  # §3.1 shift
FRAME_HOP = int(SAMPLE_RATE * FBANK_SHIFT_MS / 1000)  # 160 samples
FRAME_RATE = SAMPLE_RATE / FRAME_HOP  # 100 Hz
PAPER_PARAMS = {"large": 21_000_000, "small": 1_600_000}  # §3.2: "21 million ... and 1.6 million parameters"


@dataclass
class KWSStudentConfig:
    """Architecture; defaults = the ``large`` student (§3.2: 3 layers, width 768)."""

    num_layers: int = 3
    hidden_size: int = 768
    ffn_size: int = 3072
    num_heads: int = 12
    fbank_bins: int = FBANK_BINS
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    max_positions: int = 10_000  # sinusoid period scale (Vaswani et al.), not a length limit

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}")
        if self.hidden_size % 2:
            raise ValueError(f"hidden_size={self.hidden_size} must be even (sinusoidal positions)")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")

    @property
    def frame_rate(self) -> float:
        return FRAME_RATE


ARCHS: dict[str, dict] = {
    "large": dict(hidden_size=768, ffn_size=3072, num_heads=12),  # 21.3 M (paper: 21 M)
    "small": dict(hidden_size=256, ffn_size=512, num_heads=4),  # 1.60 M (paper: 1.6 M)
    "tiny": dict(hidden_size=32, ffn_size=64, num_heads=2, num_layers=2),  # tests only
}


def config_for(arch: str, **overrides) -> KWSStudentConfig:
    """``KWSStudentConfig`` of a named architecture (``ARCHS``) with field overrides."""
    if arch not in ARCHS:
        raise ValueError(f"unknown student arch {arch!r}; choose from {sorted(ARCHS)}")
    return replace(KWSStudentConfig(**ARCHS[arch]), **overrides)


def num_frames(lengths: Tensor) -> Tensor:
    """10 ms frames ``[B]`` for ``lengths`` samples ``[B]`` (Kaldi ``snip_edges=false``: ``(S + 80) // 160``)."""
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    return (lengths + FRAME_HOP // 2) // FRAME_HOP


def sinusoids(T: int, dim: int, device=None, max_positions: int = 10_000) -> Tensor:
    """``[T, dim]`` sinusoidal positions (sin on the first half of the channels, cos on the second)."""
    half = dim // 2
    inv = torch.exp(-math.log(max_positions) * torch.arange(half, device=device, dtype=torch.float32) / half)
    t = torch.arange(T, device=device, dtype=torch.float32)[:, None] * inv[None, :]  # (T, D/2)
    return torch.cat([t.sin(), t.cos()], dim=1)


class FbankFrontEnd(nn.Module):
    """``wavs [B, S]`` -> normalised 64-d Kaldi fbank ``[B, T, F]`` and ``frame_lengths [B]``.

    ``mean`` / ``std`` are dataset statistics (set with :meth:`set_stats` before distillation,
    saved in checkpoints), so inference needs no look-ahead over the utterance.
    """

    def __init__(self, bins: int = FBANK_BINS):
        super().__init__()
        from s3kit.features import Fbank

        with torch.device("cpu"):  # lhotse builds its mel banks with numpy
            self.fbank = Fbank(num_mel_bins=bins, frame_length_ms=FBANK_WINDOW_MS, frame_shift_ms=FBANK_SHIFT_MS)
        self.register_buffer("mean", torch.zeros(bins))
        self.register_buffer("std", torch.ones(bins))

    def set_stats(self, mean: Tensor, std: Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-5))

    def raw(self, wavs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Un-normalised fbank ``[B, T, F]`` and frame lengths ``[B]``."""
        return self.fbank(wavs, lengths)

    def forward(self, wavs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        feats, flen = self.fbank(wavs, lengths)
        return (feats - self.mean) / self.std, flen


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """``x [B, T, D]``, ``valid [B, T]`` bool (True = real frame) -> ``[B, T, D]``."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, D/H)
        mask = valid[:, None, None, :]  # (B, 1, 1, T): padded keys ignored
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class TransformerLayer(nn.Module):
    """Post-LN layer, as the wav2vec 2.0 Base teacher."""

    def __init__(self, cfg: KWSStudentConfig):
        super().__init__()
        self.attention = SelfAttention(cfg.hidden_size, cfg.num_heads, cfg.attention_dropout)
        self.attention_norm = nn.LayerNorm(cfg.hidden_size)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.ffn_size)
        self.fc2 = nn.Linear(cfg.ffn_size, cfg.hidden_size)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, valid)))
        ffn = self.fc2(self.activation_dropout(F.gelu(self.fc1(x))))
        return self.ffn_norm(x + self.dropout(ffn))


class KWSStudent(nn.Module):
    """The encoder: fbank front end, input projection, sinusoidal positions, transformer layers."""

    def __init__(self, cfg: KWSStudentConfig = KWSStudentConfig()):
        super().__init__()
        self.config = cfg
        self.front_end = FbankFrontEnd(cfg.fbank_bins)
        self.input_proj = nn.Linear(cfg.fbank_bins, cfg.hidden_size)
        # wav2vec 2.0's learned mask embedding, used only by the (teacher-)codebook objective
        self.mask_emb = nn.Parameter(torch.empty(cfg.hidden_size).uniform_())
        self.norm = nn.LayerNorm(cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.apply(_init_bert)

    def features(self, wavs: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``wavs [B, S]`` -> normalised fbank ``[B, T, F]``, ``frame_lengths [B]``."""
        return self.front_end(wavs, full_lengths(wavs, lengths))

    def forward(self, feats: Tensor, frame_lengths: Tensor, mask: Tensor | None = None) -> list[Tensor]:
        """``feats [B, T, F]``, ``frame_lengths [B]``, ``mask [B, T]`` bool (True = masked) ->
        L+1 states ``[B, T, D]``: ``states[0]`` the input of layer 1, ``states[i]`` layer i's output."""
        T = feats.shape[1]
        valid = torch.arange(T, device=feats.device)[None, :] < frame_lengths.to(feats.device)[:, None]  # (B, T)
        x = self.input_proj(feats)  # (B, T, D)
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        x = x + sinusoids(T, x.shape[-1], x.device, self.config.max_positions).to(x.dtype)
        x = self.dropout(self.norm(x))
        states = [x]
        for layer in self.layers:
            x = layer(x, valid)
            states.append(x)
        return states


def _init_bert(module: nn.Module) -> None:
    # fairseq init_bert_params (wav2vec 2.0): N(0, 0.02) linear weights, zero biases
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def count_parameters(module: nn.Module) -> int:
    """Learned parameters (the fbank's fixed window and mel matrix are frozen tensors, not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class KWSStudentUpstream(SmallModelBatching, EncoderUpstream):
    """A :class:`KWSStudent` behind the upstream protocol (100 Hz frames, ``num_layers + 1`` states)."""

    frame_rate = FRAME_RATE

    def __init__(self, encoder: KWSStudent, name: str = "kws_student"):
        super().__init__(encoder, name)

    def num_frames(self, lengths: Tensor) -> Tensor:
        return num_frames(lengths)


UPSTREAM_LOADER = "s3kit.models.kws_student:upstream_from_checkpoint"


def save_student(directory: str | Path, encoder: KWSStudent, **meta) -> Path:
    """Save the bare encoder so that ``s3kit.load_upstream(directory)`` rebuilds it."""
    from s3kit import checkpoint

    return checkpoint.save(directory, encoder, encoder.config, upstream=UPSTREAM_LOADER, **meta)


def load_student(directory: str | Path) -> tuple[KWSStudent, dict]:
    """``(encoder in eval mode, meta)`` from a :func:`save_student` directory or a checkpoint whose
    student weights sit under ``meta["encoder_prefix"]`` (distillation / fine-tuning checkpoints)."""
    from s3kit import checkpoint
    from s3kit.config import from_dict

    state, meta = checkpoint.load(directory)
    cfg_dict = meta.get("student_config", meta.get("config", {}))
    cfg = from_dict(KWSStudentConfig, cfg_dict, where=f"{directory}/config.json")
    encoder = KWSStudent(cfg)
    prefix = meta.get("encoder_prefix", "")
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    checkpoint.check_compatible(encoder, state, source=str(directory))
    encoder.load_state_dict(state)
    return encoder.eval(), meta


def upstream_from_checkpoint(directory: str | Path, **options) -> KWSStudentUpstream:
    """Rebuild a :class:`KWSStudentUpstream` (eval mode): what ``s3kit.load_upstream`` calls."""
    encoder, _ = load_student(directory)
    up = KWSStudentUpstream(encoder, name=options.pop("name", Path(directory).name))
    if options:
        raise ValueError(f"{directory}: unknown options for a KWS student upstream: {sorted(options)}")
    return up.eval()
