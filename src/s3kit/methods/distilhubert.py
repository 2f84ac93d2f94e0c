"""DistilHuBERT (Chang et al., ICASSP 2022): layer-wise distillation with prediction heads.

Dimension legend: ``B`` batch, ``S`` samples, ``T`` frames, ``D`` width, ``N`` heads (targets).

The student is the teacher's own transformers class (``HubertModel`` / ``Wav2Vec2Model`` /
``WavLMModel``) with ``num_hidden_layers = layers``, initialised from the teacher's CNN, feature
projection, positional convolution, encoder layer norm and first ``layers`` transformer layers
(§2, "Parameter Initialization"), so export to a plain transformers directory is a copy.
An s3kit MelHuBERT teacher (:class:`~s3kit.models.melhubert.MelHubertUpstream`, as the bias paper
§3.3 distils) gets a :class:`~s3kit.models.melhubert.MelHubert` student with ``num_layers =
layers``, initialised the same way: fbank front end (with its normalisation statistics), input
projection, positional convolution, its layer norm and the first ``layers`` layers; its checkpoint
is the export (there is no transformers class to export to).
Prediction heads ``Linear(D, N*D) -> GELU -> SplitLinear(D -> D_teacher per head)`` map the last
student layer to each target teacher layer (s3prl's ``expand-last`` heads, REFERENCE-NOTES.md §F).
The loss per head is eq. (1), ``L1/D - λ log σ(cos)``, averaged over frames; heads are averaged
(s3prl; the paper's Fig. 1 writes a sum, available as ``head_reduction="sum"``). The teacher runs
in eval mode, fp32, no grad, on the unpadded utterances (:class:`~s3kit.upstream.hf.HFUpstream`
runs group-norm CNNs per utterance), or its features come from the teacher-feature cache.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s3kit.models.melhubert import FRAME_HOP, MelHubert, MelHubertForPretraining, MelHubertUpstream
from s3kit.train.trainer import TrainConfig
from s3kit.upstream.base import Hidden, Upstream
from s3kit.upstream.hf import HFUpstream

UPSTREAM_LOADER = "s3kit.methods.distilhubert:upstream_from_checkpoint"
MELHUBERT = "melhubert"  # meta["student"]["model_type"] of a MelHuBERT student
CROP_SAMPLES = 250_000  # s3prl distiller `task.sequence_length` (15.6 s), REFERENCE-NOTES.md §F


@dataclass(frozen=True)
class DistilConfig:
    """DistilHuBERT options; defaults are the paper's (§3.1) and s3prl's recipe where it is silent.

    targets: teacher hidden-state indices to predict (``states[i]`` = output of layer i).
    pred_last_only: ablation "predict last layer" (targets become the teacher's last layer).
    hidden_layers_no_heads: ablation "predict w/ hidden": student ``states[0..N-1]`` (CNN output
        and the transformer layers) predict the targets directly; needs ``len(targets) == layers + 1``.
    keep_heads: ablation "w/ prediction heads": the rebuilt upstream appends the head outputs.
    crop_samples: random, frame-aligned training crop of longer utterances (None: no crop).
    batch_size / max_duration: utterances and seconds of audio per batch (paper: 24 utterances).
    feature_grad_mult: scale of the gradient into the student's CNN (s3prl's recipe: 0.1; the paper
        is silent); 0 freezes the CNN and skips its backward pass. MelHuBERT students have no CNN.
    spec_augment: mask the student's input in training with the teacher config's SpecAugment
        (transformers students only). DistilHuBERT does not (§2; s3prl's distiller has no
        masking), so it is off unless a recipe asks for it; the teacher never sees masked input.
    """

    layers: int = 2
    targets: tuple[int, ...] = (4, 8, 12)
    cos_weight: float = 1.0  # λ in eq. (1)
    head_reduction: Literal["mean", "sum"] = "mean"
    pred_last_only: bool = False
    hidden_layers_no_heads: bool = False
    keep_heads: bool = False
    init_from_teacher: bool = True
    feature_grad_mult: float = 0.1
    spec_augment: bool = False
    crop_samples: int | None = CROP_SAMPLES
    batch_size: int = 24
    max_duration: float = 400.0
    cache: bool = True  # teacher-feature cache (the teacher's input is never augmented here)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/distilhubert"))

    def __post_init__(self):
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if self.feature_grad_mult < 0:
            raise ValueError(f"feature_grad_mult must be >= 0 (0 freezes the CNN), got {self.feature_grad_mult}")
        if not self.targets and not self.pred_last_only:
            raise ValueError("targets is empty: give teacher layer indices such as [4, 8, 12]")
        if self.pred_last_only and self.hidden_layers_no_heads:
            raise ValueError("pred_last_only and hidden_layers_no_heads are different ablations; pick one")

    def resolve_targets(self, teacher_layers: int) -> tuple[int, ...]:
        """Target indices for a teacher with ``teacher_layers`` transformer layers (checked)."""
        targets = (teacher_layers,) if self.pred_last_only else tuple(self.targets)
        bad = [t for t in targets if not 0 <= t <= teacher_layers]
        if bad:
            raise ValueError(f"targets {bad} out of range: the teacher has states 0..{teacher_layers}")
        if self.hidden_layers_no_heads and len(targets) != self.layers + 1:
            raise ValueError(f"hidden_layers_no_heads predicts with the CNN output and {self.layers} layers, "
                             f"so it needs {self.layers + 1} targets, got {list(targets)}")
        return targets


# ----------------------------------------------------------------------------- loss (eq. 1)


def layer_loss(pred: Tensor, target: Tensor, cos_weight: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Eq. (1) for one target layer, averaged over batch and valid frames.

    ``mean_{b,t} [ (1/D) ||h_bt - ĥ_bt||_1 - λ log σ(cos(h_bt, ĥ_bt)) ]``

    Args:
        pred, target: ``[B, T, D]``.
        cos_weight: λ.
        mask: optional ``[B, T]`` bool, True on valid (unpadded) frames.
    Returns: a scalar.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    l1 = (pred - target).abs().mean(-1)  # (B, T)
    sim = -F.logsigmoid(F.cosine_similarity(pred, target, dim=-1))  # (B, T)
    per_frame = l1 + cos_weight * sim
    if mask is None:
        return per_frame.mean()
    mask = mask.to(per_frame.dtype)
    return (per_frame * mask).sum() / mask.sum().clamp_min(1.0)


# ----------------------------------------------------------------------------- student


class PredictionHeads(nn.Module):
    """``Linear(D, N*D) -> GELU -> SplitLinear``: N per-head ``D -> D_out`` maps in one einsum."""

    def __init__(self, dim: int, num_heads: int, dim_out: int | None = None):
        super().__init__()
        dim_out = dim if dim_out is None else dim_out
        self.num_heads, self.dim = num_heads, dim
        self.expand = nn.Linear(dim, dim * num_heads)
        bound = 1.0 / math.sqrt(dim)  # nn.Linear's default init range
        self.weight = nn.Parameter(torch.empty(num_heads, dim, dim_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_heads, dim_out).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, T, D]`` -> ``[N, B, T, D_out]``."""
        B, T, _ = x.shape
        h = F.gelu(self.expand(x)).view(B, T, self.num_heads, self.dim)  # (B, T, N, D)
        return torch.einsum("btnd,nde->nbte", h, self.weight) + self.bias[:, None, None, :]


