"""Hugging Face ``transformers`` encoders (HuBERT, wav2vec 2.0, WavLM) as s3kit upstreams.

Dimension legend: ``B`` batch, ``S`` samples, ``C`` CNN channels, ``T`` frames, ``D`` width.

Padding. Base HuBERT / wav2vec 2.0 (``feat_extract_norm="group"``) normalise each CNN channel
over the *whole* input, so zero padding changes every frame of a padded item; for those the
CNN runs on each utterance's own samples and only its outputs are padded. Large models
(``feat_extract_norm="layer"``) normalise per frame, so the CNN runs batched. The transformer
always gets a frame-level attention mask. Either way a padded batch gives the states of
one-by-one runs (tested to 1e-4).
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


class HFUpstream(Upstream):
    """A transformers ``HubertModel`` / ``Wav2Vec2Model`` / ``WavLMModel`` behind the upstream protocol.

    Args:
        model: the transformers encoder (kept as ``self.model``).
        normalize: zero-mean / unit-variance per utterance before the CNN (what
            ``Wav2Vec2FeatureExtractor(do_normalize=True)`` does); defaults to the model's
            ``feat_extract_norm == "layer"`` convention (Large models were trained normalised).
        per_utterance_cnn: run the CNN on each utterance's own samples; default True for
            group-norm CNNs (see module docstring).
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

    def __init__(self, model, name: str = "hf", normalize: bool | None = None, per_utterance_cnn: bool | None = None,
                 feature_grad_mult: float = 1.0, spec_augment: bool = False):
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
        self.per_utterance_cnn = group_norm if per_utterance_cnn is None else per_utterance_cnn
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
        """CNN features ``[B, T, C]`` (padded frames zero when run per utterance), with the
        gradient into the CNN scaled by ``feature_grad_mult``."""
        if self.feature_grad_mult == 0.0:
            with torch.no_grad():
                return self._cnn(wavs, lengths)
        feats = self._cnn(wavs, lengths)
        if self.feature_grad_mult != 1.0 and feats.requires_grad:
            feats = GradMultiply.apply(feats, self.feature_grad_mult)
        return feats

    def _cnn(self, wavs: Tensor, lengths: Tensor) -> Tensor:
        fe = self.model.feature_extractor
        if not self.per_utterance_cnn:
            return fe(wavs).transpose(1, 2)
        outs = [fe(wavs[i : i + 1, : int(n)]).transpose(1, 2)[0] for i, n in enumerate(lengths.tolist())]
        return torch.nn.utils.rnn.pad_sequence(outs, batch_first=True)

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
