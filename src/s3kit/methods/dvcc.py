"""Dual-view cross-correlation (DVCC) and teacher-codebook distillation (Yang et al., Interspeech 2023).

Dimension legend: ``B`` batch (``b`` in the paper), ``D`` feature width (``d``), ``T`` student
frames (10 ms), ``Tt`` teacher frames (20 ms), ``L`` teacher states, ``G`` codebook groups,
``V`` entries per group, ``C`` code-vector width, ``M`` masked frames, ``N`` negatives.

Losses (pure functions, §2):

* :func:`utterance_distill_loss`: eq. (2), DistilHuBERT's L1 + cosine on time-averaged features.
* :func:`feature_view_loss`: eq. (3)-(4), ``C`` (D x D) correlates each teacher feature with each
  student feature over the batch; diagonal to 1, off-diagonal (weight α) to 0.
* :func:`batch_view_loss`: eq. (5)-(6), ``G`` (B x B) the same over the feature axis (weight β).
* :func:`dvcc_loss`: eq. (7), ``L_C / sg(L_C) + L_G / sg(L_G)``: each term is 1 in value, its
  gradient the term's own gradient divided by its value.
* :func:`teacher_codebook_loss`: eq. (8), the wav2vec 2.0 contrastive objective whose positive
  and N distractors are the *teacher's* quantised vectors at masked student frames.

The training method :class:`DVCCDistiller` feeds the trainer (:mod:`s3kit.train.trainer`): the
teacher's utterance feature is a learned softmax-weighted sum of its time-averaged states (all
13 of a 12-layer teacher, or a subset such as 5-8, §4.4), the student's the time average of its
last layer, mapped to the teacher width by a linear head only when the widths differ (dropped
after distillation; the paper's 768-wide student has none against its 768-wide teacher, the
256-wide one has one).
Normalisation in eq. (3) and (5) is by the root sum of squares exactly as printed: no
mean-centering (unlike Barlow Twins).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s3kit.models.kws_student import UPSTREAM_LOADER, KWSStudent, config_for, save_student
from s3kit.train.trainer import TrainConfig, TrainResult

ALPHA = 5e-3  # §3.2: α = 5e-3 (feature view off-diagonal weight)
BETA = 5e-3  # §3.2: β = 5e-3 (batch view off-diagonal weight)
GAMMA = 1.0  # §3.2: γ = 1 (teacher-codebook weight, eq. 9)
TEACHER_STRIDE = 320  # wav2vec 2.0 CNN: 20 ms frames, receptive field 400 samples
TEACHER_FIELD = 400
STUDENT_HOP = 160  # 10 ms fbank frames, 25 ms windows centred at 160 i + 80 (Kaldi snip_edges=false)
# wav2vec 2.0 Base objective (§2.2: "the same Wav2Vec 2.0 objective as the teacher"): span
# starts p = 0.065 with spans of 10 x 20 ms (transformers' mask_time_prob 0.65 = p x span, about
# half the frames masked after overlaps), 100 distractors, κ = 0.1. The student's frames are
# 10 ms, so a 200 ms span is 20 of them.
MASK_PROB = 0.65
MASK_LENGTH = 20
NUM_NEGATIVES = 100
TEMPERATURE = 0.1
DIVERSITY_WEIGHT = 0.1  # wav2vec 2.0's α, only for the codebook-from-scratch ablation
# codebook=self (the self-supervised no-KD baseline: the student's own wav2vec 2.0 objective on
# its fbank, no teacher): wav2vec 2.0 Base's codebook, 2 groups x 320 entries, 256-d code vectors
SELF_CODEBOOK = (2, 320, 256)
_EPS = 1e-8


# ----------------------------------------------------------------------------- losses (pure)


def _normalised_product(H: Tensor, O: Tensor, dim: int) -> Tensor:
    """``sum_dim H O / (sqrt(sum_dim H^2) sqrt(sum_dim O^2))``: eq. (3) with ``dim=0``, eq. (5) with ``dim=1``."""
    Hn = H / H.pow(2).sum(dim, keepdim=True).sqrt().clamp_min(_EPS)
    On = O / O.pow(2).sum(dim, keepdim=True).sqrt().clamp_min(_EPS)
    return Hn.transpose(0, 1) @ On if dim == 0 else Hn @ On.transpose(0, 1)


def _identity_loss(M: Tensor, off_weight: float) -> Tensor:
    """``sum_i (M_ii - 1)^2 + w sum_{i != j} M_ij^2`` for a square ``M``."""
    diag = torch.diagonal(M)
    on = (diag - 1).pow(2).sum()
    off = M.pow(2).sum() - diag.pow(2).sum()
    return on + off_weight * off


def feature_view_loss(H: Tensor, O: Tensor, alpha: float = ALPHA) -> Tensor:
    """Eq. (3)-(4): ``L_C`` of teacher ``H [B, D]`` and student ``O [B, D]`` -> scalar.

    ``C_ij = sum_b H_bi O_bj / (sqrt(sum_b H_bi^2) sqrt(sum_b O_bj^2))`` (``[D, D]``),
    ``L_C = sum_i (C_ii - 1)^2 + α sum_{i != j} C_ij^2``.
    """
    _check_pair(H, O)
    return _identity_loss(_normalised_product(H.float(), O.float(), 0), alpha)


def batch_view_loss(H: Tensor, O: Tensor, beta: float = BETA) -> Tensor:
    """Eq. (5)-(6): ``L_G`` of teacher ``H [B, D]`` and student ``O [B, D]`` -> scalar.

    ``G_ij = sum_d H_id O_jd / (sqrt(sum_d H_id^2) sqrt(sum_d O_jd^2))`` (``[B, B]``),
    ``L_G = sum_i (G_ii - 1)^2 + β sum_{i != j} G_ij^2``.
    """
    _check_pair(H, O)
    return _identity_loss(_normalised_product(H.float(), O.float(), 1), beta)


def scaled_to_one(loss: Tensor) -> Tensor:
    """``loss / sg(loss)``: 1 in value, gradient ``∇loss / loss`` (eq. 7)."""
    return loss / loss.detach().clamp_min(_EPS)


def dvcc_loss(H: Tensor, O: Tensor, alpha: float = ALPHA, beta: float = BETA) -> Tensor:
    """Eq. (7): ``L_DVCC = L_C / sg(L_C) + L_G / sg(L_G)`` for ``H, O [B, D]`` -> scalar (value 2)."""
    return scaled_to_one(feature_view_loss(H, O, alpha)) + scaled_to_one(batch_view_loss(H, O, beta))


def utterance_distill_loss(H: Tensor, O: Tensor, lam: float = 1.0) -> Tensor:
    """Eq. (2), the utterance-level DistilHuBERT baseline: ``H, O [B, D]`` (time-averaged) -> scalar.

    ``||h - o||_1 - λ log σ(cos(h, o))`` averaged over the batch, with DistilHuBERT's own form
    (L1 averaged over the D dimensions, ``log σ``) since §4.1 "replicated the DistilHuBERT
    method"; eq. (2) as printed drops the 1/D and the log.
    """
    _check_pair(H, O)
    H, O = H.float(), O.float()
    l1 = (H - O).abs().mean(-1)
    cos = F.cosine_similarity(H, O, dim=-1)
    return (l1 - lam * F.logsigmoid(cos)).mean()


def sample_negatives(mask: Tensor, num: int, generator: torch.Generator | None = None) -> Tensor:
    """Distractor frame indices ``[B, T, N]`` for ``mask [B, T]`` bool (True = masked frame).

    As wav2vec 2.0: for each masked frame, ``num`` other masked frames of the same utterance,
    uniformly with replacement (rows of unmasked frames are 0 and unused). An utterance with a
    single masked frame gets itself (its logit is dropped as equal to the positive).
    """
    B, T = mask.shape
    out = torch.zeros(B, T, num, dtype=torch.long, device=mask.device)
    for b in range(B):
        idx = mask[b].nonzero().squeeze(1)  # (M_b,)
        m = idx.numel()
        if m == 0:
            continue
        if m == 1:
            out[b, idx] = idx[0]
            continue
        draw = torch.randint(0, m - 1, (m, num), generator=generator, device="cpu").to(mask.device)
        self_pos = torch.arange(m, device=mask.device)[:, None]
        draw = draw + (draw >= self_pos).long()  # skip the frame itself, keep the rest uniform
        out[b, idx] = idx[draw]
    return out


def teacher_codebook_loss(pred: Tensor, positives: Tensor, negatives: Tensor, temperature: float = TEMPERATURE,
                          reduction: Literal["mean", "sum"] = "mean") -> Tensor:
    """Eq. (8): ``-sum_t log exp(cos(o_t, k_t)/κ) / sum_{k in K_t} exp(cos(o_t, k)/κ)``.

    pred: student predictions ``o_t`` ``[M, C]``; positives: teacher quantised ``k_t`` ``[M, C]``;
    negatives: ``[M, N, C]`` teacher quantised distractors; ``K_t`` = the positive and the N
    distractors. A distractor identical to the positive (same code) is left out, as in wav2vec 2.0.
    ``κ`` (``temperature``) is wav2vec 2.0's 0.1 (eq. 8 prints κ = 1). ``reduction="mean"``
    averages over the M frames (fairseq's wav2vec criterion sums and divides the gradient by the
    number of masked frames); ``"sum"`` is eq. (8) as printed.
    """
    if pred.shape != positives.shape or negatives.shape[0] != pred.shape[0] or negatives.shape[2] != pred.shape[1]:
        raise ValueError(f"shapes: pred {tuple(pred.shape)}, positives {tuple(positives.shape)}, "
                         f"negatives {tuple(negatives.shape)}; need [M, C], [M, C], [M, N, C]")
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    pred, positives, negatives = pred.float(), positives.float(), negatives.float()
    targets = torch.cat([positives[:, None], negatives], dim=1)  # (M, 1 + N, C)
    logits = F.cosine_similarity(pred[:, None], targets, dim=-1) / temperature  # (M, 1 + N)
    same = (negatives == positives[:, None]).all(-1)  # (M, N)
    logits[:, 1:] = logits[:, 1:].masked_fill(same, float("-inf"))
    nll = -torch.log_softmax(logits, dim=-1)[:, 0]
    return nll.mean() if reduction == "mean" else nll.sum()


def frame_codebook_loss(pred: Tensor, targets: Tensor, mask: Tensor, neg: Tensor, temperature: float = TEMPERATURE,
                        reduction: Literal["mean", "sum"] = "mean") -> Tensor:
    """:func:`teacher_codebook_loss` of every masked frame, from whole utterances:
    ``teacher_codebook_loss(pred[mask], targets[mask], targets[b, neg[mask]])`` (``b`` each masked
    frame's utterance), without materialising the ``[M, N, C]`` distractors: the cosines of each
    utterance's predictions with all its targets are one ``[B, T, T]`` product, the distractors'
    logits are gathered from it.

    pred, targets: ``[B, T, C]``; mask: ``[B, T]`` bool; neg: ``[B, T, N]`` frame indices of the
    distractors (:func:`sample_negatives`). Cosines as ``F.cosine_similarity`` (each norm clamped
    at 1e-8); a distractor equal to its positive (same vector) is left out.
    """
    if pred.shape != targets.shape or mask.shape != pred.shape[:2] or neg.shape[:2] != mask.shape:
        raise ValueError(f"shapes: pred {tuple(pred.shape)}, targets {tuple(targets.shape)}, mask {tuple(mask.shape)}, "
                         f"neg {tuple(neg.shape)}; need [B, T, C], [B, T, C], [B, T], [B, T, N]")
    if not mask.any():
        return pred.sum() * 0.0
    pred, targets = pred.float(), targets.float()
    eps = 1e-8
    p = pred / pred.norm(dim=-1, keepdim=True).clamp_min(eps)
    k = targets / targets.norm(dim=-1, keepdim=True).clamp_min(eps)
    cos = torch.bmm(p, k.transpose(1, 2))  # (B, T, T): frame t's prediction vs every target of its utterance
    B, T, N = neg.shape
    pos = cos.diagonal(dim1=1, dim2=2)  # (B, T)
    negs = cos.gather(2, neg)  # (B, T, N)
    with torch.no_grad():  # which targets are the same vector: one id per distinct vector
        _, ids = torch.unique(targets.detach().reshape(B * T, -1), dim=0, return_inverse=True)
        ids = ids.view(B, T)
        same = ids.gather(1, neg.reshape(B, T * N)).view(B, T, N) == ids[..., None]
    logits = torch.cat([pos[mask][:, None], negs[mask].masked_fill(same[mask], float("-inf"))], dim=1) / temperature
    nll = -torch.log_softmax(logits, dim=-1)[:, 0]
    return nll.mean() if reduction == "mean" else nll.sum()


def diversity_loss(probs: Tensor) -> Tensor:
    """wav2vec 2.0 diversity loss ``(GV - perplexity) / GV`` of mean soft code probabilities ``[M, G, V]``."""
    G, V = probs.shape[1:]
    marginal = probs.mean(0)  # (G, V)
    perplexity = torch.exp(-torch.sum(torch.xlogy(marginal, marginal), dim=-1)).sum()
    return (G * V - perplexity) / (G * V)


def _check_pair(H: Tensor, O: Tensor) -> None:
    if H.dim() != 2 or H.shape != O.shape:
        raise ValueError(f"teacher H and student O must both be [B, D], got {tuple(H.shape)} and {tuple(O.shape)}")


# ----------------------------------------------------------------------------- teacher side


def parse_layers(spec: str | list[int] | tuple[int, ...], num_states: int) -> list[int]:
    """Teacher states to weight: ``"all"``, ``"5-8"``, ``"0-4,9-12"`` or a list (``states[0]`` = CNN output)."""
    if isinstance(spec, (list, tuple)):
        layers = [int(x) for x in spec]
    elif str(spec).strip() == "all":
        layers = list(range(num_states))
    else:
        layers = []
        for part in str(spec).replace(" ", "").split(","):
            if not part:
                continue
            a, _, b = part.partition("-")
            try:
                lo, hi = int(a), int(b) if b else int(a)
            except ValueError:
                raise ValueError(f"teacher_layers {spec!r}: use 'all', '5-8' or '0-4,9-12'") from None
            layers.extend(range(lo, hi + 1))
    bad = [i for i in layers if not 0 <= i < num_states]
    if bad or not layers or len(set(layers)) != len(layers):
        raise ValueError(f"teacher_layers {spec!r} -> {layers}: need distinct indices in 0..{num_states - 1}")
    return layers


class LayerWeights(nn.Module):
    """Learned softmax-weighted sum of teacher states (§3.2; 13 weights for all layers, 4 for 5-8)."""

    def __init__(self, num: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, L', D]`` -> ``[B, D]``."""
        return torch.einsum("l,bld->bd", self.logits.softmax(0).to(x.dtype), x)


def teacher_frame_of(student_frames: Tensor) -> Tensor:
    """Teacher frame whose centre is nearest to each student frame's centre (same ``[..]`` shape).

    Student frame ``i`` is centred at ``160 i + 80`` samples, teacher frame ``j`` at ``320 j + 200``:
    ``j = round((160 i - 120) / 320) = (4 i + 1) // 8``.
    """
    num = STUDENT_HOP * student_frames + STUDENT_HOP // 2 - TEACHER_FIELD // 2 + TEACHER_STRIDE // 2
    return torch.div(num, TEACHER_STRIDE, rounding_mode="floor").clamp_min(0)


class TeacherCodebook(nn.Module):
    """The teacher's CNN and Gumbel codebook from a transformers ``Wav2Vec2ForPreTraining``
    (REFERENCE-NOTES.md §E): ``codes(wavs, lengths)`` gives the argmax code per group (eval mode,
    deterministic), ``vectors(codes)`` the concatenated code vectors. Nothing else of the teacher runs."""

    def __init__(self, pretraining_model):
        super().__init__()
        from s3kit.upstream.hf import HFUpstream

        self.cnn = HFUpstream(pretraining_model.wav2vec2, name="teacher-cnn")
        self.quantizer = pretraining_model.quantizer
        self.num_groups = self.quantizer.num_groups
        self.num_vars = self.quantizer.num_vars
        self.requires_grad_(False).eval()

    @property
    def code_dim(self) -> int:
        return self.quantizer.codevectors.shape[-1] * self.num_groups

    @property
    def quantizer_config(self):
        """What a codebook of the same shape is built from (``Wav2Vec2GumbelVectorQuantizer(config)``)."""
        return self.cnn.model.config

    def extract_features(self, wavs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Layer-normed CNN features ``[B, Tt, C_cnn]`` (the quantizer's input) and frame lengths ``[B]``."""
        feats = self.cnn.cnn(wavs, lengths)
        proj = self.cnn.model.feature_projection(feats)
        extract = proj[1] if isinstance(proj, tuple) else feats
        return extract, self.cnn.num_frames(lengths).clamp_max(extract.shape[1])

    @torch.no_grad()
    def codes(self, wavs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(codes [B, Tt, G] long, frame_lengths [B])``: ``weight_proj(x).view(B, Tt, G, V).argmax(-1)``."""
        x, flen = self.extract_features(wavs, lengths)
        B, T, _ = x.shape
        return self.quantizer.weight_proj(x).view(B, T, self.num_groups, self.num_vars).argmax(-1), flen

    def vectors(self, codes: Tensor) -> Tensor:
        """``codes [..., G]`` -> code vectors ``[..., G * C/G]`` (groups concatenated, as the quantizer)."""
        book = self.quantizer.codevectors[0]  # (G*V, C/G)
        flat = codes + torch.arange(self.num_groups, device=codes.device) * self.num_vars
        return book[flat].flatten(-2)

    def train(self, mode: bool = True):  # frozen: always eval (deterministic argmax codes)
        return super().train(False)


class ScratchCodebook(nn.Module):
    """Ablation "codebook from scratch" (§4.3): a fresh wav2vec 2.0 Gumbel quantizer of the same
    shape as the teacher's, on the teacher's CNN features, trained with the student plus the
    diversity loss that the teacher codebook makes unnecessary (§1). ``quantizer_config`` is the
    teacher codebook's (its ``quantizer_config``) or, for the self-supervised baseline, one whose
    input width is the student's fbank (``codebook=self``)."""

    def __init__(self, quantizer_config, start_temp: float = 2.0, end_temp: float = 0.5,
                 decay: float = 0.999995):
        super().__init__()
        from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2GumbelVectorQuantizer

        self.quantizer = Wav2Vec2GumbelVectorQuantizer(quantizer_config)
        nn.init.normal_(self.quantizer.weight_proj.weight, mean=0.0, std=1.0)  # transformers' Gumbel init
        nn.init.zeros_(self.quantizer.weight_proj.bias)
        nn.init.uniform_(self.quantizer.codevectors)
        self.num_groups, self.num_vars = self.quantizer.num_groups, self.quantizer.num_vars
        self.temps = (start_temp, end_temp, decay)  # wav2vec 2.0 Base: 2 -> 0.5, x 0.999995 per update

    @property
    def code_dim(self) -> int:
        return self.quantizer.codevectors.shape[-1] * self.num_groups

    def set_step(self, step: int) -> None:
        start, end, decay = self.temps
        self.quantizer.temperature = max(start * decay**step, end)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [M, C_cnn]`` -> (vectors ``[M, C]``, soft probabilities ``[M, G, V]``)."""
        logits = self.quantizer.weight_proj(x).view(-1, self.num_groups, self.num_vars)
        if self.training:
            hard = F.gumbel_softmax(logits.float(), tau=self.quantizer.temperature, hard=True)
        else:
            hard = F.one_hot(logits.argmax(-1), self.num_vars).float()
        book = self.quantizer.codevectors[0].view(self.num_groups, self.num_vars, -1)  # (G, V, C/G)
        vectors = torch.einsum("mgv,gvc->mgc", hard.to(book.dtype), book).flatten(1)
        return vectors, logits.float().softmax(-1)


# ----------------------------------------------------------------------------- the method


@dataclass(frozen=True)
class DVCCConfig:
    """Distillation options; defaults = the paper's "Combined_large" (§2.3, §3.2).

    loss: utterance-level distillation term: ``dvcc`` (eq. 7), ``feature`` / ``batch`` (single
        views, eq. 4 / 6), ``utterance`` (eq. 2, DistilHuBERT-utterance), ``none``.
    codebook: ``teacher`` (eq. 8 with the teacher's codebook), ``scratch`` (own codebook on the
        teacher's features, ablation), ``self`` (own codebook on the student's fbank: the
        wav2vec 2.0 objective without any teacher, the self-supervised pretrained no-KD
        baseline), ``none``. ``loss=none, codebook=none`` is the no-KD baseline (random init).
    teacher_layers: ``all`` (13 weights for a 12-layer teacher), ``5-8``, ``0-4,9-12``, ...
    batch_size: utterances per update (paper 512); max_duration caps seconds of audio per batch.
    stats_cuts: utterances used for the fbank mean / std.
    self_codebook: (groups, entries, code dim) of the ``codebook=self`` codebook (wav2vec 2.0 Base's).
    """

    student: str = "large"
    loss: Literal["dvcc", "feature", "batch", "utterance", "none"] = "dvcc"
    codebook: Literal["teacher", "scratch", "self", "none"] = "teacher"
    alpha: float = ALPHA
    beta: float = BETA
    gamma: float = GAMMA
    cos_weight: float = 1.0  # λ of eq. (2)
    teacher_layers: str = "all"
    num_negatives: int = NUM_NEGATIVES
    mask_prob: float = MASK_PROB
    mask_length: int = MASK_LENGTH
    temperature: float = TEMPERATURE
    tcode_reduction: Literal["mean", "sum"] = "mean"
    diversity_weight: float = DIVERSITY_WEIGHT
    self_codebook: tuple[int, int, int] = SELF_CODEBOOK  # (groups, entries, code dim) for codebook=self
    batch_size: int = 512  # §3.2
    max_duration: float = 600.0
    stats_cuts: int = 2000
    cache: bool = True  # teacher utterance features and codes are computed once
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        out_dir="runs/dvcc", total_steps=75_000, warmup=0.07, lr=2e-4, save_every=5_000))  # 15 epochs x 5 000 steps

    def __post_init__(self):
        if self.loss not in ("dvcc", "feature", "batch", "utterance", "none"):
            raise ValueError(f"loss={self.loss!r}: choose dvcc, feature, batch, utterance or none")
        if self.codebook not in ("teacher", "scratch", "self", "none"):
            raise ValueError(f"codebook={self.codebook!r}: choose teacher, scratch, self or none")
        if not 0.0 < self.mask_prob <= 1.0 or self.mask_length < 1 or self.num_negatives < 1:
            raise ValueError("need 0 < mask_prob <= 1, mask_length >= 1, num_negatives >= 1")

    @property
    def distills(self) -> bool:
        return self.loss != "none" or self.codebook != "none"

    @property
    def needs_teacher(self) -> bool:
        return self.loss != "none" or self.codebook in ("teacher", "scratch")


def _batch_parts(batch) -> tuple[Tensor, Tensor, list[str] | None]:
    if hasattr(batch, "wavs"):
        return batch.wavs, batch.lengths, list(getattr(batch, "ids", None) or []) or None
    if isinstance(batch, dict):
        return batch["wavs"], batch["lengths"], batch.get("ids")
    return batch[0], batch[1], (batch[2] if len(batch) > 2 else None)


def _pooled(states: Tensor, lengths: Tensor) -> Tensor:
    """Mean over valid frames: ``[B, T, D]``, ``lengths [B]`` -> ``[B, D]``."""
    m = (torch.arange(states.shape[1], device=states.device)[None] < lengths[:, None]).unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp_min(1.0)


class DVCCDistiller(nn.Module):
    """The training method: ``step(batch) -> {"loss", "l_c", "l_g", "l_utt", "l_tcode", ...}``.

    Args:
        student: the :class:`KWSStudent` to train.
        teacher: an :class:`~s3kit.upstream.base.Upstream` for the utterance targets (None when
            ``cfg.loss == "none"`` or every id is in ``pooled_cache``).
        codebook: a :class:`TeacherCodebook` (needed for ``cfg.codebook != "none"``).
        teacher_dim / teacher_states: width and number of the teacher's states.
        pooled_cache: ``{cut id: [L, D] tensor}`` time-averaged teacher states (all of them).
        code_cache: ``{cut id: [Tt, G] tensor}`` teacher codes.
    """

    # L_DVCC = L_C/sg(L_C) + L_G/sg(L_G) is 2 by construction: the progress bar shows the views
    progress_keys = ("loss", "l_c", "l_g", "l_utt", "l_tcode")

    def __init__(self, student: KWSStudent, cfg: DVCCConfig, teacher=None, codebook: TeacherCodebook | None = None,
                 teacher_dim: int | None = None, teacher_states: int | None = None,
                 pooled_cache: dict | None = None, code_cache: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        if self.teacher is not None:
            teacher_dim = teacher_dim or teacher.hidden_sizes[-1]
            teacher_states = teacher_states or teacher.num_layers
        D = student.config.hidden_size
        self.layers: list[int] = []
        if cfg.loss != "none":
            if teacher_dim is None or teacher_states is None:
                raise ValueError("an utterance-level loss needs the teacher (or teacher_dim and teacher_states)")
            self.layers = parse_layers(cfg.teacher_layers, teacher_states)
            self.layer_weights = LayerWeights(len(self.layers))
            # eq. (3)-(7) compare H and O feature by feature, so they need one width: a linear map
            # (dropped after distillation) only when the student's differs from the teacher's (the
            # paper's 768-wide student against a 768-wide teacher has none)
            self.proj = nn.Linear(D, teacher_dim) if D != teacher_dim else nn.Identity()
        self.codebook = codebook
        self.scratch = None
        if cfg.codebook == "self":
            from types import SimpleNamespace

            G, V, C = cfg.self_codebook
            self.scratch = ScratchCodebook(SimpleNamespace(conv_dim=[student.config.fbank_bins], num_codevector_groups=G,
                                                           num_codevectors_per_group=V, codevector_dim=C))
            self.predict = nn.Linear(D, self.scratch.code_dim)  # the student's wav2vec 2.0 prediction layer
        elif cfg.codebook != "none":
            if codebook is None:
                raise ValueError("codebook distillation needs the teacher's codebook (a Wav2Vec2ForPreTraining "
                                 "quantizer or an s3kit feature codebook)")
            self.codebook = codebook.eval()
            if cfg.codebook == "scratch":
                self.scratch = ScratchCodebook(codebook.quantizer_config)
            code_dim = (self.scratch or codebook).code_dim
            self.predict = nn.Linear(D, code_dim)  # the student's wav2vec 2.0 prediction layer (final_proj)
        self.pooled_cache = pooled_cache
        self.code_cache = code_cache

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        if self.codebook is not None:
            self.codebook.eval()
        return self

    def trainable_parameters(self):
        return [p for n, p in self.named_parameters()
                if not n.startswith(("teacher.", "codebook.")) and p.requires_grad]

    # -- teacher targets
    def teacher_pooled(self, wavs: Tensor, lengths: Tensor, ids) -> Tensor:
        """Time-averaged teacher states of the chosen layers ``[B, L', D]`` (cache or live)."""
        if self.pooled_cache is not None and ids is not None and all(i in self.pooled_cache for i in ids):
            return torch.stack([self.pooled_cache[i][self.layers] for i in ids]).to(wavs.device)
        if self.teacher is None:
            raise ValueError("teacher features missing from the cache and no live teacher given")
        with torch.no_grad(), torch.autocast(wavs.device.type, enabled=False):
            hidden = self.teacher(wavs.float(), lengths)
        return hidden.pooled(self.layers).float()

    def teacher_codes(self, wavs: Tensor, lengths: Tensor, ids) -> tuple[Tensor, Tensor]:
        """Teacher codes ``[B, Tt, G]`` and valid teacher frames ``[B]`` (cache or live)."""
        if self.code_cache is not None and ids is not None and all(i in self.code_cache for i in ids):
            seqs = [self.code_cache[i] for i in ids]
            flen = torch.tensor([len(s) for s in seqs], device=wavs.device)
            return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True).to(wavs.device).long(), flen
        with torch.autocast(wavs.device.type, enabled=False):
            return self.codebook.codes(wavs.float(), lengths)

    # -- losses
    def utterance_losses(self, wavs, lengths, ids, states_last: Tensor, flen: Tensor) -> dict[str, Tensor]:
        H = self.layer_weights(self.teacher_pooled(wavs, lengths, ids))  # (B, D_t)
        O = self.proj(_pooled(states_last, flen))  # (B, D_t)
        out: dict[str, Tensor] = {}
        cfg = self.cfg
        if cfg.loss == "utterance":
            out["l_utt"] = utterance_distill_loss(H, O, cfg.cos_weight)
            out["distill"] = out["l_utt"]
            return out
        l_c = feature_view_loss(H, O, cfg.alpha)
        l_g = batch_view_loss(H, O, cfg.beta)
        out["l_c"], out["l_g"] = l_c.detach(), l_g.detach()
        if cfg.loss == "dvcc":
            out["distill"] = scaled_to_one(l_c) + scaled_to_one(l_g)  # eq. (7)
        elif cfg.loss == "feature":
            out["distill"] = scaled_to_one(l_c)
        else:
            out["distill"] = scaled_to_one(l_g)
        return out

    def codebook_loss(self, wavs, lengths, ids, feats: Tensor, flen: Tensor) -> dict[str, Tensor]:
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

        cfg = self.cfg
        B, T = feats.shape[:2]
        valid = torch.arange(T, device=feats.device)[None] < flen[:, None]
        span = min(cfg.mask_length, T)  # a batch of clips shorter than one span: mask whole clips
        mask = torch.from_numpy(_compute_mask_indices((B, T), cfg.mask_prob, span,
                                                      attention_mask=valid.long().cpu(), min_masks=2))
        mask = mask.to(feats.device) & valid
        states = self.student(feats, flen, mask=mask)
        pred_all = self.predict(states[-1])  # (B, T, C)
        tmap = teacher_frame_of(torch.arange(T, device=feats.device))  # (T,)
        out: dict[str, Tensor] = {}
        if cfg.codebook == "self":  # the student's own (unmasked, normalised) fbank frames are quantised
            vecs, probs = self.scratch(feats[mask].float())
            targets = pred_all.new_zeros(B, T, vecs.shape[-1])
            targets[mask] = vecs.to(targets.dtype)
            out["l_div"] = diversity_loss(probs)
        elif self.scratch is None:
            codes, tlen = self.teacher_codes(wavs, lengths, ids)  # (B, Tt, G)
            j = torch.minimum(tmap[None].expand(B, T), (tlen - 1).clamp_min(0)[:, None])  # (B, T)
            targets = self.codebook.vectors(codes.gather(1, j[..., None].expand(B, T, codes.shape[-1])))  # (B, T, C)
        else:
            with torch.no_grad(), torch.autocast(wavs.device.type, enabled=False):
                x, tlen = self.codebook.extract_features(wavs.float(), lengths)  # (B, Tt, C_cnn)
            j = torch.minimum(tmap[None].expand(B, T), (tlen - 1).clamp_min(0)[:, None])
            x = x.gather(1, j[..., None].expand(B, T, x.shape[-1]))  # (B, T, C_cnn)
            vecs, probs = self.scratch(x[mask])
            targets = pred_all.new_zeros(B, T, vecs.shape[-1])
            targets[mask] = vecs.to(targets.dtype)
            out["l_div"] = diversity_loss(probs)
        neg = sample_negatives(mask, cfg.num_negatives)  # (B, T, N)
        out["l_tcode"] = frame_codebook_loss(pred_all, targets, mask, neg, cfg.temperature, cfg.tcode_reduction)
        return out

    def losses(self, batch) -> dict[str, Tensor]:
        wavs, lengths, ids = _batch_parts(batch)
        lengths = lengths.to(wavs.device)
        feats, flen = self.student.features(wavs, lengths)
        total = feats.new_zeros(())
        out: dict[str, Tensor] = {}
        if self.cfg.loss != "none":
            states = self.student(feats, flen)
            parts = self.utterance_losses(wavs, lengths, ids, states[-1], flen)
            total = total + parts.pop("distill")
            out.update({k: v.detach() for k, v in parts.items()})
        if self.cfg.codebook != "none":
            parts = self.codebook_loss(wavs, lengths, ids, feats, flen)
            total = total + self.cfg.gamma * parts["l_tcode"]  # eq. (9)
            if "l_div" in parts:
                total = total + self.cfg.diversity_weight * parts["l_div"]
            out.update({k: v.detach() for k, v in parts.items()})
        out["loss"] = total
        return out

    def step(self, batch) -> dict[str, Tensor]:
        return self.losses(batch)

    def validate(self, batch) -> dict[str, Tensor]:
        return self.losses(batch)

    def on_step_end(self, step: int) -> None:
        if self.scratch is not None:
            self.scratch.set_step(step)

    # checkpoints carry everything but the frozen teacher
    def checkpoint_state(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("teacher.", "codebook."))}

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        from s3kit.checkpoint import CheckpointError

        mine = self.checkpoint_state()
        if set(mine) != set(state):
            raise CheckpointError(f"checkpoint does not fit this DVCC method: missing {sorted(set(mine) - set(state))[:5]}, "
                                  f"unexpected {sorted(set(state) - set(mine))[:5]}")
        self.load_state_dict(state, strict=False)

    def checkpoint_meta(self) -> dict:
        from s3kit.config import to_dict

        meta = {"upstream": UPSTREAM_LOADER, "student_config": to_dict(self.student.config),
                "encoder_prefix": "student.", "dvcc": {"teacher_layers": self.layers}}
        if self.cfg.loss != "none":
            meta["dvcc"]["layer_weights"] = [round(float(w), 6) for w in self.layer_weights.logits.detach().softmax(0)]
        return meta


# ----------------------------------------------------------------------------- end to end


def load_teacher(path: str | Path, need_codebook: bool):
    """``(upstream, codebook or None)``. With a codebook the directory must hold a transformers
    ``Wav2Vec2ForPreTraining`` (quantizer weights included) or an ``s3kit pretrain wav2vec2``
    checkpoint, whose ``wav2vec2`` encoder is the upstream; or an s3kit feature codebook
    (:mod:`s3kit.methods.feature_codebook`: a Gumbel codebook learned on a frozen teacher, e.g.
    ``src/s3kit/assets/demo_codebook_teacher``), whose teacher is the upstream."""
    import json

    from s3kit.methods.feature_codebook import is_feature_codebook, load_feature_codebook
    from s3kit.upstream import load_upstream
    from s3kit.upstream.hf import HFUpstream

    if is_feature_codebook(path):
        up, codebook = load_feature_codebook(path)
        return up, (codebook if need_codebook else None)
    if not need_codebook:
        return load_upstream(path), None
    cfg_file = Path(path) / "config.json"
    meta = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    if meta.get("model_kind"):  # an s3kit pretraining checkpoint
        from s3kit.methods.pretrain import load_pretrained

        if meta["model_kind"] != "wav2vec2":
            raise ValueError(f"{path}: a {meta['model_kind']} checkpoint has no codebook; the teacher codebook needs "
                             f"wav2vec 2.0 (or use codebook=none)")
        model, _ = load_pretrained(path)
        model.eval()
        return HFUpstream(model.wav2vec2, name=Path(str(path)).name), TeacherCodebook(model)
    from transformers import Wav2Vec2ForPreTraining
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model, info = Wav2Vec2ForPreTraining.from_pretrained(str(path), output_loading_info=True)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{path}: the teacher codebook needs a transformers wav2vec 2.0 directory "
                                f"saved from Wav2Vec2ForPreTraining [{e}]") from e
    missing = [k for k in info.get("missing_keys", []) if k.startswith("quantizer.")]
    if missing:
        raise ValueError(f"{path}: no quantizer weights ({missing}); the teacher codebook needs a checkpoint of "
                         f"Wav2Vec2ForPreTraining (e.g. facebook/wav2vec2-base), not of Wav2Vec2Model / ForCTC. "
                         f"Use codebook=none for a teacher without a codebook.")
    model.eval()
    return HFUpstream(model.wav2vec2, name=Path(str(path)).name), TeacherCodebook(model)


@torch.no_grad()
def fbank_stats(student: KWSStudent, cuts, max_cuts: int = 2000, **bad_audio) -> tuple[Tensor, Tensor]:
    """Per-bin mean and std ``[F]`` of the raw fbank over (up to ``max_cuts``) utterances.
    ``bad_audio``: ``on_bad_audio`` / ``max_bad_share`` for :func:`~s3kit.data.loader.make_loader`."""
    from s3kit.data.loader import make_loader

    subset = cuts.subset(first=max_cuts) if len(cuts) > max_cuts else cuts
    longest = max(c.duration for c in subset)
    s1 = s2 = None
    n = 0
    for batch in make_loader(subset, max_duration=max(60.0, longest), shuffle=False, **bad_audio):
        feats, flen = student.front_end.raw(batch.wavs, batch.lengths)
        valid = torch.arange(feats.shape[1])[None] < flen[:, None]
        x = feats[valid].double()  # (frames, F)
        s1 = x.sum(0) if s1 is None else s1 + x.sum(0)
        s2 = x.pow(2).sum(0) if s2 is None else s2 + x.pow(2).sum(0)
        n += x.shape[0]
    mean = s1 / n
    return mean.float(), (s2 / n - mean.pow(2)).clamp_min(0).sqrt().float()


def _cache_file(path: Path | None, kind: str, module: nn.Module, cuts) -> Path | None:
    """``<path>/<kind>-<hash of weights + manifest>.safetensors``, or None without a cache dir."""
    if path is None:
        return None
    import hashlib

    from s3kit.train.cache import manifest_hash, teacher_hash

    h = hashlib.sha256(manifest_hash(cuts).encode())
    h.update(teacher_hash(getattr(module, "model", module)).encode())
    return Path(path) / f"{kind}-{h.hexdigest()[:24]}.safetensors"


def _save_cache(target: Path, tensors: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    kind = target.name.split("-")[0]
    for old in target.parent.glob(f"{kind}-*.safetensors"):  # stale: another teacher or manifest
        old.unlink()
    tmp = target.with_name(f".tmp-{target.name}")
    save_file(tensors, str(tmp))
    tmp.replace(target)


@torch.no_grad()
def build_teacher_cache(cuts, teacher=None, codebook: TeacherCodebook | None = None, path: str | Path | None = None,
                        progress: bool = True, **bad_audio) -> tuple[dict, dict]:
    """``({id: [L, D] time-averaged teacher states (all of them)}, {id: [Tt, G] teacher codes})``
    over ``cuts``, each utterance run alone (what the live teacher computes), computed once and
    stored under ``path`` (``pooled-<key>`` / ``codes-<key>.safetensors``, keyed by the weights
    and the manifest) so that every Table 1 row reuses them. Pooled states are tiny: L x D floats
    per utterance. ``bad_audio``: ``on_bad_audio`` / ``max_bad_share`` for the loader (skipped
    cuts have no entry)."""
    from safetensors.torch import load_file

    from s3kit.data.loader import make_loader

    files = {"pooled": _cache_file(path, "pooled", teacher, cuts) if teacher is not None else None,
             "codes": _cache_file(path, "codes", codebook, cuts) if codebook is not None else None}
    out: dict[str, dict[str, Tensor]] = {"pooled": {}, "codes": {}}
    todo = []
    for kind, module in (("pooled", teacher), ("codes", codebook)):
        if module is None:
            continue
        if files[kind] is not None and files[kind].exists():
            out[kind] = load_file(str(files[kind]))
        else:
            todo.append(kind)
    if todo:
        longest = max(c.duration for c in cuts)
        it = make_loader(cuts, max_duration=max(60.0, longest), max_cuts=32, shuffle=False, **bad_audio)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="teacher cache", dynamic_ncols=True)
        for batch in it:
            if "pooled" in todo:
                p = teacher(batch.wavs, batch.lengths).pooled().float()  # (B, L, D)
                for i, cid in enumerate(batch.ids):
                    out["pooled"][cid] = p[i].clone()
            if "codes" in todo:
                c, tlen = codebook.codes(batch.wavs, batch.lengths)
                for i, cid in enumerate(batch.ids):
                    out["codes"][cid] = c[i, : int(tlen[i])].to(torch.int32).clone()
        for kind in todo:
            if files[kind] is not None:
                _save_cache(files[kind], out[kind])
    return out["pooled"], out["codes"]


def distill_dvcc(teacher: str | Path | None, manifest, cfg: DVCCConfig = DVCCConfig(), val_manifest=None,
                 cache_dir: str | Path | None = None) -> TrainResult:
    """Distil ``teacher`` into a KWS student on ``manifest`` (CutSet or path) into ``cfg.train.out_dir``.

    The student's fbank statistics come from the training manifest. With ``loss=none`` and
    ``codebook=none`` (the no-KD baseline) nothing is trained: the randomly initialised student
    (with its statistics) is saved to ``<out_dir>/student`` and returned as the checkpoint.
    Every checkpoint loads with ``s3kit.load_upstream(dir)`` (the student only).
    """
    from s3kit.data.loader import make_loader
    from s3kit.data.manifest import load_cuts
    from s3kit.train.trainer import setup_distributed, train

    _, _, device = setup_distributed(cfg.train.device)
    cuts = load_cuts(manifest) if isinstance(manifest, (str, Path)) else manifest
    torch.manual_seed(cfg.train.seed)
    student = KWSStudent(config_for(cfg.student))
    student.front_end.set_stats(*fbank_stats(student, cuts, cfg.stats_cuts, **cfg.train.bad_audio_options))
    out_dir = Path(cfg.train.out_dir)
    if not cfg.distills:
        path = save_student(out_dir / "student", student, note="no distillation (baseline w/o KD)")
        return TrainResult(step=0, losses={}, val=[], checkpoint=path, out_dir=out_dir)
    up = codebook = None
    if cfg.needs_teacher:
        if teacher is None:
            raise ValueError(f"loss={cfg.loss}, codebook={cfg.codebook} need a teacher")
        up, codebook = load_teacher(teacher, need_codebook=cfg.codebook in ("teacher", "scratch"))
        up.to(device)
        if codebook is not None:
            codebook.to(device)
    layers = parse_layers(cfg.teacher_layers, up.num_layers) if cfg.loss != "none" else []
    vcuts = None
    if val_manifest is not None:
        vcuts = load_cuts(val_manifest) if isinstance(val_manifest, (str, Path)) else val_manifest
    pooled = codes = None
    if cfg.cache and up is not None:
        root = Path(cache_dir) if cache_dir is not None else out_dir / "teacher_cache"
        all_cuts = cuts if vcuts is None else cuts + vcuts
        pooled, codes = build_teacher_cache(all_cuts, up if layers else None,
                                            codebook if cfg.codebook == "teacher" else None, root,
                                            progress=cfg.train.progress, **cfg.train.bad_audio_options)
    method = DVCCDistiller(student, cfg, teacher=up, codebook=codebook, pooled_cache=pooled, code_cache=codes)
    longest = max(c.duration for c in cuts)
    loader = make_loader(cuts, max_duration=max(cfg.max_duration, longest), max_cuts=cfg.batch_size,
                         shuffle=True, seed=cfg.train.seed)
    val = None
    if vcuts is not None:
        vlong = max(c.duration for c in vcuts)
        val = make_loader(vcuts, max_duration=max(cfg.max_duration, vlong), max_cuts=cfg.batch_size, shuffle=False)
    return train(method, loader, cfg.train, val_data=val, config=cfg)


__all__ = ["ALPHA", "BETA", "GAMMA", "DVCCConfig", "DVCCDistiller", "LayerWeights", "TeacherCodebook",
           "batch_view_loss", "build_teacher_cache", "distill_dvcc", "dvcc_loss", "feature_view_loss",
           "parse_layers", "sample_negatives", "scaled_to_one", "teacher_codebook_loss", "utterance_distill_loss"]