def build_student(teacher_model: nn.Module, layers: int = 2, init_from_teacher: bool = True,
                  spec_augment: bool = False) -> nn.Module:
    """A transformers model of the teacher's class and config with ``layers`` transformer layers,
    optionally initialised from the teacher (every tensor whose name and shape exist in both:
    CNN, feature projection, pos-conv, encoder layer norm, ``encoder.layers.0..layers-1``).
    Its config keeps the teacher's SpecAugment settings only with ``spec_augment``.
    A :class:`MelHubert` teacher gives a :class:`MelHubert` student (:func:`build_melhubert_student`)."""
    if isinstance(teacher_model, MelHubert):
        return build_melhubert_student(teacher_model, layers, init_from_teacher)
    config = copy.deepcopy(teacher_model.config)
    if layers > config.num_hidden_layers:
        raise ValueError(f"student layers={layers} exceed the teacher's {config.num_hidden_layers}")
    config.num_hidden_layers = layers
    config.layerdrop = 0.0  # DDP needs every layer every step (DEPENDENCIES.md §4)
    if not spec_augment:
        config.apply_spec_augment = False  # DistilHuBERT does not mask the student's input
    student = type(teacher_model)(config)
    if init_from_teacher:
        own = student.state_dict()
        copied = {k: v for k, v in teacher_model.state_dict().items() if k in own and own[k].shape == v.shape}
        missing = sorted(set(own) - set(copied))
        if missing:
            raise ValueError(f"student tensors with no teacher counterpart: {missing[:5]}")
        student.load_state_dict(copied)
    if getattr(student, "masked_spec_embed", None) is not None and not spec_augment:
        student.masked_spec_embed.requires_grad_(False)  # unused without masking (DDP needs grads for all)
    return student


