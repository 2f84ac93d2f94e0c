"""Iterative pruning of SSL speech encoders: heads, FFN rows, and individual weights.

Bias paper §3.3 after Lin et al. ("Compressing transformer-based self-supervised models for
speech processing"), with the reference runner's settings (REFERENCE-NOTES.md §D):

* **Head pruning**: score every head by the L1 norm of its Q, K and V rows and biases, remove
  the lowest-scoring head(s) *in every layer* (the same number per layer, since higher layers
  have larger norms), every 25 k steps until half the heads remain (72 of 144), then every
  40 k steps until one head per layer is left (12); lr 5e-5.
* **Row pruning**: score every FFN row by ``sum |fc1.W[i, :]| + |fc1.b[i]| + sum |fc2.W[:, i]|``;
  remove the 128 lowest rows of fc1 and the matching columns of fc2 in every layer every 25 k
  steps until 512 remain; lr 1e-5.
* **Weight pruning**: global unstructured L1 magnitude over the weights *and biases* of the
  Q/K/V/out and fc1/fc2 linears of all layers; the next sparsity level is applied when the EMA
  (0.9998) of the training loss changed by less than 0.001 over the last 15 k steps; schedule
  20 % steps to 20 %, 10 % to 50 %, 5 % to 65 %, 2.5 % to 70 %, 1 % to 80 %; lr 1e-5. Masks are
  re-applied after every optimiser update, so pruned weights stay zero through fine-tuning.

Head and row pruning are *physical*: the Q/K/V/out and fc1/fc2 tensors shrink, so the pruned
model is faster. Between prune steps the model is fine-tuned with its own pretraining loss
(:mod:`s3kit.methods.pretrain`) or, when that is unavailable (a bare encoder), with a
distillation loss towards the unpruned model's hidden states; the optimiser is re-created after
every prune (the reference runner does the same).

transformers 5 has no ``prune_heads`` / ``head_mask`` and its ``from_pretrained`` refuses
checkpoints whose layers differ in head count or FFN width (DEPENDENCIES.md §1), so pruned models
are saved in s3kit's format (:func:`save_pruned`) recording each layer's kept heads and FFN width;
``s3kit.load_upstream(dir)`` rebuilds them through :func:`upstream_from_checkpoint`.

Supported: transformers ``HubertModel`` / ``Wav2Vec2Model`` / ``WavLMModel`` (bare, inside an
:class:`~s3kit.upstream.hf.HFUpstream`, or inside a pretraining model) and s3kit's MelHuBERT.

Dimension legend: ``B`` batch, ``T`` frames, ``D`` model width, ``H`` heads of a layer, ``E``
head width (``D / H`` before pruning), ``F`` FFN width, ``L`` layers.
"""

from __future__ import annotations

import functools
import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s3kit.models.melhubert import SelfAttention

UPSTREAM_LOADER = "s3kit.methods.prune:upstream_from_checkpoint"
_WRAPPERS = ("model", "hubert", "wav2vec2", "wavlm", "encoder", "body", "student")


# ============================================================================ model anatomy


@dataclass
class LayerParts:
    """The prunable parts of one transformer layer: its attention and its two FFN linears
    (``fc1``: D -> F, ``fc2``: F -> D) with the module that owns them (``ffn``) and their names."""

    attn: nn.Module
    ffn: nn.Module
    fc1_name: str
    fc2_name: str

    @property
    def fc1(self) -> nn.Linear:
        return getattr(self.ffn, self.fc1_name)

    @property
    def fc2(self) -> nn.Linear:
        return getattr(self.ffn, self.fc2_name)


def _ffn_names(ffn: nn.Module) -> tuple[str, str]:
    if hasattr(ffn, "intermediate_dense"):  # transformers HuBERT / wav2vec 2.0 / WavLM
        return "intermediate_dense", "output_dense"
    if hasattr(ffn, "fc1"):  # s3kit MelHuBERT
        return "fc1", "fc2"
    raise TypeError(f"{type(ffn).__name__}: not a known feed-forward module (intermediate_dense/output_dense or fc1/fc2)")


def encoder_of(model: nn.Module) -> nn.Module:
    """The encoder inside ``model`` whose transformer layers get pruned: a transformers
    ``HubertModel`` / ``Wav2Vec2Model`` / ``WavLMModel`` or an s3kit ``MelHubert``. Accepts those,
    an upstream wrapping one, or a pretraining model (``*ForPreTraining``, MelHuBERT's)."""
    seen = model
    for _ in range(6):
        if _layers_of(seen) is not None:
            return seen
        nxt = None
        for attr in _WRAPPERS:
            sub = getattr(seen, attr, None)
            if isinstance(sub, nn.Module):
                nxt = sub
                break
        if nxt is None:
            break
        seen = nxt
    raise TypeError(f"{type(model).__name__}: no transformer encoder found (supported: transformers HuBERT, "
                    "wav2vec 2.0, WavLM and s3kit MelHuBERT, bare or wrapped in an upstream / pretraining model)")


