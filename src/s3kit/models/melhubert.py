"""MelHuBERT (Lin et al., ICASSP 2023): HuBERT's masked prediction on log-mel input, no CNN.

Dimension legend: ``B`` batch, ``S`` samples, ``T`` 20 ms frames, ``F`` stacked fbank bins
(80), ``D`` model width, ``C`` k-means clusters, ``L`` layers.

Figure, bottom to top::

    wav --Kaldi fbank 40 (25 ms / 10 ms, hamming)--> normalise (dataset mean / std)
        --stack frames [2i, 2i+1]--> [B, T, 80] at 20 ms
        --masked frames := 0 (mask before projection, fixed zero vector)
        --pre_extract_proj--> [B, T, D] --x + pos_conv(x), LayerNorm--> states[0]
        --L x post-LN transformer layer--> states[1..L] --final_proj--> logits [B, T, C]

The pretraining loss (cross-entropy on masked frames only) is in :mod:`s3kit.methods.pretrain`.
Sizes are the bias paper's Table 2 (``ARCHS``); the defaults are MelHuBERT Base (12 x 768).
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
FBANK_WINDOW = 400  # 25 ms analysis window (Kaldi default)
FBANK_HOP = 160  # 10 ms between fbank frames
STACK = 2  # MelHuBERT-20ms concatenates frames [2i, 2i+1]
FRAME_HOP = FBANK_HOP * STACK  # 320 samples = the HuBERT CNN stride, so the same label frames
FRAME_RATE = SAMPLE_RATE / FRAME_HOP  # 50 Hz


def num_frames(lengths: Tensor) -> Tensor:
    """20 ms frames ``[B]`` for ``lengths`` samples ``[B]``.

    Snip-edges fbank gives ``1 + (S - 400) // 160`` frames; stacking pairs (zero-padding an odd
    tail) gives ``ceil`` of half that, which equals ``1 + (S - 400) // 320``: exactly the HuBERT /
    wav2vec 2.0 CNN's frame count, so k-means labels are interchangeable between the three models.
    """
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    return torch.where(lengths >= FBANK_WINDOW, 1 + (lengths - FBANK_WINDOW) // FRAME_HOP, 0)


@dataclass
class MelHubertConfig:
    """Architecture; defaults = MelHuBERT Base (``config_model_20ms.yaml``)."""

    num_layers: int = 12
    hidden_size: int = 768
    ffn_size: int = 3072
    num_heads: int = 12
    num_clusters: int = 512  # final_proj output size
    fbank_bins: int = 40
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}")
        if self.hidden_size % self.pos_conv_groups:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by pos_conv_groups={self.pos_conv_groups}")
        if self.num_layers < 1 or self.num_clusters < 2:
            raise ValueError(f"need num_layers >= 1 and num_clusters >= 2, got {self.num_layers}, {self.num_clusters}")

    @property
    def input_dim(self) -> int:
        return self.fbank_bins * STACK

    @property
    def frame_rate(self) -> float:
        return FRAME_RATE


# The bias paper's Table 2 (n_l, d_m, f_s, n_h); "tiny" is ours: the CPU demo teacher
# measured in SPEC.md "Data" (4 layers, d 192), with a narrower positional conv.
ARCHS: dict[str, dict] = {
    "tiny": dict(num_layers=4, hidden_size=192, ffn_size=768, num_heads=4, pos_conv_kernel=32, pos_conv_groups=8),
    "small": dict(num_layers=3, hidden_size=640, ffn_size=2048, num_heads=8),
    "slim": dict(num_layers=12, hidden_size=384, ffn_size=768, num_heads=8),
    "base": dict(num_layers=12, hidden_size=768, ffn_size=3072, num_heads=12),
}


def config_for(arch: str, **overrides) -> MelHubertConfig:
    """``MelHubertConfig`` of a named architecture (``ARCHS``) with field overrides."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
    return replace(MelHubertConfig(**ARCHS[arch]), **overrides)