def build_melhubert_student(teacher: MelHubert, layers: int = 2, init_from_teacher: bool = True) -> MelHubert:
    """A :class:`MelHubert` of the teacher's config with ``num_layers = layers``, optionally
    initialised from the teacher: front end, ``pre_extract_proj``, ``pos_conv``, ``norm`` and
    ``layers.0..layers-1`` (every student tensor, copied by name; a teacher whose shapes differ,
    e.g. a pruned one, is refused). The front end's fbank mean / std are dataset statistics, not
    learned weights, so they are copied even with ``init_from_teacher=False`` (the random-init
    ablation randomises what is learned)."""
    cfg = teacher.config
    if layers > cfg.num_layers:
        raise ValueError(f"student layers={layers} exceed the teacher's {cfg.num_layers}")
    student = MelHubert(replace(cfg, num_layers=layers))
    own, theirs = student.state_dict(), teacher.state_dict()
    keys = list(own) if init_from_teacher else [k for k in own if k.startswith("front_end.")]
    bad = [k for k in keys if k not in theirs or theirs[k].shape != own[k].shape]
    if bad:
        raise ValueError(f"student tensors with no teacher counterpart of the same shape (a pruned teacher?): {bad[:5]}")
    student.load_state_dict({k: theirs[k] for k in keys}, strict=init_from_teacher)
    return student


def as_teacher(teacher: nn.Module) -> Upstream:
    """The teacher upstream: an :class:`HFUpstream` or :class:`MelHubertUpstream` as given, a bare
    :class:`MelHubert` (or MelHuBERT pretraining model) wrapped in a :class:`MelHubertUpstream`."""
    if isinstance(teacher, (HFUpstream, MelHubertUpstream)):
        return teacher
    if isinstance(teacher, MelHubertForPretraining):
        return teacher.upstream()
    if isinstance(teacher, MelHubert):
        return MelHubertUpstream(teacher)
    raise TypeError(f"the teacher must be a transformers HuBERT / wav2vec 2.0 / WavLM upstream or an s3kit MelHuBERT, "
                    f"got {type(teacher).__name__}")


def _net(upstream: Upstream) -> nn.Module:
    """The model inside a teacher / student upstream (transformers model or :class:`MelHubert`)."""
    return upstream.encoder if isinstance(upstream, MelHubertUpstream) else upstream.model


def _depth(model: nn.Module) -> int:
    return model.config.num_layers if isinstance(model, MelHubert) else model.config.num_hidden_layers


def _as_upstream(model: nn.Module, name: str) -> Upstream:
    return MelHubertUpstream(model, name=name) if isinstance(model, MelHubert) else HFUpstream(model, name=name)