def _layers_of(module: nn.Module) -> nn.ModuleList | None:
    enc = getattr(module, "encoder", None)
    hf_config = hasattr(getattr(module, "config", None), "model_type")
    if hf_config and isinstance(enc, nn.Module) and isinstance(getattr(enc, "layers", None), nn.ModuleList):
        return enc.layers  # transformers *Model
    layers = getattr(module, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) and hasattr(layers[0], "ffn"):
        return layers  # s3kit MelHubert
    return None


def layer_parts(model: nn.Module) -> list[LayerParts]:
    """:class:`LayerParts` of every transformer layer of ``model``'s encoder."""
    parts = []
    for layer in _layers_of(encoder_of(model)):
        ffn = getattr(layer, "feed_forward", None) or getattr(layer, "ffn")
        parts.append(LayerParts(layer.attention, ffn, *_ffn_names(ffn)))
    return parts


def num_heads(attn: nn.Module) -> int:
    return int(attn.num_heads if hasattr(attn, "num_heads") else attn.heads)


def head_dim(attn: nn.Module) -> int:
    """Width ``E`` of one head (unchanged by pruning)."""
    return attn.q_proj.out_features // num_heads(attn)


def kept_heads(attn: nn.Module) -> list[int]:
    """Original indices of the heads still in ``attn`` (``0..H-1`` when never pruned)."""
    return list(getattr(attn, "kept_heads", range(num_heads(attn))))


def heads_per_layer(model: nn.Module) -> list[int]:
    return [num_heads(p.attn) for p in layer_parts(model)]


def ffn_widths(model: nn.Module) -> list[int]:
    return [p.fc1.out_features for p in layer_parts(model)]


# ============================================================================ scores (pure)


def head_l1_scores(weights: list[Tensor], biases: list[Tensor | None], heads: int) -> Tensor:
    """Per-head L1 norm summed over projections (Lin et al.; REFERENCE-NOTES.md §D).

    Args:
        weights: projection weights ``[H*E, D]`` (Q, K, V), rows grouped by head.
        biases: matching biases ``[H*E]`` or None.
        heads: ``H``.
    Returns: ``[H]`` = ``sum_p ( sum |W_p[rows of h]| + sum |b_p[rows of h]| )``.
    """
    score = None
    for w, b in zip(weights, biases):
        if w.shape[0] % heads:
            raise ValueError(f"{w.shape[0]} projection rows do not split into {heads} heads")
        s = w.detach().abs().reshape(heads, -1).sum(1)  # (H,)
        if b is not None:
            s = s + b.detach().abs().reshape(heads, -1).sum(1)
        score = s if score is None else score + s
    return score


def row_l1_scores(w1: Tensor, b1: Tensor | None, w2: Tensor) -> Tensor:
    """Per-FFN-row L1 norm: ``sum_j |w1[i, j]| + |b1[i]| + sum_j |w2[j, i]|`` (fc2's bias is not
    per-row and is ignored, as in the reference).

    Args: ``w1 [F, D]`` (fc1 weight), ``b1 [F]``, ``w2 [D, F]`` (fc2 weight). Returns ``[F]``.
    """
    if w1.shape[0] != w2.shape[1]:
        raise ValueError(f"fc1 has {w1.shape[0]} rows but fc2 has {w2.shape[1]} columns")
    s = w1.detach().abs().sum(1) + w2.detach().abs().sum(0)
    return s if b1 is None else s + b1.detach().abs()


def head_scores(attn: nn.Module) -> Tensor:
    """``[H]`` L1 scores of an attention module's heads (Q, K, V weights and biases)."""
    projs = (attn.q_proj, attn.k_proj, attn.v_proj)
    return head_l1_scores([p.weight for p in projs], [p.bias for p in projs], num_heads(attn))


def row_scores(ffn: nn.Module) -> Tensor:
    """``[F]`` L1 scores of a feed-forward module's rows (fc1 rows + bias, fc2 columns)."""
    fc1, fc2 = (getattr(ffn, n) for n in _ffn_names(ffn))
    return row_l1_scores(fc1.weight, fc1.bias, fc2.weight)


def lowest(scores: Tensor, k: int) -> list[int]:
    """Indices of the ``k`` lowest scores (ties broken by index), sorted."""
    if k <= 0:
        return []
    order = torch.argsort(scores.float(), stable=True)
    return sorted(order[:k].tolist())


# ============================================================================ physical removal


