"""Hugging Face ``transformers`` encoders (HuBERT, wav2vec 2.0, WavLM) as s3kit upstreams.

Dimension legend: ``B`` batch, ``S`` samples, ``C`` CNN channels, ``T`` frames, ``D`` width.

Padding. Base HuBERT / wav2vec 2.0 (``feat_extract_norm="group"``) follow the first conv layer
with a GroupNorm over time, so in transformers zero padding changes every frame of a padded item.
Here that norm takes its statistics over each utterance's valid frames only
(:func:`masked_group_norm`); the later conv layers have no norm over time, and a valid output
frame of a strided convolution only reads valid input frames, so the whole CNN runs batched and
still gives every utterance its one-by-one features. Large models (``feat_extract_norm="layer"``)
normalise per frame and need nothing special. The transformer always gets a frame-level attention
mask. Either way a padded batch gives the states of one-by-one runs (tested to 1e-4).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from s3kit.upstream.base import Hidden, Upstream, full_lengths

SUPPORTED = ("hubert", "wav2vec2", "wavlm")


def _load_model(name_or_path: str | Path, attn_implementation: str | None = None):
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        config = AutoConfig.from_pretrained(str(name_or_path))
    except OSError as e:
        raise FileNotFoundError(
            f"{name_or_path}: not a local transformers directory and not a cached hub id "
            f"(no network here: download it elsewhere and pass the directory) [{e}]"
        ) from e
    if config.model_type not in SUPPORTED:
        raise ValueError(f"{name_or_path}: model_type '{config.model_type}' is not one of {SUPPORTED}")
    if config.model_type == "wavlm":
        kwargs["attn_implementation"] = "eager"  # WavLM refuses SDPA (DEPENDENCIES.md §1)
    # The bare encoder (HubertModel / Wav2Vec2Model / WavLMModel), also from *ForPreTraining / *ForCTC dirs.
    model = AutoModel.from_pretrained(str(name_or_path), config=config, **kwargs)
    return model


class GradMultiply(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


def conv_out_lengths(lengths: Tensor, kernel: int, stride: int) -> Tensor:
    """Output frames of an unpadded ``Conv1d(kernel, stride)`` over ``lengths`` inputs (at least 0)."""
    return torch.div(lengths - kernel, stride, rounding_mode="floor").add(1).clamp_min(0)


def masked_group_norm(x: Tensor, lengths: Tensor, norm: torch.nn.GroupNorm) -> Tensor:
    """``norm(x)`` with each item's statistics taken over its first ``lengths[b]`` frames only.

    ``x [B, C, T]``; frames past ``lengths[b]`` get the item's affine map too (their values are
    defined but belong to no utterance). Item ``b`` equals ``norm(x[b:b+1, :, :lengths[b]])`` on
    its valid frames. Statistics are computed in float32 (what GroupNorm does under autocast).
    """
    B, C, T = x.shape
    G = norm.num_groups
    n = lengths.clamp(1, T).tolist()
    if all(v == T for v in n):
        return norm(x)
    if G == C:  # transformers' layout: one group per channel, no copy of the slice
        stats = [torch.var_mean(x[b, :, : n[b]].float(), dim=1, unbiased=False) for b in range(B)]
    else:
        stats = [torch.var_mean(x[b, :, : n[b]].float().reshape(G, -1), dim=1, unbiased=False) for b in range(B)]
    var = torch.stack([v for v, _ in stats]).repeat_interleave(C // G, dim=1)  # (B, C)
    mean = torch.stack([m for _, m in stats]).repeat_interleave(C // G, dim=1)
    return _normalize_with(x, mean, var, norm)


def _normalize_with(x: Tensor, mean: Tensor, var: Tensor, norm: torch.nn.GroupNorm) -> Tensor:
    """``norm``'s affine map with given per-item channel statistics ``mean, var [B, C]``, one pass."""
    rstd = torch.rsqrt(var + norm.eps)
    scale = rstd * norm.weight.float() if norm.affine else rstd
    shift = (norm.bias.float() if norm.affine else 0.0) - mean * scale
    return torch.addcmul(shift[:, :, None], x, scale[:, :, None])