class DistilStudent(Upstream):
    """The distilled student as an upstream: the transformers (or MelHuBERT) student, plus the
    heads' outputs as extra states when ``keep_heads`` (ablation "w/ prediction heads")."""

    def __init__(self, model: nn.Module, heads: PredictionHeads | None = None, name: str = "distilhubert"):
        super().__init__()
        self.body = _as_upstream(model, name)
        self.heads = heads
        self.name = name
        self.frame_rate = self.body.frame_rate
        extra = [heads.weight.shape[-1]] * heads.num_heads if heads is not None else []
        self.hidden_sizes = list(self.body.hidden_sizes) + extra

    def num_frames(self, lengths: Tensor) -> Tensor:
        return self.body.num_frames(lengths)

    def forward(self, wavs: Tensor, lengths: Tensor | None = None) -> Hidden:
        hidden = self.body(wavs, lengths)
        if self.heads is None:
            return hidden
        preds = self.heads(hidden.states[-1])
        return Hidden(states=list(hidden.states) + list(preds.unbind(0)), lengths=hidden.lengths,
                      frame_rate=hidden.frame_rate)


# ----------------------------------------------------------------------------- the method


def _batch_parts(batch) -> tuple[Tensor, Tensor, list[str] | None]:
    if hasattr(batch, "wavs"):
        return batch.wavs, batch.lengths, list(getattr(batch, "ids", None) or []) or None
    if isinstance(batch, dict):
        return batch["wavs"], batch["lengths"], batch.get("ids")
    wavs, lengths = batch[0], batch[1]
    return wavs, lengths, (batch[2] if len(batch) > 2 else None)