class FbankFrontEnd(nn.Module):
    """``wavs [B, S]`` -> normalised, stacked fbank ``[B, T, 80]`` and ``frame_lengths [B]``.

    Kaldi fbank as MelHuBERT's ``torchaudio.compliance.kaldi.fbank(wav * 2**15, 40 bins,
    hamming, snip_edges)``; normalised with dataset statistics (the ``mean`` / ``std`` buffers,
    set by :meth:`set_stats` before training and saved in checkpoints).
    """

    def __init__(self, bins: int = 40):
        super().__init__()
        from s3kit.features import Fbank

        with torch.device("cpu"):  # lhotse builds its mel banks with numpy (also under a meta-device context)
            self.fbank = Fbank(num_mel_bins=bins, window_type="hamming", snip_edges=True)
        self.register_buffer("mean", torch.zeros(bins))
        self.register_buffer("std", torch.ones(bins))

    def set_stats(self, mean: Tensor, std: Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-5))

    def raw(self, wavs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Un-normalised fbank ``[B, T10, bins]`` at 10 ms and its frame lengths ``[B]``."""
        return self.fbank(wavs, lengths)

    def forward(self, wavs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        feats, flen = self.fbank(wavs, lengths)  # (B, T10, bins)
        feats = (feats - self.mean) / self.std
        return stack_frames(feats, flen), num_frames(lengths).to(feats.device)


def stack_frames(feats: Tensor, frame_lengths: Tensor) -> Tensor:
    """10 ms frames ``[B, T10, K]`` -> 20 ms frames ``[B, ceil(T10 / 2), 2K]`` (frames ``[2i, 2i+1]``).

    Frames past each item's ``frame_lengths`` are zeroed first, so an odd tail is stacked with
    zeros exactly as when the item is run alone.
    """
    B, T10, K = feats.shape
    past_end = torch.arange(T10, device=feats.device)[None, :] >= frame_lengths.to(feats.device)[:, None]  # (B, T10)
    feats = feats.masked_fill(past_end.unsqueeze(-1), 0.0)
    if T10 % STACK:
        feats = F.pad(feats, (0, 0, 0, STACK - T10 % STACK))
    return feats.reshape(B, -1, STACK * K)  # (B, T, 2K)


class PositionalConv(nn.Module):
    """Convolutional relative positional embedding (wav2vec 2.0 §2): grouped conv, weight norm
    over the time axis, "same" padding (the extra frame of an even kernel dropped), GELU."""

    def __init__(self, dim: int, kernel: int, groups: int, dropout: float):
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        # fairseq init: std = sqrt(4 (1 - dropout) / (kernel * dim))
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4 * (1.0 - dropout) / (kernel * dim)))
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        """``[B, T, D]`` -> ``[B, T, D]``."""
        y = self.conv(x.transpose(1, 2))  # (B, D, T + trim)
        if self.trim:
            y = y[:, :, : -self.trim]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, valid: Tensor | None) -> Tensor:
        """``x [B, T, D]``, ``valid [B, T]`` bool (True = real frame) -> ``[B, T, D]``."""
        B, T, D = x.shape
        q, k, v = (p(x).view(B, T, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))  # (B, H, T, D/H)
        mask = None if valid is None else valid[:, None, None, :]  # (B, 1, 1, T): padded keys ignored
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(x))))


class TransformerLayer(nn.Module):
    """Post-LN layer (``layer_norm_first: False``), as HuBERT / MelHuBERT Base."""

    def __init__(self, cfg: MelHubertConfig):
        super().__init__()
        self.attention = SelfAttention(cfg.hidden_size, cfg.num_heads, cfg.attention_dropout)
        self.attention_norm = nn.LayerNorm(cfg.hidden_size)
        self.ffn = FeedForward(cfg.hidden_size, cfg.ffn_size, cfg.activation_dropout)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, valid: Tensor | None) -> Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, valid)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class MelHubert(nn.Module):
    """The encoder: fbank front end, projection, positional conv, transformer layers."""

    def __init__(self, cfg: MelHubertConfig):
        super().__init__()
        self.config = cfg
        self.front_end = FbankFrontEnd(cfg.fbank_bins)
        self.pre_extract_proj = nn.Linear(cfg.input_dim, cfg.hidden_size)
        self.pos_conv = PositionalConv(cfg.hidden_size, cfg.pos_conv_kernel, cfg.pos_conv_groups, cfg.dropout)
        self.norm = nn.LayerNorm(cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.apply(_init_bert)

    def features(self, wavs: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``wavs [B, S]`` -> stacked normalised fbank ``[B, T, 80]``, ``frame_lengths [B]``."""
        return self.front_end(wavs, full_lengths(wavs, lengths))

    def forward(self, feats: Tensor, frame_lengths: Tensor, mask: Tensor | None = None) -> list[Tensor]:
        """``feats [B, T, 80]``, ``frame_lengths [B]``, ``mask [B, T]`` bool (True = masked) ->
        L+1 states ``[B, T, D]``: ``states[0]`` the input of layer 1, ``states[i]`` layer i's output."""
        T = feats.shape[1]
        valid = torch.arange(T, device=feats.device)[None, :] < frame_lengths[:, None]  # (B, T)
        if mask is not None:  # MelHuBERT masks before the projection, with a fixed zero vector
            feats = feats.masked_fill(mask.unsqueeze(-1), 0.0)
        x = self.pre_extract_proj(feats)  # (B, T, D)
        x = x.masked_fill(~valid.unsqueeze(-1), 0.0)  # so the conv sees zeros past the end, as when run alone
        x = self.dropout(self.norm(x + self.pos_conv(x)))
        states = [x]
        for layer in self.layers:
            x = layer(x, valid)
            states.append(x)
        return states


class MelHubertForPretraining(nn.Module):
    """Encoder + ``final_proj`` to cluster logits: what :func:`s3kit.methods.pretrain.build_model`
    returns for ``melhubert``."""

    kind = "melhubert"

    def __init__(self, cfg: MelHubertConfig):
        super().__init__()
        self.config = cfg
        self.encoder = MelHubert(cfg)
        self.final_proj = nn.Linear(cfg.hidden_size, cfg.num_clusters)
        _init_bert(self.final_proj)

    def num_frames(self, lengths: Tensor) -> Tensor:
        return num_frames(lengths)

    def forward(self, wavs: Tensor, lengths: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """``wavs [B, S]``, ``lengths [B]``, ``mask [B, T]`` -> logits ``[B, T, C]``."""
        feats, flen = self.encoder.features(wavs, lengths)
        return self.final_proj(self.encoder(feats, flen, mask)[-1])

    def upstream(self) -> "MelHubertUpstream":
        return MelHubertUpstream(self.encoder)


def _init_bert(module: nn.Module) -> None:
    # fairseq init_bert_params: N(0, 0.02) linear weights, zero biases
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class MelHubertUpstream(SmallModelBatching, EncoderUpstream):
    """A MelHuBERT encoder behind the upstream protocol (20 ms frames, ``num_layers + 1`` states)."""

    name = "melhubert"
    frame_rate = FRAME_RATE

    def __init__(self, encoder: MelHubert, name: str = "melhubert"):
        super().__init__(encoder, name)

    def num_frames(self, lengths: Tensor) -> Tensor:
        return num_frames(lengths)


UPSTREAM_LOADER = "s3kit.models.melhubert:upstream_from_checkpoint"


def save_upstream(directory: str | Path, model: MelHubert | MelHubertForPretraining, **meta) -> Path:
    """Save the bare encoder so that ``s3kit.load_upstream(directory)`` rebuilds it."""
    from s3kit import checkpoint

    encoder = model.encoder if isinstance(model, MelHubertForPretraining) else model
    return checkpoint.save(directory, encoder, encoder.config, upstream=UPSTREAM_LOADER, **meta)


def upstream_from_checkpoint(directory: str | Path, **options) -> MelHubertUpstream:
    """Rebuild a :class:`MelHubertUpstream` (eval mode) from a :func:`save_upstream` directory.

    Also accepts checkpoints of the whole pretraining model (keys under ``encoder.``).
    """
    from s3kit import checkpoint
    from s3kit.config import from_dict

    state, meta = checkpoint.load(directory)
    cfg = from_dict(MelHubertConfig, meta.get("config", {}), where=f"{directory}/config.json")
    encoder = MelHubert(cfg)
    prefix = meta.get("encoder_prefix", "")
    if not prefix and "pre_extract_proj.weight" not in state and "encoder.pre_extract_proj.weight" in state:
        prefix = "encoder."
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    checkpoint.check_compatible(encoder, state, source=str(directory))
    encoder.load_state_dict(state)
    up = MelHubertUpstream(encoder, name=options.pop("name", Path(directory).name))
    if options:
        raise ValueError(f"{directory}: unknown options for a MelHuBERT upstream: {sorted(options)}")
    return up.eval()
