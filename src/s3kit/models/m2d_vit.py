"""The Masked Modeling Duo ViT on log-mel patches (M2D, Niizumi et al. ICASSP 2023; M2D-S, Interspeech 2023).

Dimension legend: ``B`` batch, ``S`` samples, ``F`` mel bins (80), ``T`` mel frames (100 Hz),
``Fp`` × ``Tp`` patch grid, ``N = Fp·Tp`` patches, ``Nv`` visible, ``Nm`` masked, ``D`` encoder
width, ``Dp`` predictor width, ``Dt`` teacher width, ``L`` layers.

Figure (M2D-S paper Fig. 2), bottom to top::

    log-mel [B, F, T], normalised -> Conv2d patch embedding (kernel = stride = patch) -> [B, N, D]
        + fixed 2-D sin-cos positions                                  (shared by online and target)
    online:    tokens[visible] -> [CLS; ·] -> L x pre-LN block -> norm -> z_v [B, 1+Nv, D]
    predictor: Linear(D->Dp) -> scatter z_v + mask tokens + own positions -> 8 blocks -> norm
               -> Linear(Dp->D) -> ẑ [B, N, D]                          (ẑ_m = ẑ[masked])
    target:    tokens[masked] -> [CLS; ·] -> EMA copy of the online blocks + norm -> z_m [B, Nm, D]
    offline:   concat(z_v, ẑ_m) in patch order, regrouped by time [B, Tp, Fp·D] -> Linear -> ĥ [B, Tp, Dt]

Patch tokens are ordered frequency-major (``n = f·Tp + t``), as a Conv2d's flattened output is,
so a patch's time column is ``n % Tp``. With 80×2 / 80×4 patches ``Fp = 1`` and tokens are pure
time slices of 20 / 40 ms. Only the online encoder (:class:`ViTEncoder`) is kept after
pretraining; :class:`M2DUpstream` makes it an :class:`~s3kit.upstream.Upstream`.
Sizes from REFERENCE-NOTES.md §A (the official code): ViT-Base 12 × 768, 12 heads, MLP ratio 4,
LayerNorm eps 1e-6; predictor 8 blocks of width 512 with 16 heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s3kit.features import FLOAT32_EPS, LogMel
from s3kit.upstream.base import Hidden, SmallModelBatching, Upstream, full_lengths

SAMPLE_RATE = 16000
MEL_HOP = 160  # 10 ms between log-mel frames (paper §4.1)
MEL_RATE = SAMPLE_RATE / MEL_HOP  # 100 Hz
LN_EPS = 1e-6  # timm ViT LayerNorm eps in the official code
LOG_FLOOR = math.log(FLOAT32_EPS)  # log-mel of silence / zero padding: log(0 + eps)
UPSTREAM_LOADER = "s3kit.models.m2d_vit:upstream_from_checkpoint"


@dataclass
class M2DViTConfig:
    """Architecture; defaults = M2D-S §4.1: ViT-Base on 80 × 208 log-mel (2.08 s), 80 × 4 patches.

    ``input_frames`` sizes the position table (one training crop); longer inputs are encoded in
    chunks of that many frames. ``offline_dim`` is the teacher width for the M2D-S offline
    projection (None: plain M2D, no projection).
    """

    n_mels: int = 80
    input_frames: int = 208  # T = 2.08 s (§4.1); 400 / 512 / 608 in Table 6
    patch_freq: int = 80  # 80 = no split along frequency (§4.3)
    patch_time: int = 4  # 80 × 4 in the ablations, 80 × 2 in Table 6
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    predictor_dim: int = 512
    predictor_depth: int = 8
    predictor_heads: int = 16
    offline_dim: int | None = None

    def __post_init__(self):
        if self.n_mels % self.patch_freq:
            raise ValueError(f"patch_freq={self.patch_freq} must divide n_mels={self.n_mels}")
        if self.input_frames % self.patch_time:
            raise ValueError(f"patch_time={self.patch_time} must divide input_frames={self.input_frames}")
        if self.dim % self.heads or self.predictor_dim % self.predictor_heads:
            raise ValueError("dim / predictor_dim must be divisible by heads / predictor_heads")

    @property
    def grid(self) -> tuple[int, int]:
        """``(Fp, Tp)`` patches along frequency and time for one ``input_frames`` crop."""
        return self.n_mels // self.patch_freq, self.input_frames // self.patch_time

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def frame_rate(self) -> float:
        """Feature frames per second of the upstream (one per patch column): 25 Hz for 80 × 4."""
        return MEL_RATE / self.patch_time


ARCHS = {
    "base": M2DViTConfig(),  # ViT-Base, the paper's encoder
    # for tests and CPU demos: 2 layers of 64, predictor 2 × 32
    "tiny": M2DViTConfig(dim=64, depth=2, heads=4, predictor_dim=32, predictor_depth=2, predictor_heads=4),
    "small": M2DViTConfig(dim=192, depth=4, heads=4, predictor_dim=128, predictor_depth=2, predictor_heads=4),
}


def arch_config(arch: str, **overrides) -> M2DViTConfig:
    """A named size (``base``, ``small``, ``tiny``) with field overrides."""
    if arch not in ARCHS:
        raise ValueError(f"unknown M2D ViT arch {arch!r}; choose from {sorted(ARCHS)}")
    return replace(ARCHS[arch], **overrides)


# ----------------------------------------------------------------------------- positions


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """``[P, dim]``: sin of ``positions / 10000^(2i/dim)`` in the first half, cos in the second."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = positions.reshape(-1)[:, None].astype(np.float64) * omega[None, :]  # (P, dim/2)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid_f: int, grid_t: int) -> Tensor:
    """Fixed 2-D sin-cos positions ``[Fp·Tp, dim]`` (frequency-major, like the patch tokens):
    half the channels encode the time index, half the frequency index (MAE's 2-D embedding,
    for a non-square grid)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    f, t = np.meshgrid(np.arange(grid_f), np.arange(grid_t), indexing="ij")  # (Fp, Tp)
    emb = np.concatenate([sincos_1d(dim // 2, t), sincos_1d(dim // 2, f)], axis=1)
    return torch.from_numpy(emb).float()


# ----------------------------------------------------------------------------- blocks


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)  # qkv_bias=True (ViT-B)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """``x [B, N, D]``, ``key_mask [B, N]`` True on tokens that may be attended to."""
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, N, hs)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, N)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-LN transformer block (timm ``Block``): ``x + attn(ln(x))``, ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


def _init_weights(module: nn.Module) -> None:
    # MAE's initialisation: xavier-uniform linears with zero bias, unit LayerNorm
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------- encoder


class ViTEncoder(nn.Module):
    """The online encoder f_θ: patch embedding, CLS, fixed positions, ``depth`` blocks, final norm.

    Also holds the dataset normalisation (``norm_mean``, ``norm_std``: scalars over all log-mel
    bins and frames, paper §4.1 "normalized using dataset statistics"), stored with the weights.
    """

    def __init__(self, cfg: M2DViTConfig):
        super().__init__()
        self.cfg = cfg
        Fp, Tp = cfg.grid
        self.patch_embed = nn.Conv2d(1, cfg.dim, kernel_size=(cfg.patch_freq, cfg.patch_time),
                                     stride=(cfg.patch_freq, cfg.patch_time))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.register_buffer("pos_embed", sincos_2d(cfg.dim, Fp, Tp)[None], persistent=False)  # (1, N, D)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=LN_EPS)
        self.register_buffer("norm_mean", torch.zeros(()))
        self.register_buffer("norm_std", torch.ones(()))
        self.apply(_init_weights)
        w = self.patch_embed.weight.data  # MAE: patch embedding initialised like a linear layer
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)

    def set_norm_stats(self, mean: float, std: float) -> None:
        if not std > 0:
            raise ValueError(f"normalisation std must be > 0, got {std}")
        self.norm_mean.fill_(float(mean))
        self.norm_std.fill_(float(std))

    def normalize(self, logmel: Tensor) -> Tensor:
        return (logmel - self.norm_mean) / self.norm_std

    def tokens(self, x: Tensor) -> Tensor:
        """Normalised log-mel ``x [B, F, T']`` (``T'`` ≤ ``input_frames``, a multiple of
        ``patch_time``) -> patch tokens with positions ``[B, Fp·Tp', D]`` (frequency-major)."""
        B, Fm, T = x.shape
        if Fm != self.cfg.n_mels or T % self.cfg.patch_time or T > self.cfg.input_frames:
            raise ValueError(f"expected [B, {self.cfg.n_mels}, T<= {self.cfg.input_frames}] with T a multiple of "
                             f"{self.cfg.patch_time}, got {tuple(x.shape)}")
        tok = self.patch_embed(x[:, None]).flatten(2).transpose(1, 2)  # (B, Fp·Tp', D)
        Fp, Tp = self.cfg.grid
        Tp_in = T // self.cfg.patch_time
        pos = self.pos_embed.view(1, Fp, Tp, -1)[:, :, :Tp_in].reshape(1, Fp * Tp_in, -1)  # trim for short input
        return tok + pos

    def with_cls(self, tokens: Tensor) -> Tensor:
        """``[B, n, D] -> [B, 1+n, D]`` (CLS has no position, as in MAE)."""
        return torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)

    def forward(self, tokens: Tensor, key_mask: Tensor | None = None, return_all: bool = False):
        """``tokens [B, n, D]`` (already position-embedded, e.g. the visible ones) -> ``[B, 1+n, D]``
        after the final norm; with ``return_all`` the list of ``depth + 1`` states (the input with
        CLS, each block's output, the last one after the final norm)."""
        x = self.with_cls(tokens)
        if key_mask is not None:
            key_mask = torch.cat([key_mask.new_ones(key_mask.shape[0], 1), key_mask], dim=1)
        states = [x]
        for blk in self.blocks:
            x = blk(x, key_mask)
            states.append(x)
        states[-1] = self.norm(x)
        return states if return_all else states[-1]