class DistilHuBERT(nn.Module):
    """The training method: ``step(batch) -> {"loss", "l1_<k>", "cos_<k>"}`` for the trainer.

    Args:
        teacher: the teacher as an :class:`HFUpstream` or an s3kit :class:`MelHubertUpstream` /
            :class:`MelHubert` (frozen here); the student is of the same kind.
        cfg: :class:`DistilConfig`.
        cache: an optional :class:`~s3kit.train.cache.TeacherCache` holding ``targets``.
    """

    def __init__(self, teacher: Upstream, cfg: DistilConfig = DistilConfig(), cache=None):
        super().__init__()
        teacher = as_teacher(teacher)
        self.cfg = cfg
        self.teacher = teacher.eval().requires_grad_(False)
        teacher_net = _net(teacher)
        if isinstance(teacher, HFUpstream):
            teacher_net.config.layerdrop = 0.0
        self.targets = cfg.resolve_targets(_depth(teacher_net))
        student = build_student(teacher_net, cfg.layers, cfg.init_from_teacher, cfg.spec_augment)
        self.student = _as_upstream(student, "distilhubert")
        if isinstance(self.student, HFUpstream):
            self.student.spec_augment = cfg.spec_augment  # the student's input is masked only when asked
            self.student.feature_grad_mult = cfg.feature_grad_mult
            if cfg.feature_grad_mult == 0:
                self.student.model.feature_extractor.requires_grad_(False)
        dim = _net(self.student).config.hidden_size
        dim_t = teacher_net.config.hidden_size
        self.teacher_dim = dim_t
        if cfg.hidden_layers_no_heads:
            if dim != dim_t:
                raise ValueError("hidden_layers_no_heads needs student width == teacher width")
            self.heads = None
        else:
            self.heads = PredictionHeads(dim, len(self.targets), dim_t)
        if cache is not None and list(cache.layers) != list(self.targets):
            raise ValueError(f"teacher cache holds layers {cache.layers}, the method needs {list(self.targets)}")
        self.cache = cache

    # the teacher stays in eval mode whatever the trainer asks
    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def trainable_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("teacher.") and p.requires_grad]

    def predict(self, wavs: Tensor, lengths: Tensor) -> tuple[Tensor, Hidden]:
        """Student predictions ``[N, B, T, D_t]`` and its :class:`Hidden`."""
        hidden = self.student(wavs, lengths)
        if self.heads is None:
            preds = torch.stack(hidden.states[: len(self.targets)], 0)
        else:
            preds = self.heads(hidden.states[-1])
        return preds, hidden

    def _crop(self, wavs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Frame-aligned random crop of items longer than ``crop_samples``: (wavs, lengths,
        frame offsets [B]); the start is a multiple of the CNN stride so cached frames line up."""
        limit = self.cfg.crop_samples
        if limit is None or int(lengths.max()) <= limit:
            return wavs, lengths, torch.zeros_like(lengths)
        stride = FRAME_HOP if isinstance(self.student, MelHubertUpstream) else self.student.stride
        starts = torch.zeros_like(lengths)
        for b, n in enumerate(lengths.tolist()):
            if n > limit:
                starts[b] = int(torch.randint(0, (n - limit) // stride + 1, ())) * stride
        new_len = lengths.clamp_max(limit)
        idx = starts[:, None] + torch.arange(limit, device=wavs.device)[None]
        out = torch.gather(wavs, 1, idx.clamp_max(wavs.shape[1] - 1)) * (torch.arange(limit, device=wavs.device)[None] < new_len[:, None])
        return out, new_len, starts // stride

    def teacher_targets(self, wavs: Tensor, lengths: Tensor, ids, frame_offsets: Tensor, T: int) -> Tensor:
        """Teacher states ``[N, B, T, D_t]`` (fp32) from the cache when it holds every id, else live."""
        if self.cache is not None and ids is not None and all(i in self.cache for i in ids):
            n_frames = self.student.num_frames(lengths).tolist()
            out = wavs.new_zeros(len(self.targets), len(ids), T, self.teacher_dim)
            for b, feats in enumerate(self.cache.get(ids)):
                f0, n = int(frame_offsets[b]), min(int(n_frames[b]), T)
                seg = torch.from_numpy(feats[f0 : f0 + n].astype("float32"))  # (n, N, D)
                if seg.shape[0] != n:
                    raise ValueError(f"{ids[b]}: cache has {feats.shape[0]} frames, the crop needs {f0 + n}")
                out[:, b, :n] = seg.to(out.device).transpose(0, 1)
            return out
        with torch.no_grad(), torch.autocast(wavs.device.type, enabled=False):  # fp32 teacher (s3prl)
            hidden = self.teacher(wavs.float(), lengths)
        return torch.stack([hidden.states[i][:, :T] for i in self.targets], 0)

    def losses(self, batch) -> dict[str, Tensor]:
        wavs, lengths, ids = _batch_parts(batch)
        lengths = lengths.to(wavs.device)
        wavs, lengths, offsets = self._crop(wavs, lengths) if self.training else (wavs, lengths, torch.zeros_like(lengths))
        preds, hidden = self.predict(wavs, lengths)
        targets = self.teacher_targets(wavs, lengths, ids, offsets, preds.shape[2])
        mask = hidden.mask
        out: dict[str, Tensor] = {}
        total = preds.new_zeros(())
        for k, layer in enumerate(self.targets):
            p, t = preds[k].float(), targets[k]
            l1 = layer_loss(p, t, cos_weight=0.0, mask=mask)
            full = layer_loss(p, t, cos_weight=self.cfg.cos_weight, mask=mask)
            out[f"l1_{layer}"] = l1.detach()
            out[f"cos_{layer}"] = ((full - l1) / self.cfg.cos_weight).detach() if self.cfg.cos_weight else l1.new_zeros(())
            total = total + full
        out["loss"] = total / len(self.targets) if self.cfg.head_reduction == "mean" else total
        return out

    def step(self, batch) -> dict[str, Tensor]:
        return self.losses(batch)

    def validate(self, batch) -> dict[str, Tensor]:
        return self.losses(batch)

    # checkpoints carry the student and heads only (the teacher is frozen and large)
    @property
    def student_model(self) -> nn.Module:
        """The bare student: a transformers model or a :class:`MelHubert`."""
        return _net(self.student)

    def checkpoint_state(self) -> dict[str, Tensor]:
        state = {f"student.{k}": v for k, v in self.student_model.state_dict().items()}
        if self.heads is not None:
            state.update({f"heads.{k}": v for k, v in self.heads.state_dict().items()})
        return state

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        from s3kit.checkpoint import CheckpointError

        mine = self.checkpoint_state()
        if set(mine) != set(state):
            raise CheckpointError(f"checkpoint does not fit this DistilHuBERT: missing "
                                  f"{sorted(set(mine) - set(state))[:5]}, unexpected {sorted(set(state) - set(mine))[:5]}")
        self.student_model.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("student.")})
        if self.heads is not None:
            self.heads.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("heads.")})

    def checkpoint_meta(self) -> dict:
        cfg = self.student_model.config
        if isinstance(self.student_model, MelHubert):
            from s3kit.config import to_dict

            student = {"model_type": MELHUBERT, "config": to_dict(cfg)}
        else:
            student = {"model_type": cfg.model_type, "config": json.loads(cfg.to_json_string(use_diff=False))}
        return {
            "upstream": UPSTREAM_LOADER,
            "student": student,
            "distil": {"targets": list(self.targets), "keep_heads": self.cfg.keep_heads,
                       "has_heads": self.heads is not None,
                       "teacher_width": self.teacher_dim},
        }


# ----------------------------------------------------------------------------- rebuild + export


def _student_from_meta(meta: dict, where: str = "config.json") -> nn.Module:
    """An untrained student of the kind and config in ``meta["student"]`` (dispatch on ``model_type``)."""
    if "student" not in meta:
        raise ValueError("not a DistilHuBERT checkpoint: config.json has no 'student' entry")
    info = meta["student"]
    if info["model_type"] == MELHUBERT:
        from s3kit.config import from_dict
        from s3kit.models.melhubert import MelHubertConfig

        return MelHubert(from_dict(MelHubertConfig, info["config"], where=f"{where}: student.config"))
    from transformers import AutoConfig, AutoModel

    cfg_dict = dict(info["config"])
    cfg_dict.pop("model_type", None)
    config = AutoConfig.for_model(info["model_type"], **cfg_dict)
    if info["model_type"] == "wavlm":
        config._attn_implementation = "eager"  # WavLM refuses SDPA (DEPENDENCIES.md §1)
    return AutoModel.from_config(config)


def student_kind(ckpt_dir: str | Path) -> str:
    """``meta["student"]["model_type"]`` of a DistilHuBERT checkpoint (``"hubert"``, ``"wav2vec2"``,
    ``"wavlm"`` or ``"melhubert"``), read from its ``config.json`` without loading the tensors."""
    path = Path(ckpt_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{ckpt_dir}: no config.json (not an s3kit checkpoint directory)")
    meta = json.loads(path.read_text())
    if "student" not in meta:
        raise ValueError(f"{path}: not a DistilHuBERT checkpoint (no 'student' entry)")
    return meta["student"]["model_type"]


def load_student(ckpt_dir: str | Path) -> tuple[nn.Module, PredictionHeads | None, dict]:
    """``(student, heads or None, meta)`` from a DistilHuBERT checkpoint directory; the student is
    a transformers model or a :class:`MelHubert`."""
    from s3kit import checkpoint

    state, meta = checkpoint.load(ckpt_dir)
    model = _student_from_meta(meta, where=f"{ckpt_dir}/config.json")
    body = {k[8:]: v for k, v in state.items() if k.startswith("student.")}
    checkpoint.check_compatible(model, body, source=str(ckpt_dir))
    model.load_state_dict(body)
    heads = None
    head_state = {k[6:]: v for k, v in state.items() if k.startswith("heads.")}
    if head_state:
        n, dim, dim_out = head_state["weight"].shape
        heads = PredictionHeads(dim, n, dim_out)
        heads.load_state_dict(head_state)
    return model.eval(), heads, meta


def upstream_from_checkpoint(ckpt_dir: str | Path, **options) -> Upstream:
    """Rebuild a distilled student as an :class:`Upstream` (what ``s3kit.load_upstream`` calls);
    the heads' outputs are appended as extra states only for the ``keep_heads`` ablation."""
    model, heads, meta = load_student(ckpt_dir)
    keep = options.pop("keep_heads", meta.get("distil", {}).get("keep_heads", False))
    if options:
        raise TypeError(f"unknown DistilHuBERT upstream options: {sorted(options)}")
    return DistilStudent(model, heads if keep else None, name=Path(ckpt_dir).name).eval()


def export_transformers(student_ckpt_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a plain transformers directory (``config.json`` + ``model.safetensors``, heads
    dropped) that ``AutoModel.from_pretrained(out_dir)`` loads as ``HubertModel`` / ``Wav2Vec2Model``
    / ``WavLMModel``. A MelHuBERT student has no transformers class: :class:`CheckpointError`."""
    from transformers.utils import logging as hf_logging

    from s3kit.checkpoint import CheckpointError

    hf_logging.disable_progress_bar()
    model, _, _ = load_student(student_ckpt_dir)
    if isinstance(model, MelHubert):
        raise CheckpointError(f"{student_ckpt_dir}: MelHuBERT has no transformers class; the s3kit checkpoint is "
                              f"the export (load it with s3kit.load_upstream)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    return out_dir


# ----------------------------------------------------------------------------- end to end


def distill(teacher: str | Path | nn.Module, manifest, cfg: DistilConfig = DistilConfig(), val_manifest=None,
            cache_dir: str | Path | None = None):
    """Distil ``teacher`` (hub id, transformers dir, s3kit MelHuBERT checkpoint dir, or an upstream /
    :class:`MelHubert`) on ``manifest`` (CutSet or path) into ``cfg.train.out_dir``; returns the
    trainer's :class:`~s3kit.train.trainer.TrainResult`.

    The teacher-feature cache (``cfg.cache``) goes to ``cache_dir`` (default
    ``<out_dir>/teacher_cache``) and is rebuilt whenever the teacher, targets or manifest change.
    """
    from s3kit.data.loader import make_loader
    from s3kit.data.manifest import load_cuts
    from s3kit.train import cache as cache_mod
    from s3kit.train.trainer import setup_distributed, train
    from s3kit.upstream import load_upstream

    _, world, device = setup_distributed(cfg.train.device)  # before the loaders so lhotse shards per rank
    cuts = load_cuts(manifest) if isinstance(manifest, (str, Path)) else manifest
    source = teacher
    teacher = as_teacher(teacher) if isinstance(teacher, nn.Module) else load_upstream(teacher)
    if not isinstance(teacher, (HFUpstream, MelHubertUpstream)):
        raise TypeError(f"{source}: DistilHuBERT needs a transformers HuBERT / wav2vec 2.0 / WavLM teacher or an "
                        f"s3kit MelHuBERT, got {type(teacher).__name__}")
    teacher.to(device)
    targets = cfg.resolve_targets(_depth(_net(teacher)))
    cache = None
    if cfg.cache:
        root = Path(cache_dir) if cache_dir is not None else Path(cfg.train.out_dir) / "teacher_cache"
        if world > 1:
            import torch.distributed as dist

            if dist.get_rank() == 0:
                cache_mod.ensure_cache(root, teacher, list(targets), cuts, **cfg.train.bad_audio_options)
            dist.barrier()
        cache = cache_mod.ensure_cache(root, teacher, list(targets), cuts, progress=False,
                                       **cfg.train.bad_audio_options)
    method = DistilHuBERT(teacher, cfg, cache=cache)
    longest = max((c.duration for c in cuts), default=0.0)
    loader = make_loader(cuts, max_duration=max(cfg.max_duration, longest), max_cuts=cfg.batch_size,
                         shuffle=True, seed=cfg.train.seed)
    val = None
    if val_manifest is not None:
        vcuts = load_cuts(val_manifest) if isinstance(val_manifest, (str, Path)) else val_manifest
        vlong = max((c.duration for c in vcuts), default=0.0)
        val = make_loader(vcuts, max_duration=max(cfg.max_duration, vlong), max_cuts=cfg.batch_size, shuffle=False)
    return train(method, loader, cfg.train, val_data=val, config=cfg)
