"""A Gumbel codebook trained on a frozen upstream's features: a teacher codebook for the KWS
paper's teacher-codebook rows (Yang et al., Interspeech 2023, §2.2) when the teacher has none.

Deviation, named in docs/kws.md: the paper's teacher codebook is the one wav2vec 2.0 learned
during its own pretraining. On CPU the wav2vec 2.0 objective does not give a useful tiny teacher
(issue 21: 3 000 updates, KS probe 0.33 against 0.38 for its random init), while the MelHuBERT
demo teacher has learned (KS 0.68) but has no codebook. So the codebook is learned afterwards, on
top of the frozen MelHuBERT teacher, with wav2vec 2.0's own objective in which only the
quantizer and the two projections learn:

* quantizer input: state ``layer`` of the teacher on the *unmasked* input, ``x [B, T, D]``
  (wav2vec 2.0 quantises its local CNN features; here a middle layer, as HuBERT's second
  iteration takes its targets from a middle layer, and §4.4 finds the middle layers best for KWS);
* context: the teacher's last state on the *masked* input (MelHuBERT masks fbank frames with
  zeros, as in its own pretraining), ``c [B, T, D]``;
* loss: ``-log exp(cos(W_c c_t, W_q q_t)/κ) / Σ_{k ∈ K_t} exp(cos(W_c c_t, W_q q_k)/κ)`` over
  masked frames, with N distractors ``q_k`` from other masked frames of the utterance
  (:func:`s3kit.methods.dvcc.teacher_codebook_loss`), plus ``α`` times wav2vec 2.0's diversity
  loss; the Gumbel temperature anneals per update.

The teacher network does not change, so the codes are "what the teacher's context can predict
about a frame", and the time-averaged teacher states that the DVCC rows distil are the MelHuBERT
teacher's own. :class:`FeatureCodebook` has the interface of
:class:`s3kit.methods.dvcc.TeacherCodebook` (``codes``, ``vectors``, ``code_dim``,
``extract_features``, ``quantizer_config``), so eq. (8) uses its quantised vectors as positives
and negatives exactly as it uses a ``Wav2Vec2ForPreTraining`` codebook's.

Dimension legend: ``B`` batch, ``S`` samples, ``T`` teacher frames (20 ms), ``D`` teacher width,
``G`` groups, ``V`` entries per group, ``C`` code-vector width, ``P`` projection width,
``M`` masked frames, ``N`` distractors.

A checkpoint directory holds the quantizer and projections only (``model.safetensors`` +
``config.json``); ``config.json`` names the teacher directory (relative to the checkpoint when
shipped) and the sha256 of its weights, checked at load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s3kit.train.trainer import TrainConfig, TrainResult

LOADER = "s3kit.methods.feature_codebook:upstream_from_checkpoint"
DIVERSITY_WEIGHT = 0.1  # wav2vec 2.0's α
TEMPERATURE = 0.1  # wav2vec 2.0's κ


@dataclass(frozen=True)
class FeatureCodebookConfig:
    """Options; the objective's values are wav2vec 2.0 Base's, the sizes the demo w2v2 teacher's.

    layer: teacher state quantised (``-1``: the middle one, ``num_layers // 2``).
    groups / entries / code_dim: G, V and the concatenated code-vector width C (the shipped
        demo wav2vec 2.0 teacher has 2 x 64 codes of 64 dims).
    proj_dim: P, the width of the two projections compared by cosine (wav2vec 2.0's final_dim).
    mask_prob / mask_length: span starts (transformers' ``mask_time_prob`` convention: 0.65 =
        p 0.065 x span 10) and span length in 20 ms frames.
    gumbel_temperature: (start, end, decay per update).
    max_duration: seconds of audio per batch; crop: seconds per utterance (None: whole clips).
    """

    layer: int = -1
    groups: int = 2
    entries: int = 64
    code_dim: int = 64
    proj_dim: int = 64
    mask_prob: float = 0.65
    mask_length: int = 10
    min_masks: int = 2
    num_negatives: int = 100
    temperature: float = TEMPERATURE
    diversity_weight: float = DIVERSITY_WEIGHT
    gumbel_temperature: tuple[float, float, float] = (2.0, 0.5, 0.9975)
    max_duration: float = 24.0
    crop: float | None = 3.0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        out_dir="runs/feature_codebook", total_steps=2000, lr=5e-4, warmup=0.08, optimizer="adamw",
        weight_decay=0.01, clip=10.0, log_every=25, val_every=250, save_every=250))

    def __post_init__(self):
        if self.code_dim % self.groups:
            raise ValueError(f"code_dim={self.code_dim} must be divisible by groups={self.groups}")
        if self.groups < 1 or self.entries < 2 or self.num_negatives < 1:
            raise ValueError("need groups >= 1, entries >= 2, num_negatives >= 1")
        if not 0.0 < self.mask_prob <= 1.0 or self.mask_length < 1:
            raise ValueError("need 0 < mask_prob <= 1 and mask_length >= 1")


def _quantizer_config(in_dim: int, groups: int, entries: int, code_dim: int) -> SimpleNamespace:
    """The four fields transformers' ``Wav2Vec2GumbelVectorQuantizer`` reads."""
    return SimpleNamespace(conv_dim=[in_dim], num_codevector_groups=groups, num_codevectors_per_group=entries,
                           codevector_dim=code_dim)


def _encoder(upstream) -> nn.Module:
    enc = getattr(upstream, "encoder", None)
    if enc is None or not hasattr(enc, "features"):
        raise ValueError(f"{getattr(upstream, 'name', upstream)}: the feature codebook needs an s3kit encoder upstream "
                         f"whose encoder masks its input (MelHuBERT, e.g. src/s3kit/assets/demo_teacher)")
    return enc


class FeatureCodebook(nn.Module):
    """A frozen upstream + a Gumbel codebook on its state ``layer``: the teacher-codebook interface
    of :class:`s3kit.methods.dvcc.TeacherCodebook` (argmax codes, eval mode, deterministic)."""

    def __init__(self, upstream, layer: int, groups: int, entries: int, code_dim: int):
        super().__init__()
        from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2GumbelVectorQuantizer

        self.upstream = upstream
        _encoder(upstream)
        self.layer = layer if layer >= 0 else (upstream.num_layers - 1) // 2
        if not 0 <= self.layer < upstream.num_layers:
            raise ValueError(f"layer {layer}: the teacher has states 0..{upstream.num_layers - 1}")
        self.quantizer_config = _quantizer_config(upstream.hidden_sizes[self.layer], groups, entries, code_dim)
        self.quantizer = Wav2Vec2GumbelVectorQuantizer(self.quantizer_config)
        nn.init.normal_(self.quantizer.weight_proj.weight, mean=0.0, std=1.0)  # transformers' Gumbel init
        nn.init.zeros_(self.quantizer.weight_proj.bias)
        nn.init.uniform_(self.quantizer.codevectors)
        self.num_groups, self.num_vars = groups, entries
        self.upstream.requires_grad_(False).eval()

    @property
    def code_dim(self) -> int:
        return self.quantizer.codevectors.shape[-1] * self.num_groups

    def extract_features(self, wavs: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """The quantizer's input: teacher state ``layer`` ``[B, T, D]`` (unmasked) and frame lengths ``[B]``."""
        with torch.no_grad():
            hid = self.upstream(wavs, lengths)
        return hid.states[self.layer], hid.lengths

    def logits(self, x: Tensor) -> Tensor:
        """``x [..., D]`` -> code logits ``[..., G, V]``."""
        return self.quantizer.weight_proj(x).unflatten(-1, (self.num_groups, self.num_vars))

    @torch.no_grad()
    def codes(self, wavs: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(codes [B, T, G] long, frame_lengths [B])``: the argmax entry per group."""
        x, flen = self.extract_features(wavs, lengths)
        return self.logits(x).argmax(-1), flen

    def vectors(self, codes: Tensor) -> Tensor:
        """``codes [..., G]`` -> code vectors ``[..., C]`` (groups concatenated, as the quantizer)."""
        book = self.quantizer.codevectors[0]  # (G*V, C/G)
        flat = codes + torch.arange(self.num_groups, device=codes.device) * self.num_vars
        return book[flat].flatten(-2)

    def train(self, mode: bool = True):  # a teacher: always eval (deterministic argmax codes)
        return super().train(False)


class CodeVectorUpstream(nn.Module):
    """The codebook as an upstream (one state: the argmax code vectors ``[B, T, C]``), so that a
    probe measures what the codes alone carry."""

    def __init__(self, codebook: FeatureCodebook, name: str = "codes"):
        super().__init__()
        self.codebook = codebook
        self.name = name
        self.frame_rate = codebook.upstream.frame_rate
        self.hidden_sizes = [codebook.code_dim]

    @property
    def num_layers(self) -> int:
        return 1

    def num_frames(self, lengths: Tensor) -> Tensor:
        return self.codebook.upstream.num_frames(lengths)

    @torch.no_grad()
    def forward(self, wavs: Tensor, lengths: Tensor | None = None):
        from s3kit.upstream.base import Hidden

        codes, flen = self.codebook.codes(wavs, lengths)
        return Hidden(states=[self.codebook.vectors(codes)], lengths=flen, frame_rate=self.frame_rate)


def _diversity(probs: Tensor) -> tuple[Tensor, Tensor]:
    """wav2vec 2.0's ``(GV - perplexity) / GV`` and the perplexity, from soft probabilities ``[M, G, V]``."""
    G, V = probs.shape[1:]
    marginal = probs.mean(0)
    perplexity = torch.exp(-torch.sum(torch.xlogy(marginal, marginal), dim=-1)).sum()
    return (G * V - perplexity) / (G * V), perplexity


class FeatureCodebookTrainer(nn.Module):
    """The training method: ``step(batch) -> {"loss", "contrastive", "diversity", "perplexity", "code_acc"}``.

    Only ``codebook.quantizer``, ``project_q`` and ``project_hid`` learn; the teacher is frozen.
    """

    progress_keys = ("contrastive", "perplexity")

    def __init__(self, codebook: FeatureCodebook, cfg: FeatureCodebookConfig, teacher_ref: dict | None = None):
        super().__init__()
        self.codebook = codebook
        self.cfg = cfg
        D = codebook.upstream.hidden_sizes[-1]
        self.project_q = nn.Linear(codebook.code_dim, cfg.proj_dim)
        self.project_hid = nn.Linear(D, cfg.proj_dim)
        self.teacher_ref = teacher_ref or {}
        self.temperature = cfg.gumbel_temperature[0]

    def trainable_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("codebook.upstream.")]

    def _mask(self, flen: Tensor, T: int) -> Tensor:
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

        valid = torch.arange(T, device=flen.device)[None] < flen[:, None]
        span = min(self.cfg.mask_length, T)
        mask = torch.from_numpy(_compute_mask_indices((len(flen), T), self.cfg.mask_prob, span,
                                                      attention_mask=valid.long().cpu(), min_masks=self.cfg.min_masks))
        return mask.to(flen.device) & valid

    def losses(self, wavs: Tensor, lengths: Tensor, sample: bool) -> dict[str, Tensor]:
        from s3kit.methods.dvcc import sample_negatives, teacher_codebook_loss

        cb, cfg = self.codebook, self.cfg
        enc = _encoder(cb.upstream)
        with torch.no_grad():
            feats, flen = enc.features(wavs, lengths)
            clean = enc(feats, flen)  # states of the unmasked input
            mask = self._mask(flen, feats.shape[1])  # (B, T)
            context = enc(feats, flen, mask=mask)[-1]  # (B, T, D)
        x = clean[cb.layer]  # (B, T, D)
        logits = cb.logits(x[mask]).float()  # (M, G, V)
        if sample:  # hard Gumbel sample (straight-through), as the quantizer in train mode
            hard = F.gumbel_softmax(logits, tau=self.temperature, hard=True)
        else:
            hard = F.one_hot(logits.argmax(-1), cb.num_vars).float()
        book = cb.quantizer.codevectors[0].view(cb.num_groups, cb.num_vars, -1)  # (G, V, C/G)
        q = torch.einsum("mgv,gvc->mgc", hard, book).flatten(1)  # (M, C)
        B, T = mask.shape
        targets = q.new_zeros(B, T, cfg.proj_dim)
        targets[mask] = self.project_q(q)
        neg = sample_negatives(mask, cfg.num_negatives)  # (B, T, N)
        negatives = targets.gather(1, neg.flatten(1)[..., None].expand(B, T * cfg.num_negatives, cfg.proj_dim))
        negatives = negatives.view(B, T, cfg.num_negatives, cfg.proj_dim)[mask]  # (M, N, P)
        pred = self.project_hid(context[mask])  # (M, P)
        contrastive = teacher_codebook_loss(pred, targets[mask], negatives, cfg.temperature)
        div, ppl = _diversity(logits.softmax(-1))
        with torch.no_grad():  # share of masked frames whose positive scores above every distractor
            pos = F.cosine_similarity(pred, targets[mask], dim=-1)
            negs = F.cosine_similarity(pred[:, None], negatives, dim=-1)
            same = (negatives == targets[mask][:, None]).all(-1)
            acc = (pos[:, None] > negs.masked_fill(same, -2.0)).all(-1).float().mean()
        return {"loss": contrastive + cfg.diversity_weight * div, "contrastive": contrastive.detach(),
                "diversity": div.detach(), "perplexity": ppl.detach(), "code_acc": acc}

    def step(self, batch) -> dict[str, Tensor]:
        return self.losses(batch.wavs, batch.lengths.to(batch.wavs.device), sample=True)

    def validate(self, batch) -> dict[str, Tensor]:
        torch.manual_seed(0)  # the same masks and distractors at every validation
        return self.losses(batch.wavs, batch.lengths.to(batch.wavs.device), sample=False)

    def on_step_end(self, step: int) -> None:
        start, end, decay = self.cfg.gumbel_temperature
        self.temperature = max(start * decay**step, end)

    def train(self, mode: bool = True):
        super().train(mode)
        self.codebook.upstream.eval()
        return self

    def checkpoint_state(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("codebook.upstream.")}

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        from s3kit.checkpoint import CheckpointError

        mine = self.checkpoint_state()
        if set(mine) != set(state):
            raise CheckpointError(f"checkpoint does not fit this feature codebook: missing "
                                  f"{sorted(set(mine) - set(state))[:5]}, unexpected {sorted(set(state) - set(mine))[:5]}")
        self.load_state_dict(state, strict=False)

    def checkpoint_meta(self) -> dict:
        return {"upstream": LOADER, "feature_codebook": {**self.teacher_ref, "layer": self.codebook.layer}}


# ----------------------------------------------------------------------------- train / load


def _teacher_hash(upstream) -> str:
    from s3kit.train.cache import teacher_hash

    return teacher_hash(getattr(upstream, "encoder", upstream))


def train_feature_codebook(teacher: str | Path, manifest, cfg: FeatureCodebookConfig = FeatureCodebookConfig(),
                           val_manifest=None) -> TrainResult:
    """Learn a codebook on the frozen ``teacher`` (an s3kit MelHuBERT upstream directory) over
    ``manifest`` into ``cfg.train.out_dir`` (resumes from its last checkpoint). Every checkpoint
    loads with :func:`load_feature_codebook` and, as the teacher, with ``s3kit.load_upstream``."""
    from s3kit.data.loader import make_loader
    from s3kit.data.manifest import load_cuts
    from s3kit.train.trainer import train
    from s3kit.upstream import load_upstream

    up = load_upstream(teacher)
    torch.manual_seed(cfg.train.seed)
    codebook = FeatureCodebook(up, cfg.layer, cfg.groups, cfg.entries, cfg.code_dim)
    ref = {"teacher": str(Path(teacher).resolve()), "teacher_sha256": _teacher_hash(up),
           "groups": cfg.groups, "entries": cfg.entries, "code_dim": cfg.code_dim}
    method = FeatureCodebookTrainer(codebook, cfg, ref)
    cuts = load_cuts(manifest) if isinstance(manifest, (str, Path)) else manifest
    loader = make_loader(cuts, max_duration=cfg.max_duration, crop=cfg.crop, shuffle=True, seed=cfg.train.seed)
    val = None
    if val_manifest is not None:
        vcuts = load_cuts(val_manifest) if isinstance(val_manifest, (str, Path)) else val_manifest
        val = make_loader(vcuts, max_duration=cfg.max_duration, crop=cfg.crop, shuffle=False)
    return train(method, loader, cfg.train, val_data=val, config=cfg)


def is_feature_codebook(path: str | Path) -> bool:
    cfg = Path(path) / "config.json"
    return cfg.is_file() and "feature_codebook" in json.loads(cfg.read_text())


def _resolve_teacher(directory: Path, meta: dict) -> Path:
    ref = meta["feature_codebook"]["teacher"]
    path = Path(ref)
    return path if path.is_absolute() else (directory / path).resolve()


def load_feature_codebook(directory: str | Path, check_teacher: bool = True) -> tuple[object, FeatureCodebook]:
    """``(teacher upstream, FeatureCodebook)`` from a checkpoint of :func:`train_feature_codebook`.

    The teacher named in ``config.json`` (a path relative to ``directory`` or absolute) must be
    the one the codebook was trained on (sha256 of its weights), or the codes would mean nothing.
    """
    from s3kit import checkpoint
    from s3kit.upstream import load_upstream

    directory = Path(directory)
    state, meta = checkpoint.load(directory)
    if "feature_codebook" not in meta:
        raise checkpoint.CheckpointError(f"{directory}: not a feature-codebook checkpoint (no 'feature_codebook' entry)")
    fc = meta["feature_codebook"]
    teacher = _resolve_teacher(directory, meta)
    if not teacher.is_dir():
        raise FileNotFoundError(f"{directory}/config.json names the teacher {fc['teacher']!r}, not found at {teacher}; "
                                f"put the teacher there or retrain the codebook on yours")
    up = load_upstream(teacher)
    if check_teacher and fc.get("teacher_sha256") and _teacher_hash(up) != fc["teacher_sha256"]:
        raise ValueError(f"{directory}: the codebook was trained on another version of {teacher} (weights differ); "
                         f"retrain it (src/s3kit/assets/demo_codebook_teacher/README.md gives the command)")
    codebook = FeatureCodebook(up, fc["layer"], fc["groups"], fc["entries"], fc["code_dim"])
    own = {k[len("codebook."):]: v for k, v in state.items() if k.startswith("codebook.quantizer.")}
    codebook.load_state_dict(own, strict=False)
    missing = {k for k in codebook.state_dict() if k.startswith("quantizer.")} - set(own)
    if missing:
        raise checkpoint.CheckpointError(f"{directory}: quantizer weights missing: {sorted(missing)}")
    return up, codebook.eval()


def upstream_from_checkpoint(directory: str | Path, **options):
    """``s3kit.load_upstream(dir)`` of a feature-codebook checkpoint: its teacher (the codebook
    only matters to the teacher-codebook loss, :func:`s3kit.methods.dvcc.load_teacher`)."""
    up, _ = load_feature_codebook(directory)
    return up


def export(checkpoint_dir: str | Path, out_dir: str | Path, teacher_ref: str) -> Path:
    """Copy a training checkpoint's weights (quantizer and projections) to ``out_dir`` and name
    the teacher as ``teacher_ref`` (a path relative to ``out_dir``, e.g. ``../demo_teacher``)."""
    from s3kit import checkpoint

    state, meta = checkpoint.load(checkpoint_dir)
    meta.pop("trainer_state", None)
    meta["feature_codebook"] = {**meta["feature_codebook"], "teacher": teacher_ref}
    cls = meta.pop("class", None)
    config = meta.pop("config", None)
    out = checkpoint.save(out_dir, state, config, class_name=cls, **meta)
    load_feature_codebook(out)  # the reference resolves and the hash matches
    return out


__all__ = ["CodeVectorUpstream", "FeatureCodebook", "FeatureCodebookConfig", "FeatureCodebookTrainer", "export",
           "is_feature_codebook", "load_feature_codebook", "train_feature_codebook", "upstream_from_checkpoint"]