class TargetEncoder(nn.Module):
    """The target network f_ξ: its own blocks + norm, an EMA of the online ones; it shares the
    online patch embedding, positions and CLS token (REFERENCE-NOTES.md §A). Never trained."""

    def __init__(self, cfg: M2DViTConfig):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=LN_EPS)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x_with_cls: Tensor) -> Tensor:
        """``[B, 1+n, D] -> [B, n, D]`` (CLS dropped)."""
        x = x_with_cls
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 1:]


class Predictor(nn.Module):
    """g_θ: visible encoder outputs + mask tokens + positions -> predictions for every patch in
    the encoder (target) space."""

    def __init__(self, cfg: M2DViTConfig):
        super().__init__()
        self.cfg = cfg
        Fp, Tp = cfg.grid
        self.embed = nn.Linear(cfg.dim, cfg.predictor_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.predictor_dim))
        self.register_buffer("pos_embed", sincos_2d(cfg.predictor_dim, Fp, Tp)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(cfg.predictor_dim, cfg.predictor_heads, cfg.mlp_ratio)
                                    for _ in range(cfg.predictor_depth))
        self.norm = nn.LayerNorm(cfg.predictor_dim, eps=LN_EPS)
        self.pred = nn.Linear(cfg.predictor_dim, cfg.dim)  # back to the encoder width (§A)
        self.apply(_init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, z: Tensor, visible: Tensor, num_patches: int) -> Tensor:
        """``z [B, 1+Nv, D]`` (CLS first), ``visible [B, Nv]`` patch indices -> ``ẑ [B, N, D]``."""
        B = z.shape[0]
        x = self.embed(z)  # (B, 1+Nv, Dp)
        full = self.mask_token.expand(B, num_patches, -1).clone()  # (B, N, Dp)
        full.scatter_(1, visible[..., None].expand(-1, -1, x.shape[-1]), x[:, 1:])
        full = full + self.pos_embed[:, :num_patches]
        x = torch.cat([x[:, :1], full], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))[:, 1:]


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """``x [B, N, D]``, ``idx [B, n]`` -> ``[B, n, D]``."""
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def by_time(x: Tensor, grid_f: int) -> Tensor:
    """Regroup patch features by time column: ``[B, Fp·Tp, D] -> [B, Tp, Fp·D]`` (concatenating
    the frequency patches of one time frame, paper §3.3)."""
    B, N, D = x.shape
    return x.view(B, grid_f, N // grid_f, D).permute(0, 2, 1, 3).reshape(B, N // grid_f, grid_f * D)


class M2DViT(nn.Module):
    """Online encoder + predictor + target (+ M2D-S offline projection) — the whole pretraining model."""

    def __init__(self, cfg: M2DViTConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ViTEncoder(cfg)
        self.predictor = Predictor(cfg)
        self.target = TargetEncoder(cfg)
        self.offline = None
        if cfg.offline_dim is not None:
            # Linear(Fp·D -> Dt); left at torch's default init, as the official M2D-S code does
            self.offline = nn.Linear(cfg.grid[0] * cfg.dim, cfg.offline_dim)
        self.sync_target()

    @torch.no_grad()
    def sync_target(self) -> None:
        """Copy the online blocks + norm into the target (ξ := θ at initialisation)."""
        self.target.blocks.load_state_dict(self.encoder.blocks.state_dict())
        self.target.norm.load_state_dict(self.encoder.norm.state_dict())

    def online_target_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(target, online) module pairs the EMA updates: the blocks and the final norm."""
        return [(self.target.blocks, self.encoder.blocks), (self.target.norm, self.encoder.norm)]

    def forward(self, x: Tensor, visible: Tensor, masked: Tensor, with_target: bool = True) -> dict[str, Tensor]:
        """Normalised (noisy) log-mel ``x [B, F, T]``, index sets ``visible [B, Nv]``, ``masked [B, Nm]``.

        Returns ``z_v [B, Nv, D]`` (online outputs of the visible patches, CLS dropped),
        ``pred [B, N, D]`` (predictor outputs for every patch), ``z_m [B, Nm, D]`` (target outputs
        of the masked patches, no grad; only when ``with_target``) and ``tokens [B, N, D]``.
        """
        tokens = self.encoder.tokens(x)  # (B, N, D)
        N = tokens.shape[1]
        z = self.encoder(gather_tokens(tokens, visible))  # (B, 1+Nv, D)
        out = {"tokens": tokens, "z_v": z[:, 1:], "pred": self.predictor(z, visible, N)}
        if with_target:
            with torch.no_grad():  # the target sees the masked patches through the *shared* embedding
                out["z_m"] = self.target(self.encoder.with_cls(gather_tokens(tokens.detach(), masked)))
        return out

    def offline_prediction(self, z_v: Tensor, pred: Tensor, visible: Tensor, masked: Tensor) -> Tensor:
        """ĥ ``[B, Tp, Dt]``: concat(z_v, ẑ_m) put back in patch order, regrouped by time, projected."""
        if self.offline is None:
            raise ValueError("this M2DViT has no offline projection (set offline_dim to the teacher width)")
        full = pred.clone()  # ẑ at masked positions ...
        full.scatter_(1, visible[..., None].expand(-1, -1, full.shape[-1]), z_v)  # ... z_v at visible ones
        return self.offline(by_time(full, self.cfg.grid[0]))


# ----------------------------------------------------------------------------- upstream


class M2DUpstream(SmallModelBatching, Upstream):
    """The trained online encoder as an upstream: waveform -> log-mel -> normalise -> chunks of
    ``input_frames`` -> ViT (no masking) -> per-layer patch tokens regrouped by time.

    ``states[0]`` is the patch embedding + positions (the input of block 1), ``states[i]`` block
    ``i``'s output, the last one after the final norm (as the official SUPERB wrapper returns it);
    each ``[B, Tp, Fp·D]`` at ``100 / patch_time`` Hz, CLS dropped. Padding is masked out of the
    attention, so a padded batch gives the states of one-by-one runs.

    ``states[0]`` is kept for analysis, but the SUPERB weighted sum spans the blocks only
    (:attr:`weighted_sum_layers` = 1..depth): the official wrapper returns no embedding-layer
    output, and the paper's SUPERB numbers are weighted sums of the transformer layers.
    """

    def __init__(self, encoder: ViTEncoder, name: str = "m2d"):
        super().__init__()
        self.encoder = encoder
        self.cfg = encoder.cfg
        self.name = name
        self.logmel = LogMel(n_mels=self.cfg.n_mels)
        self.frame_rate = self.cfg.frame_rate
        width = self.cfg.grid[0] * self.cfg.dim
        self.hidden_sizes = [width] * (self.cfg.depth + 1)

    @property
    def weighted_sum_layers(self) -> list[int]:
        return list(range(1, self.cfg.depth + 1))  # the blocks; not the patch embedding states[0]

    def num_frames(self, lengths: Tensor) -> Tensor:
        mel = self.logmel.num_frames(torch.as_tensor(lengths, dtype=torch.long))
        return torch.div(mel + self.cfg.patch_time - 1, self.cfg.patch_time, rounding_mode="floor")

    def forward(self, wavs: Tensor, lengths: Tensor | None = None) -> Hidden:
        lengths = full_lengths(wavs, lengths)
        mel, mel_len = self.logmel(wavs, lengths)  # (B, T, F)
        B, T, _ = mel.shape
        frames = torch.arange(T, device=mel.device)
        mel = torch.where(frames[None, :, None] < mel_len[:, None, None], mel, mel.new_full((), LOG_FLOOR))
        x = self.encoder.normalize(mel).transpose(1, 2)  # (B, F, T)
        cols = self.num_frames(lengths).to(mel.device)  # (B,) valid patch columns
        chunk = self.cfg.input_frames
        T_pad = max(chunk, math.ceil(T / chunk) * chunk)
        x = F.pad(x, (0, T_pad - T), value=float((LOG_FLOOR - self.encoder.norm_mean) / self.encoder.norm_std))
        Fp = self.cfg.grid[0]
        Tp_chunk = chunk // self.cfg.patch_time
        per_chunk: list[list[Tensor]] = []
        for c in range(T_pad // chunk):
            tok = self.encoder.tokens(x[:, :, c * chunk:(c + 1) * chunk])  # (B, Fp·Tp_chunk, D)
            col = c * Tp_chunk + torch.arange(Tp_chunk, device=x.device)  # global column of each time patch
            key_mask = (col[None, :] < cols[:, None]).repeat(1, Fp)  # (B, Fp·Tp_chunk), frequency-major
            states = self.encoder(tok, key_mask, return_all=True)
            per_chunk.append([by_time(s[:, 1:], Fp) for s in states])
        Tp_total = int(self.num_frames(torch.tensor([wavs.shape[1]]))[0])
        states = [torch.cat([ch[i] for ch in per_chunk], dim=1)[:, :Tp_total] for i in range(self.cfg.depth + 1)]
        return Hidden(states=states, lengths=cols.to(lengths.device), frame_rate=self.frame_rate)


def load_encoder(directory: str | Path) -> tuple[ViTEncoder, dict]:
    """The online encoder (with its normalisation statistics) from an M2D / M2D-S checkpoint."""
    from s3kit import checkpoint
    from s3kit.config import from_dict

    state, meta = checkpoint.load(directory)
    if "m2d_vit" not in meta:
        raise checkpoint.CheckpointError(f"{directory}: not an M2D checkpoint (config.json has no 'm2d_vit' entry)")
    cfg = from_dict(M2DViTConfig, meta["m2d_vit"], where=f"{directory}/config.json:m2d_vit")
    encoder = ViTEncoder(cfg)
    prefix = meta.get("encoder_prefix", "model.encoder.")
    body = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    checkpoint.check_compatible(encoder, body, source=str(directory))
    encoder.load_state_dict(body)
    return encoder.eval(), meta


def upstream_from_checkpoint(directory: str | Path, **options) -> M2DUpstream:
    """Rebuild :class:`M2DUpstream` (eval mode) from a checkpoint (what ``s3kit.load_upstream`` calls)."""
    encoder, _ = load_encoder(directory)
    name = options.pop("name", Path(directory).name)
    if options:
        raise TypeError(f"{directory}: unknown options for an M2D upstream: {sorted(options)}")
    return M2DUpstream(encoder, name=name).eval()


__all__ = ["ARCHS", "M2DUpstream", "M2DViT", "M2DViTConfig", "Predictor", "TargetEncoder", "ViTEncoder",
           "arch_config", "by_time", "gather_tokens", "load_encoder", "sincos_2d", "upstream_from_checkpoint"]