def conv_group_norm(conv: torch.nn.Conv1d, norm: torch.nn.GroupNorm, wavs: Tensor, lengths: Tensor) -> Tensor:
    """``masked_group_norm(conv(wavs), valid frames, norm)``, with the statistics taken from the input.

    The conv is linear, so over an item's valid frames the mean of output channel ``c`` is
    ``w_c . mu`` (+ bias) and its variance ``w_c^T Sigma w_c``, where ``mu`` / ``Sigma`` are the
    mean / covariance of the input patches (``C_in x kernel`` values: 10 for the waveform). Those
    are cheap next to the 512-channel output, in float64, and differentiable in the weights; the
    output is then normalised in one pass instead of GroupNorm's two. Exact (to float rounding);
    tested against GroupNorm per item.
    """
    x = wavs[:, None] if wavs.dim() == 2 else wavs  # (B, C_in, S)
    y = conv(x)  # (B, C, T)
    B, C, T = y.shape
    k, s = conv.kernel_size[0], conv.stride[0]
    n = conv_out_lengths(lengths, k, s).clamp(1, T)
    patches = x.detach().double().unfold(-1, k, s)[:, :, :T]  # (B, C_in, T, k)
    patches = patches.permute(0, 2, 1, 3).reshape(B, T, -1)  # (B, T, K)
    valid = (torch.arange(T, device=x.device)[None] < n[:, None]).double()[:, :, None]
    cnt = n.double()[:, None]
    mu = (patches * valid).sum(1) / cnt  # (B, K)
    centred = (patches - mu[:, None]) * valid
    sigma = centred.transpose(1, 2) @ centred / cnt[:, :, None]  # (B, K, K)
    w = conv.weight.double().reshape(C, -1)  # (C, K)
    mean = mu @ w.T  # (B, C)
    if conv.bias is not None:
        mean = mean + conv.bias.double()
    var = torch.einsum("ck,bkl,cl->bc", w, sigma, w).clamp_min(0)  # E over valid frames of (y - mean)^2
    G = norm.num_groups
    if G != C:  # pool channel moments into group moments
        gm = mean.view(B, G, -1)
        gmean = gm.mean(-1)
        gvar = (var.view(B, G, -1) + gm**2).mean(-1) - gmean**2
        mean, var = gmean.repeat_interleave(C // G, 1), gvar.repeat_interleave(C // G, 1)
    return _normalize_with(y, mean.float(), var.float(), norm)


def feature_encoder(fe, wavs: Tensor, lengths: Tensor) -> Tensor:
    """A transformers ``*FeatureEncoder`` over a zero-padded batch ``wavs [B, S]`` -> ``[B, C, T]``,
    with the first layer's GroupNorm (group-norm CNNs) masked to each item's valid frames
    (:func:`conv_group_norm`; a batch without padding runs transformers' own layers)."""
    x = wavs[:, None]
    for i, layer in enumerate(fe.conv_layers):
        norm = getattr(layer, "layer_norm", None)
        if i == 0 and isinstance(norm, torch.nn.GroupNorm) and bool((lengths != wavs.shape[-1]).any()):
            x = layer.activation(conv_group_norm(layer.conv, norm, x, lengths))
        else:
            x = layer(x)
    return x


class HFUpstream(Upstream):
    """A transformers ``HubertModel`` / ``Wav2Vec2Model`` / ``WavLMModel`` behind the upstream protocol.

    Args:
        model: the transformers encoder (kept as ``self.model``).
        normalize: zero-mean / unit-variance per utterance before the CNN (what
            ``Wav2Vec2FeatureExtractor(do_normalize=True)`` does); defaults to the model's
            ``feat_extract_norm == "layer"`` convention (Large models were trained normalised).
        feature_grad_mult: scale of the gradient that reaches the CNN (fairseq / s3prl
            ``feature_grad_mult``): 1 trains it normally, 0 runs it without autograd (frozen,
            and its backward pass is skipped), values in between scale its gradient.
        spec_augment: in train mode, apply the model config's own SpecAugment (``mask_time_prob``,
            ``mask_feature_prob``, when ``apply_spec_augment``) to the projected features. Off by
            default: a released config carries the fine-tuning recipe's masking (HuBERT /
            wav2vec 2.0 Base: ``mask_time_prob`` 0.05), which a method that trains the encoder
            (distillation, pruning fine-tuning) must not apply to its input unasked. Masks passed
            explicitly to :meth:`forward` (``mask_time_indices``) are applied either way.
    """

    def __init__(self, model, name: str = "hf", normalize: bool | None = None, feature_grad_mult: float = 1.0,
                 spec_augment: bool = False):
        super().__init__()
        self.spec_augment = bool(spec_augment)
        if feature_grad_mult < 0:
            raise ValueError(f"feature_grad_mult must be >= 0, got {feature_grad_mult}")
        self.feature_grad_mult = float(feature_grad_mult)
        self.model = model
        self.name = name
        cfg = model.config
        self.model_type = cfg.model_type
        group_norm = getattr(cfg, "feat_extract_norm", "group") == "group"
        self.normalize = (not group_norm) if normalize is None else normalize
        stride = 1
        for s in cfg.conv_stride:
            stride *= s
        self.stride = stride  # 320 samples -> 20 ms frames for every released model
        self.frame_rate = 16_000 / stride
        self.hidden_sizes = [cfg.hidden_size] * (cfg.num_hidden_layers + 1)
        # Disable training-time stochasticity that would break "same input -> same states".
        cfg.layerdrop = 0.0

    def num_frames(self, lengths: Tensor) -> Tensor:
        return self.model._get_feat_extract_output_lengths(lengths).to(torch.long)

    def _normalize(self, wavs: Tensor, lengths: Tensor) -> Tensor:
        mask = torch.arange(wavs.shape[1], device=wavs.device)[None] < lengths[:, None]
        n = lengths.clamp_min(1).to(wavs.dtype)[:, None]
        mean = (wavs * mask).sum(1, keepdim=True) / n
        var = (((wavs - mean) * mask) ** 2).sum(1, keepdim=True) / n
        return ((wavs - mean) / torch.sqrt(var + 1e-7)) * mask

    def cnn(self, wavs: Tensor, lengths: Tensor) -> Tensor:
        """CNN features ``[B, T, C]`` (frames past each item's length are undefined), with the
        gradient into the CNN scaled by ``feature_grad_mult``."""
        if self.feature_grad_mult == 0.0:
            with torch.no_grad():
                return self._cnn(wavs, lengths)
        feats = self._cnn(wavs, lengths)
        if self.feature_grad_mult != 1.0 and feats.requires_grad:
            feats = GradMultiply.apply(feats, self.feature_grad_mult)
        return feats

    def _cnn(self, wavs: Tensor, lengths: Tensor) -> Tensor:
        return feature_encoder(self.model.feature_extractor, wavs, lengths).transpose(1, 2)

    def forward(
        self,
        wavs: Tensor,
        lengths: Tensor | None = None,
        mask_time_indices: Tensor | None = None,
        max_layer: int | None = None,
    ) -> Hidden:
        """``wavs [B, S]``, ``lengths [B]`` -> :class:`Hidden` with ``num_layers`` states, or only
        ``states[0..max_layer]`` when ``max_layer`` is given (later layers are not computed)."""
        lengths = full_lengths(wavs, lengths)
        if self.normalize:
            wavs = self._normalize(wavs, lengths)
        m = self.model
        feats = self.cnn(wavs, lengths)  # (B, T, C)
        frame_lengths = self.num_frames(lengths)
        T = feats.shape[1]
        frame_lengths = frame_lengths.clamp_max(T)
        attn = torch.arange(T, device=wavs.device)[None] < frame_lengths[:, None]  # (B, T) bool
        proj = m.feature_projection(feats)
        hidden = proj[0] if isinstance(proj, tuple) else proj  # wav2vec2/WavLM also return the normed features
        if self.spec_augment and m.training:
            hidden = m._mask_hidden_states(hidden, mask_time_indices=mask_time_indices)
        elif mask_time_indices is not None:  # the given frames only, no config-drawn masks
            if getattr(m, "masked_spec_embed", None) is None:
                raise ValueError(f"{self.name}: mask_time_indices given, but the model has no mask embedding "
                                 f"(its config has mask_time_prob = mask_feature_prob = 0)")
            embed = m.masked_spec_embed.to(hidden.dtype)
            hidden = torch.where(mask_time_indices.to(torch.bool)[..., None], embed, hidden)
        states = self._encode(hidden, attn, max_layer)
        return Hidden(states=states, lengths=frame_lengths, frame_rate=self.frame_rate)

    def _encode(self, hidden: Tensor, attn: Tensor, max_layer: int | None = None) -> list[Tensor]:
        """Run the transformers encoder and collect the input of every layer plus the output of the
        last one: what ``output_hidden_states`` returns in transformers 5 (which records them with
        hooks on the top-level model only, so calling ``encoder`` directly needs our own). For
        pre-LN ("stable layer norm") models the final encoder LayerNorm is therefore not applied
        to ``states[-1]``, as in transformers."""
        encoder = self.model.encoder
        all_layers = encoder.layers
        L = len(all_layers)
        if max_layer is not None and not 0 <= max_layer <= L:
            raise ValueError(f"max_layer={max_layer} outside 0..{L}")
        run = L if max_layer is None else max(max_layer, 1)
        encoder.layers = all_layers[:run]
        captured: list[Tensor] = []

        def grab_input(_m, args, kwargs):
            captured.append(args[0] if args else kwargs["hidden_states"])

        def grab_output(_m, _args, output):
            captured.append(output[0] if isinstance(output, tuple) else output)  # WavLM also returns position bias

        hooks = [layer.register_forward_pre_hook(grab_input, with_kwargs=True) for layer in encoder.layers]
        hooks.append(encoder.layers[-1].register_forward_hook(grab_output))
        try:
            encoder(hidden, attention_mask=attn)
        finally:
            for h in hooks:
                h.remove()
            encoder.layers = all_layers
        return captured if max_layer is None else captured[: max_layer + 1]


def load_hf(name_or_path: str | Path, **options) -> HFUpstream:
    """Load a transformers encoder by hub id or local directory as an :class:`HFUpstream`."""
    attn = options.pop("attn_implementation", None)
    model = _load_model(name_or_path, attn)
    model.eval()
    return HFUpstream(model, name=Path(str(name_or_path)).name or str(name_or_path), **options)