def _slice_linear(linear: nn.Linear, keep: Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping rows (``dim=0``, outputs) or columns (``dim=1``, inputs) ``keep``."""
    keep = keep.to(linear.weight.device)
    w = linear.weight.detach().index_select(dim, keep).clone()
    b = None
    if linear.bias is not None:
        b = (linear.bias.detach().index_select(0, keep) if dim == 0 else linear.bias.detach()).clone()
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if b is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    new.train(linear.training)
    return new


def _to_pruned_class(attn: nn.Module) -> None:
    """Give attention modules whose forward assumes ``H * E == D`` one that does not."""
    if isinstance(attn, SelfAttention):
        attn.__class__ = PrunedMelSelfAttention
    elif type(attn).__name__ == "WavLMAttention":
        attn.__class__ = pruned_wavlm_class()


def prune_heads(model: nn.Module, layer: int, heads: list[int]) -> None:
    """Physically remove ``heads`` (current indices ``0..H-1``) from layer ``layer``: the
    heads' rows of Q/K/V (weights and biases) and columns of the output projection.

    At least one head must remain. ``attn.kept_heads`` keeps the original index of every
    remaining head (WavLM's gated relative position bias is per original head).
    """
    parts = layer_parts(model)
    if not 0 <= layer < len(parts):
        raise IndexError(f"layer {layer} outside 0..{len(parts) - 1}")
    attn = parts[layer].attn
    H, E = num_heads(attn), head_dim(attn)
    drop = sorted(set(int(h) for h in heads))
    if not drop:
        return
    if drop[0] < 0 or drop[-1] >= H:
        raise IndexError(f"layer {layer} has heads 0..{H - 1}; cannot prune {drop}")
    keep = [h for h in range(H) if h not in drop]
    if not keep:
        raise ValueError(f"pruning heads {drop} would leave layer {layer} with no attention head")
    original = kept_heads(attn)
    _to_pruned_class(attn)
    rows = torch.tensor([h * E + e for h in keep for e in range(E)], dtype=torch.long)
    for name in ("q_proj", "k_proj", "v_proj"):
        setattr(attn, name, _slice_linear(getattr(attn, name), rows, 0))
    attn.out_proj = _slice_linear(attn.out_proj, rows, 1)
    if hasattr(attn, "num_heads"):
        attn.num_heads = len(keep)
    else:
        attn.heads = len(keep)
    if hasattr(attn, "head_dim"):
        attn.head_dim = E
    if hasattr(attn, "gru_rel_pos_const"):  # WavLM: one gate constant per head
        attn.gru_rel_pos_const = nn.Parameter(attn.gru_rel_pos_const.detach()[:, keep].clone(),
                                              requires_grad=attn.gru_rel_pos_const.requires_grad)
    attn.kept_heads = [original[h] for h in keep]


def prune_rows(model: nn.Module, layer: int, rows: list[int]) -> None:
    """Physically remove FFN ``rows`` (current indices ``0..F-1``) from layer ``layer``: rows of
    fc1 (weight and bias) and the matching columns of fc2. At least one row must remain."""
    parts = layer_parts(model)
    if not 0 <= layer < len(parts):
        raise IndexError(f"layer {layer} outside 0..{len(parts) - 1}")
    p = parts[layer]
    width = p.fc1.out_features
    drop = set(int(r) for r in rows)
    if not drop:
        return
    if min(drop) < 0 or max(drop) >= width:
        raise IndexError(f"layer {layer} has FFN rows 0..{width - 1}; cannot prune {sorted(drop)[:5]}...")
    keep = torch.tensor([r for r in range(width) if r not in drop], dtype=torch.long)
    if keep.numel() == 0:
        raise ValueError(f"pruning {len(drop)} rows would leave layer {layer} with an empty FFN")
    setattr(p.ffn, p.fc1_name, _slice_linear(p.fc1, keep, 0))
    setattr(p.ffn, p.fc2_name, _slice_linear(p.fc2, keep, 1))


def prune_lowest_heads(model: nn.Module, per_layer: int = 1) -> list[list[int]]:
    """Remove the ``per_layer`` lowest-L1 heads of every layer (bias paper: the same number per
    layer). Returns the removed heads' original indices per layer."""
    removed = []
    for i, p in enumerate(layer_parts(model)):
        H = num_heads(p.attn)
        k = min(per_layer, H - 1)
        drop = lowest(head_scores(p.attn), k)
        orig = kept_heads(p.attn)
        removed.append([orig[h] for h in drop])
        prune_heads(model, i, drop)
    return removed


def prune_lowest_rows(model: nn.Module, per_layer: int = 128, min_rows: int = 1) -> list[int]:
    """Remove the ``per_layer`` lowest-L1 FFN rows of every layer, keeping at least ``min_rows``.
    Returns the new widths."""
    for i, p in enumerate(layer_parts(model)):
        k = max(0, min(per_layer, p.fc1.out_features - min_rows))
        prune_rows(model, i, lowest(row_scores(p.ffn), k))
    return ffn_widths(model)


def _mel_forward(self, x: Tensor, valid: Tensor | None) -> Tensor:
    """``x [B, T, D]``, ``valid [B, T]`` bool -> ``[B, T, D]``; the context is ``H * E`` wide."""
    B, T, _ = x.shape
    q, k, v = (p(x).view(B, T, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))  # (B, H, T, E)
    mask = None if valid is None else valid[:, None, None, :]
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
    return self.out_proj(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, H*E) -> (B, T, D)


# MelHuBERT's attention reshapes its context to D = H * E; a pruned one has fewer heads.
PrunedMelSelfAttention = type("PrunedMelSelfAttention", (SelfAttention,),
                              {"forward": _mel_forward, "__module__": __name__,
                               "__doc__": "MelHuBERT attention with any number of heads of width E (a pruned layer)."})


def _wavlm_forward(self, hidden_states, attention_mask=None, position_bias=None, index=0, **kwargs):
    """WavLM attention with any subset of its original heads (``self.kept_heads``).

    The gated relative position bias is per *original* head: the bias computed by layer 0 is
    kept for all original heads (``[B*H0, T, T]``) and passed on unchanged; each layer picks its
    kept heads, and the gate of original head h reads input chunk h (as unpruned WavLM does).
    """
    B, T, D = hidden_states.shape
    if position_bias is None:
        position_bias = self.compute_bias(T, T)  # (H0, T, T)
        position_bias = position_bias.unsqueeze(0).repeat(B, 1, 1, 1).view(-1, T, T)  # (B*H0, T, T)
    H0 = position_bias.shape[0] // B
    keep = torch.tensor(self.kept_heads, device=hidden_states.device)
    h = keep.numel()
    chunks = hidden_states.view(B, T, -1, self.gru_rel_pos_linear.in_features).permute(0, 2, 1, 3)[:, keep]  # (B, h, T, D/H0)
    rel = self.gru_rel_pos_linear(chunks).view(B, h, T, 2, 4).sum(-1)
    gate_a, gate_b = torch.sigmoid(rel).chunk(2, dim=-1)  # (B, h, T, 1) each
    gate = gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0  # (B, h, T, 1)
    bias = gate * position_bias.view(B, H0, T, T)[:, keep]  # (B, h, T, T)
    E = self.q_proj.out_features // h
    q, k, v = (p(hidden_states).view(B, T, h, E).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))  # (B, h, T, E)
    scores = (q * E**-0.5) @ k.transpose(-1, -2) + bias  # (B, h, T, T)
    if attention_mask is not None:
        pad = attention_mask.ne(1)[:, None, None, :]  # (B, 1, 1, T): True = padded key
        scores = scores.masked_fill(pad, float("-inf"))
    probs = F.dropout(scores.softmax(-1), p=self.dropout, training=self.training)
    out = self.out_proj((probs @ v).transpose(1, 2).reshape(B, T, h * E))  # (B, T, D)
    return out, probs, position_bias


@functools.lru_cache(maxsize=1)
def pruned_wavlm_class() -> type:
    """WavLM attention that runs with any subset of heads (built on first use)."""
    from transformers.models.wavlm.modeling_wavlm import WavLMAttention

    return type("PrunedWavLMAttention", (WavLMAttention,), {"forward": _wavlm_forward, "__module__": __name__})


# ============================================================================ weight pruning


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight" | "bias")`` of the Q/K/V/out and fc1/fc2 linears of every layer: what
    the weight-pruning reference prunes (global over all layers)."""
    out = []
    for p in layer_parts(model):
        for lin in (p.attn.q_proj, p.attn.k_proj, p.attn.v_proj, p.attn.out_proj, p.fc1, p.fc2):
            out.append((lin, "weight"))
            if lin.bias is not None:
                out.append((lin, "bias"))
    return out


def global_magnitude_masks(tensors: list[Tensor], sparsity: float, old: list[Tensor] | None = None) -> list[Tensor]:
    """Boolean keep-masks (same shapes as ``tensors``) zeroing the ``round(sparsity * N)`` entries
    of smallest magnitude over all tensors together (``N`` = total entries). Entries already
    pruned in ``old`` are pruned first, so masks only ever grow (iterative pruning)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    flat = torch.cat([t.detach().abs().reshape(-1).float() for t in tensors])
    if old is not None:
        flat = torch.where(torch.cat([m.reshape(-1) for m in old]).to(flat.device), flat, torch.full_like(flat, -1.0))
    n = flat.numel()
    k = int(round(sparsity * n))
    keep = torch.ones(n, dtype=torch.bool, device=flat.device)
    if k > 0:
        keep[torch.argsort(flat, stable=True)[:k]] = False
    masks, start = [], 0
    for t in tensors:
        masks.append(keep[start : start + t.numel()].view_as(t))
        start += t.numel()
    return masks


class WeightMasks:
    """Unstructured pruning masks over :func:`prunable_weights`; :meth:`apply` zeroes the pruned
    entries (call it after every optimiser update: the method's ``on_step_end`` does)."""

    def __init__(self, model: nn.Module):
        self.targets = prunable_weights(model)
        self.masks = [torch.ones_like(getattr(m, n), dtype=torch.bool) for m, n in self.targets]

    def prune_to(self, sparsity: float) -> None:
        """Set the global sparsity to ``sparsity`` (of all prunable entries) and apply it."""
        tensors = [getattr(m, n) for m, n in self.targets]
        self.masks = global_magnitude_masks(tensors, sparsity, self.masks)
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for (m, n), mask in zip(self.targets, self.masks):
            getattr(m, n).mul_(mask.to(getattr(m, n).device))

    @property
    def sparsity(self) -> float:
        total = sum(m.numel() for m in self.masks)
        return float(sum(int((~m).sum()) for m in self.masks)) / max(1, total)

    @property
    def pruned(self) -> int:
        return sum(int((~m).sum()) for m in self.masks)


def zero_fraction(model: nn.Module) -> float:
    """Fraction of exactly-zero entries among :func:`prunable_weights` (sparsity as stored)."""
    ts = [getattr(m, n).detach() for m, n in prunable_weights(model)]
    return float(sum(int((t == 0).sum()) for t in ts)) / max(1, sum(t.numel() for t in ts))


def prunable_count(model: nn.Module) -> int:
    return sum(getattr(m, n).numel() for m, n in prunable_weights(model))


# ============================================================================ schedules


@dataclass(frozen=True)
class HeadPruneConfig:
    """Head pruning schedule (bias paper §3.3; Lin et al.'s ``by_layer`` L1 runner).

    ``per_layer`` heads leave every layer at each prune; the first prune is at
    ``first_prune`` steps, then every ``interval`` steps while more than ``switch_fraction`` of the
    heads remain (72 of 144), then every ``late_interval`` steps down to ``min_per_layer`` heads per
    layer (12 of 144). Fine-tuning continues ``late_interval`` steps after the last prune
    (REFERENCE-NOTES §D: prunes at 1000 + [0, 25k, ..., 125k, 165k, ..., 325k], 366k in total).
    """

    per_layer: int = 1
    first_prune: int = 1000
    interval: int = 25_000
    late_interval: int = 40_000
    switch_fraction: float = 0.5
    min_per_layer: int = 1
    lr: float = 5e-5

    def __post_init__(self):
        if self.per_layer < 1 or self.min_per_layer < 1:
            raise ValueError("per_layer and min_per_layer must be >= 1")


@dataclass(frozen=True)
class RowPruneConfig:
    """Row pruning schedule (bias paper §3.3): ``per_step`` rows of every layer's FFN at
    ``first_prune`` and then every ``interval`` steps until ``min_rows`` remain; fine-tuning
    continues ``interval`` steps after the last prune."""

    per_step: int = 128
    min_rows: int = 512
    first_prune: int = 1000
    interval: int = 25_000
    lr: float = 1e-5

    def __post_init__(self):
        if self.per_step < 1 or self.min_rows < 1:
            raise ValueError("per_step and min_rows must be >= 1")


# (step size, up to this sparsity): bias paper §3.3
SPARSITY_SCHEDULE = ((0.2, 0.2), (0.1, 0.5), (0.05, 0.65), (0.025, 0.7), (0.01, 0.8))


@dataclass(frozen=True)
class WeightPruneConfig:
    """Weight pruning schedule (bias paper §3.3): the next level of :func:`sparsity_levels` is
    applied once at least ``interval`` steps passed since the last prune *and* the loss EMA
    (``ema`` decay) moved by less than ``tolerance`` over the last ``window`` steps. At most
    ``max_wait`` extra steps are spent waiting for the plateau (None: wait forever)."""

    schedule: tuple[tuple[float, float], ...] = SPARSITY_SCHEDULE
    ema: float = 0.9998
    window: int = 15_000
    tolerance: float = 0.001
    interval: int = 25_000
    max_wait: int | None = None
    lr: float = 1e-5


def sparsity_levels(schedule=SPARSITY_SCHEDULE) -> list[float]:
    """Cumulative sparsities: each ``(step, until)`` adds ``step`` until ``until`` is reached.
    The paper's schedule gives 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.675, 0.7, 0.71 ... 0.8."""
    levels, s = [], 0.0
    for step, until in schedule:
        if step <= 0:
            raise ValueError(f"sparsity step must be > 0, got {step}")
        while s + step <= until + 1e-9:
            s = round(s + step, 6)
            levels.append(s)
    return levels


def head_schedule(cfg: HeadPruneConfig, layers: int, heads: int) -> tuple[list[tuple[int, int]], int]:
    """``([(step, heads per layer after the prune)], total steps)`` for ``layers`` layers of ``heads``."""
    out, step, h = [], cfg.first_prune, heads
    total_heads = layers * heads
    while h > cfg.min_per_layer:
        h = max(cfg.min_per_layer, h - cfg.per_layer)
        out.append((step, h))
        step += cfg.interval if layers * h > cfg.switch_fraction * total_heads else cfg.late_interval
    total = (out[-1][0] + cfg.late_interval) if out else cfg.first_prune
    return out, total


def row_schedule(cfg: RowPruneConfig, width: int) -> tuple[list[tuple[int, int]], int]:
    """``([(step, FFN width after the prune)], total steps)`` for an FFN of ``width`` rows."""
    out, step, f = [], cfg.first_prune, width
    while f > cfg.min_rows:
        f = max(cfg.min_rows, f - cfg.per_step)
        out.append((step, f))
        step += cfg.interval
    total = (out[-1][0] + cfg.interval) if out else cfg.first_prune
    return out, total


class PlateauTrigger:
    """EMA of the training loss and the paper's convergence test for weight pruning.

    ``update(step, loss)`` after every update; ``ready(step)`` is True once ``interval`` steps
    passed since the last prune and ``|ema(step) - ema(step - window)| < tolerance`` (or
    ``max_wait`` extra steps passed). The EMA starts at the first loss.
    """

    def __init__(self, cfg: WeightPruneConfig, start: int = 0):
        self.cfg = cfg
        self.value: float | None = None
        self.history: deque[tuple[int, float]] = deque()
        self.last_prune = start

    def update(self, step: int, loss: float) -> float:
        d = self.cfg.ema
        self.value = float(loss) if self.value is None else d * self.value + (1 - d) * float(loss)
        self.history.append((step, self.value))
        while len(self.history) > 1 and self.history[1][0] <= step - self.cfg.window:
            self.history.popleft()
        return self.value

    def change(self, step: int) -> float | None:
        """``|EMA now - EMA window steps ago|``, or None before ``window`` steps of history."""
        if self.value is None or not self.history or self.history[0][0] > step - self.cfg.window:
            return None
        return abs(self.value - self.history[0][1])

    def ready(self, step: int) -> bool:
        since = step - self.last_prune
        if since < self.cfg.interval:
            return False
        if self.cfg.max_wait is not None and since >= self.cfg.interval + self.cfg.max_wait:
            return True
        ch = self.change(step)
        return ch is not None and ch < self.cfg.tolerance

    def pruned(self, step: int) -> None:
        self.last_prune = step


# ============================================================================ fine-tuning losses


def distill_loss(pred: list[Tensor], target: list[Tensor], mask: Tensor | None = None) -> Tensor:
    """Mean over layers of ``L1/D - log σ(cos)`` between pruned and unpruned hidden states
    (DistilHuBERT eq. 1 with λ = 1), on valid frames.

    Args: ``pred``, ``target``: lists of ``[B, T, D]``; ``mask`` ``[B, T]`` bool (True = valid).
    """
    from s3kit.methods.distilhubert import layer_loss

    if len(pred) != len(target):
        raise ValueError(f"{len(pred)} predicted layers vs {len(target)} targets")
    return sum(layer_loss(p.float(), t.float(), 1.0, mask) for p, t in zip(pred, target)) / len(pred)


class DistillFromOriginal(nn.Module):
    """Fine-tuning loss when the model's own pretraining loss is unavailable: match every hidden
    state of the unpruned model (frozen copy) with the pruned one."""

    def __init__(self, upstream: nn.Module, teacher: nn.Module):
        super().__init__()
        self.model = upstream
        self.teacher = teacher.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def step(self, batch) -> dict[str, Tensor]:
        wavs, lengths = batch.wavs, batch.lengths
        with torch.no_grad():
            target = self.teacher(wavs, lengths)
        hidden = self.model(wavs, lengths)
        return {"loss": distill_loss(list(hidden.states[1:]), list(target.states[1:]), hidden.mask)}

    def validate(self, batch) -> dict[str, Tensor]:
        return self.step(batch)


class PruneFinetune(nn.Module):
    """The trainer method between prune steps: ``inner``'s loss (pretraining or distillation),
    weight masks re-applied after every update, and a checkpoint that is a pruned upstream
    (``checkpoint_state`` = the encoder, ``checkpoint_meta`` = :func:`pruned_meta`)."""

    def __init__(self, inner: nn.Module, masks: WeightMasks | None = None, step_offset: int = 0,
                 extra_meta: dict | None = None):
        super().__init__()
        self.inner = inner
        self.masks = masks
        self.step_offset = step_offset
        self.extra_meta = dict(extra_meta or {})

    def trainable_parameters(self):
        fn = getattr(self.inner, "trainable_parameters", None)
        params = fn() if fn is not None else self.inner.parameters()
        return [p for p in params if p.requires_grad]

    def train(self, mode: bool = True):
        super().train(mode)
        self.inner.train(mode)
        return self

    def step(self, batch):
        return self.inner.step(batch)

    def validate(self, batch):
        fn = getattr(self.inner, "validate", None)
        return fn(batch) if fn is not None else self.inner.step(batch)

    def on_step_end(self, step: int) -> None:
        if self.masks is not None:
            self.masks.apply()
        fn = getattr(self.inner, "on_step_end", None)
        if fn is not None:
            fn(self.step_offset + step)

    def checkpoint_state(self) -> dict[str, Tensor]:
        return encoder_of(self.inner.model).state_dict()

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        encoder_of(self.inner.model).load_state_dict(state)

    def checkpoint_meta(self) -> dict:
        return {**pruned_meta(self.inner.model), **self.extra_meta}


# ============================================================================ save / reload


def _family(encoder: nn.Module) -> str:
    from s3kit.models.melhubert import MelHubert

    return "melhubert" if isinstance(encoder, MelHubert) else "transformers"


def pruned_meta(model: nn.Module, normalize: bool | None = None) -> dict[str, Any]:
    """What rebuilds ``model``'s pruned encoder: family, unpruned config, kept heads per layer
    (original indices), FFN width per layer, stored weight sparsity."""
    from s3kit.config import to_dict

    enc = encoder_of(model)
    family = _family(enc)
    if family == "melhubert":
        base, model_type = to_dict(enc.config), "melhubert"
    else:
        base, model_type = json.loads(enc.config.to_json_string(use_diff=False)), enc.config.model_type
    if normalize is None:
        normalize = getattr(model, "normalize", None)
    return {"upstream": UPSTREAM_LOADER,
            "pruned": {"family": family, "model_type": model_type, "base_config": base,
                       "kept_heads": [kept_heads(p.attn) for p in layer_parts(enc)],
                       "ffn": ffn_widths(enc), "weight_sparsity": zero_fraction(enc),
                       "normalize": normalize}}


def save_pruned(directory: str | Path, model: nn.Module, **meta) -> Path:
    """Save the (pruned) encoder of ``model`` in s3kit format so that
    ``s3kit.load_upstream(directory)`` rebuilds it with its per-layer shapes."""
    from s3kit import checkpoint

    enc = encoder_of(model)
    info = pruned_meta(model)
    return checkpoint.save(directory, enc, info["pruned"]["base_config"], **{**info, **meta})


def _build_base(info: dict) -> nn.Module:
    if info["family"] == "melhubert":
        from s3kit.config import from_dict
        from s3kit.models.melhubert import MelHubert, MelHubertConfig

        return MelHubert(from_dict(MelHubertConfig, info["base_config"], where="pruned.base_config"))
    from transformers import AutoConfig, AutoModel

    cfg = dict(info["base_config"])
    cfg.pop("model_type", None)
    config = AutoConfig.for_model(info["model_type"], **cfg)
    config.layerdrop = 0.0
    if info["model_type"] == "wavlm":
        config._attn_implementation = "eager"  # WavLM refuses SDPA (DEPENDENCIES.md §1)
    return AutoModel.from_config(config)


def apply_structure(model: nn.Module, kept: list[list[int]], widths: list[int]) -> None:
    """Shrink an unpruned ``model`` to the recorded kept heads (original indices) and FFN widths
    (the weights are placeholders, to be overwritten by ``load_state_dict``)."""
    parts = layer_parts(model)
    if len(kept) != len(parts) or len(widths) != len(parts):
        raise ValueError(f"structure for {len(kept)} / {len(widths)} layers, the model has {len(parts)}")
    for i, p in enumerate(parts):
        H = num_heads(p.attn)
        bad = [h for h in kept[i] if not 0 <= h < H]
        if bad or not kept[i]:
            raise ValueError(f"layer {i}: kept heads {kept[i]} invalid for {H} heads")
        prune_heads(model, i, [h for h in range(H) if h not in set(kept[i])])
        if widths[i] < p.fc1.out_features:
            prune_rows(model, i, list(range(widths[i], p.fc1.out_features)))


def load_pruned(directory: str | Path) -> tuple[nn.Module, dict]:
    """``(encoder, meta)`` of a :func:`save_pruned` / prune-study checkpoint directory."""
    from s3kit import checkpoint

    state, meta = checkpoint.load(directory)
    info = meta.get("pruned")
    if not info:
        raise checkpoint.CheckpointError(f"{directory}: not an s3kit pruned checkpoint (config.json has no 'pruned' entry)")
    enc = _build_base(info)
    apply_structure(enc, info["kept_heads"], info["ffn"])
    checkpoint.check_compatible(enc, state, source=str(directory))
    enc.load_state_dict(state)
    return enc.eval(), meta


def as_upstream(model: nn.Module, name: str = "pruned", normalize: bool | None = None):
    """The encoder of ``model`` as an :class:`~s3kit.upstream.base.Upstream` (shares weights)."""
    enc = encoder_of(model)
    if _family(enc) == "melhubert":
        from s3kit.models.melhubert import MelHubertUpstream

        return MelHubertUpstream(enc, name=name)
    from s3kit.upstream.hf import HFUpstream

    return HFUpstream(enc, name=name, normalize=normalize)


def upstream_from_checkpoint(directory: str | Path, **options):
    """Rebuild a pruned upstream (eval mode): what ``s3kit.load_upstream(directory)`` calls."""
    enc, meta = load_pruned(directory)
    name = options.pop("name", Path(directory).name)
    if _family(enc) == "melhubert":
        if options:
            raise ValueError(f"{directory}: unknown options for a MelHuBERT upstream: {sorted(options)}")
        return as_upstream(enc, name).eval()
    options.setdefault("normalize", meta["pruned"].get("normalize"))
    from s3kit.upstream.hf import HFUpstream

    return HFUpstream(enc, name=name, **options).eval()


# ============================================================================ export to transformers


@torch.no_grad()
def restore_pruned(model: nn.Module) -> nn.Module:
    """An unpruned-shape copy of ``model``'s pruned transformers encoder with the removed parts
    restored as zeros, so that ``from_pretrained`` can load it and its outputs are unchanged.

    A removed head gets zero Q/K/V rows and biases and zero out-projection columns: its query and
    key are 0, its value is 0, so its context (and its share of the output) is exactly 0. WavLM's
    per-head gate constant is restored as 0 for such heads (it multiplies a zero context). A
    removed FFN row gets zero fc1 row and bias and a zero fc2 column, so it adds exactly 0. Kept
    heads return to their original index; kept rows fill the first ``F_i`` rows of the
    ``intermediate_size`` (an FFN is invariant to the order of its rows). Weight-pruned models
    keep their shapes and are copied as they are. Every tensor of the result is copied or set
    here; none is left at its random initialisation.
    """
    enc = encoder_of(model)
    if _family(enc) != "transformers":
        raise TypeError(f"{type(enc).__name__}: only transformers encoders have a transformers form "
                        f"(MelHuBERT's s3kit checkpoint is its export)")
    info = pruned_meta(enc)["pruned"]
    full = _build_base(info).to(next(enc.parameters()).device).eval()
    theirs, mine = enc.state_dict(), full.state_dict()
    done = set()
    for k, v in mine.items():
        if k in theirs and theirs[k].shape == v.shape:
            v.copy_(theirs[k])
            done.add(k)
    prefix = {id(m): n for n, m in full.named_modules()}
    for small, big in zip(layer_parts(enc), layer_parts(full)):
        E, kept = head_dim(small.attn), kept_heads(small.attn)
        rows = torch.tensor([h * E + e for h in kept for e in range(E)], dtype=torch.long)
        for name in ("q_proj", "k_proj", "v_proj"):
            src, dst = getattr(small.attn, name), getattr(big.attn, name)
            dst.weight.zero_()[rows] = src.weight
            if dst.bias is not None:
                dst.bias.zero_()[rows] = src.bias
            done.update(f"{prefix[id(dst)]}.{n}" for n, _ in dst.named_parameters())
        dst = big.attn.out_proj
        dst.weight.zero_()[:, rows] = small.attn.out_proj.weight
        if dst.bias is not None:
            dst.bias.copy_(small.attn.out_proj.bias)
        done.update(f"{prefix[id(dst)]}.{n}" for n, _ in dst.named_parameters())
        if hasattr(big.attn, "gru_rel_pos_const"):
            big.attn.gru_rel_pos_const.zero_()[:, kept] = small.attn.gru_rel_pos_const
            done.add(f"{prefix[id(big.attn)]}.gru_rel_pos_const")
        width = small.fc1.out_features
        big.fc1.weight.zero_()[:width] = small.fc1.weight
        big.fc1.bias.zero_()[:width] = small.fc1.bias
        big.fc2.weight.zero_()[:, :width] = small.fc2.weight
        big.fc2.bias.copy_(small.fc2.bias)
        done.update(f"{prefix[id(lin)]}.{n}" for lin in (big.fc1, big.fc2) for n, _ in lin.named_parameters())
    missed = sorted(set(mine) - done)
    if missed:
        raise ValueError(f"restore_pruned: tensors with no pruned counterpart: {missed[:5]}")
    return full


def export_transformers(directory: str | Path, out: str | Path) -> Path:
    """Write a pruned checkpoint (:func:`save_pruned`, a compression-study row) as a transformers
    directory that ``AutoModel.from_pretrained(out)`` loads: removed heads and FFN rows restored as
    zeros (:func:`restore_pruned`), same outputs. The file has the unpruned size and runs at the
    unpruned speed; the pruned model's speed-up needs ``s3kit.load_upstream(directory)``."""
    from transformers.utils import logging as hf_logging

    from s3kit.checkpoint import CheckpointError

    enc, meta = load_pruned(directory)
    if _family(enc) != "transformers":
        raise CheckpointError(f"{directory}: a pruned MelHuBERT has no transformers class; the s3kit checkpoint is "
                              f"the export (load it with s3kit.load_upstream)")
    hf_logging.disable_progress_bar()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    restore_pruned(enc).save_pretrained(out)
    return out


__all__ = [
    "SPARSITY_SCHEDULE", "DistillFromOriginal", "HeadPruneConfig", "LayerParts", "PlateauTrigger", "PruneFinetune",
    "RowPruneConfig", "WeightMasks", "WeightPruneConfig", "apply_structure", "as_upstream", "distill_loss",
    "encoder_of", "export_transformers", "ffn_widths", "global_magnitude_masks", "head_l1_scores", "head_schedule",
    "head_scores", "heads_per_layer", "kept_heads", "layer_parts", "load_pruned", "prune_heads", "prune_lowest_heads",
    "prune_lowest_rows", "prune_rows", "pruned_meta", "restore_pruned", "row_l1_scores", "row_schedule",
    "row_scores", "save_pruned", "sparsity_levels", "upstream_from_checkpoint", "zero_fraction",
]
