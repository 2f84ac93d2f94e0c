"""Self-supervised contrastive rewiring of a pretrained encoder (Yang et al., 2023).

Dimension legend: ``N`` pairs (anchors), ``M`` extra negatives, ``D`` width, ``B`` batch,
``S`` samples, ``L`` hidden states, ``T`` frames.

An utterance is embedded as the plain average of *all* hidden states (CNN/projection output and
every transformer layer), then the mean over valid frames (§2 "Speech Representation"; the
official code's s3prl featurizer has zero, never-trained layer weights, i.e. a plain average,
REFERENCE-NOTES.md §B). Each anchor ``s_i`` gets a positive view ``s'_i``:

* **Twin**: the same waveform with one contiguous span of 20 % of its samples zeroed, the start
  uniform in the first four fifths (App. B); the encoder's dropout (0.1) perturbs both views.
* **Neutral**: a monotone TTS rendering of the transcript, made offline and cached (§2.1).
* **Mixed**: Twin or Neutral, a uniform choice per example (§2.1). Its negatives for ``s_i`` are
  the union of Twin's and Neutral's (§2.1): the other utterances, their twins *and* their neutral
  renderings, so every item's other view is encoded too; ``mixed_negatives="chosen"`` keeps the
  official code's cheaper set (each other utterance contributes only the view it drew).

The loss is InfoNCE with cosine similarity / τ (§2, τ = 0.04, App. B). Negatives of ``s_i`` are
the other anchors and the other anchors' views (§2.1 "Negative Pairs"); with the whole batch of
8 items (4 pairs) taken as anchors in turn this is exactly NT-Xent (:func:`info_nce`). All encoder
parameters are trained with AdamW, lr 1e-6, weight decay 0.01, no schedule, no clipping; audio
longer than 90 k samples is split in two equal halves and one is picked at random (App. B).

Deviations from the official code, on purpose (docs/rewire.md): ``optimizer.zero_grad()`` is called
every update (the official script never calls it, so its gradients accumulate over the whole run);
LayerDrop is off (s3kit collects hidden states with hooks, which a skipped layer would misalign);
the 4 pairs are encoded in one padded batch instead of one utterance at a time (s3kit's upstreams
give the same states padded or not); the Neutral TTS is espeak-ng / flite, not Festival.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s3kit.data.augment import TWIN_FRACTION, span_mask
from s3kit.train.trainer import TrainConfig
from s3kit.upstream.base import Hidden, Upstream

TAU = 0.04  # §3.1 / App. B: InfoNCE temperature
LR = 1e-6  # §3.1 / App. B
WEIGHT_DECAY = 0.01  # official code: AdamW(weight_decay=0.01) (REFERENCE-NOTES.md §B)
PAIRS = 4  # App. B: batch of 4 utterances + their 4 views = 8
DROPOUT = 0.1  # App. B: "we use dropout = 0.1 of WAV2VEC 2 for all training instances"
MAX_SAMPLES = 90_000  # App. B: audio above 90 k samples is split in two equal halves
SKIP_SAMPLES = 180_000  # §3.1: the rewiring set keeps utterances under 180 k samples
# App. B: ≈ 1, 7 and 3 epochs (1.7k, 11.6k, 5.0k updates on 6.6k LibriSpeech utterances)
PAPER_EPOCHS = {"twin": 1.0, "neutral": 7.0, "mixed": 3.0}
MODES = ("twin", "neutral", "mixed")
# The paper uses Festival's default voice (kal_diphone); flite's kal16 is that same diphone voice.
NEUTRAL_VOICE = "flite:kal16"


# ----------------------------------------------------------------------------- loss (§2)


def info_nce(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, tau: float = TAU,
             negative_owner: Tensor | None = None) -> Tensor:
    """InfoNCE with cosine similarity / τ, mean over anchors (§2, one direction).

    ``L = -1/N sum_i log exp(cos(a_i, p_i)/τ) / [ sum_j exp(cos(a_i, p_j)/τ)
    + sum_{j≠i} exp(cos(a_i, a_j)/τ) + sum_{m: owner(m)≠i} exp(cos(a_i, n_m)/τ) ]``

    Args:
        anchors, positives: ``[N, D]``; row i of each is a positive pair. For anchor i the other
            rows of *both* are negatives (the other utterances and their views, §2.1).
        negatives: optional extra negatives ``[M, D]``.
        tau: temperature.
        negative_owner: optional ``[M]`` pair index each extra negative belongs to (another view
            of that utterance); anchor i skips its own (§2.1: ``N_i`` holds views of ``s_j``, j≠i).
            None: every extra negative counts for every anchor.
    Returns: a scalar.

    NT-Xent (``pytorch_metric_learning.NTXentLoss`` on ``cat([anchors, positives])`` with labels
    ``[0..N-1, 0..N-1]``, what the official code calls) uses every one of the 2N embeddings as an
    anchor, so ``NTXent(a, p) = (info_nce(a, p) + info_nce(p, a)) / 2`` (:func:`nt_xent`).
    """
    if anchors.ndim != 2 or anchors.shape != positives.shape:
        raise ValueError(f"anchors {tuple(anchors.shape)} and positives {tuple(positives.shape)} must both be [N, D]")
    if negatives is not None and (negatives.ndim != 2 or negatives.shape[1] != anchors.shape[1]):
        raise ValueError(f"negatives {tuple(negatives.shape)} must be [M, {anchors.shape[1]}]")
    if tau <= 0:
        raise ValueError(f"tau={tau}: the temperature must be > 0")
    if negative_owner is not None and (negatives is None or negative_owner.shape != (negatives.shape[0],)):
        raise ValueError("negative_owner needs one pair index per extra negative")
    n = anchors.shape[0]
    a = F.normalize(anchors.float(), dim=-1)
    others = [F.normalize(positives.float(), dim=-1), a]
    if negatives is not None and negatives.shape[0]:
        others.append(F.normalize(negatives.float(), dim=-1))
    logits = a @ torch.cat(others).T / tau  # (N, N + N + M): positives, anchors, extra negatives
    self_sim = torch.zeros_like(logits, dtype=torch.bool)
    self_sim[torch.arange(n), n + torch.arange(n)] = True  # an anchor is not its own negative
    if negative_owner is not None and negatives.shape[0]:  # nor is another view of its own utterance
        own = negative_owner.to(logits.device)[None, :] == torch.arange(n, device=logits.device)[:, None]
        self_sim[:, 2 * n:] = own
    logits = logits.masked_fill(self_sim, float("-inf"))
    return F.cross_entropy(logits, torch.arange(n, device=logits.device))


def nt_xent(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, tau: float = TAU,
            negative_owner: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE (NT-Xent): both members of each pair serve as anchors; ``[N, D]`` -> scalar."""
    return 0.5 * (info_nce(anchors, positives, negatives, tau, negative_owner)
                  + info_nce(positives, anchors, negatives, tau, negative_owner))


def utterance_embedding(hidden: Hidden) -> Tensor:
    """Plain average over all hidden states, then mean over valid frames: ``[B, D]`` (§2)."""
    sizes = {s.shape[-1] for s in hidden.states}
    if len(sizes) != 1:
        raise ValueError(f"rewiring averages all hidden states, which need one width; got {sorted(sizes)}")
    return hidden.pooled().mean(1)  # (B, L, D) -> (B, D); pooling is linear so the order does not matter


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class RewireConfig:
    """Rewiring options; defaults are the paper's (§3.1, App. B) and the official code's (§B notes).

    mode: twin | neutral | mixed (the positive view).
    symmetric: NT-Xent over the whole batch of 2 x ``pairs`` items (official code, and the paper's
        sum over the batch of 8); False: only the originals are anchors (:func:`info_nce`).
    mixed_negatives: ``union`` (§2.1: Mixed's negatives are the union of Twin's and Neutral's, so
        the other items' twins *and* neutrals are negatives; one more forward per item) or
        ``chosen`` (official code ``n_mirror_mix.py``: each item contributes only the view it drew).
    dropout: p of every dropout module in the encoder while rewiring (None: the model's own).
    spec_augment: transformers time masking of the projected features in train mode (None: the
        model's own ``apply_spec_augment``, active in the official code; False by default here
        because the paper names only span masking and dropout).
    max_samples: longer audio is halved, one half at random; skip_samples: longer cuts are dropped.
    epochs / updates: length of rewiring; ``updates`` wins when set, else ``epochs`` (None: the
        paper's per mode) x utterances / ``pairs``. Either sets ``train.total_steps``.
    neutral_voice: ``engine:voice`` for Neutral renderings made from transcripts (``flite:kal16``
        is Festival's default diphone voice, the paper's TTS); neutral_cache: where they are kept.
    tts: synthesise missing Neutral renderings from transcripts (False: a missing one is an error).
    """

    mode: Literal["twin", "neutral", "mixed"] = "twin"
    tau: float = TAU
    pairs: int = PAIRS
    span: float = TWIN_FRACTION
    dropout: float | None = DROPOUT
    spec_augment: bool | None = False
    symmetric: bool = True
    mixed_negatives: Literal["union", "chosen"] = "union"
    max_samples: int = MAX_SAMPLES
    skip_samples: int | None = SKIP_SAMPLES
    epochs: float | None = None
    updates: int | None = None
    neutral_voice: str = NEUTRAL_VOICE
    neutral_cache: str = "~/.cache/s3kit/neutral"
    tts: bool = True
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        out_dir="runs/rewire", total_steps=1700, lr=LR, warmup=0, schedule="constant", optimizer="adamw",
        betas=(0.9, 0.999), eps=1e-8, weight_decay=WEIGHT_DECAY, clip=None, amp=False,  # torch AdamW defaults
        log_every=10, val_every=500, save_every=1000))

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: choose one of {', '.join(MODES)}")
        if self.pairs < 2:
            raise ValueError(f"pairs={self.pairs}: contrastive learning needs at least 2 pairs per batch")
        if not 0.0 < self.span < 1.0:
            raise ValueError(f"span={self.span}: the masked fraction must be in (0, 1)")
        if self.tau <= 0:
            raise ValueError(f"tau={self.tau}: must be > 0")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout}: must be in [0, 1)")
        if self.max_samples < 400:
            raise ValueError(f"max_samples={self.max_samples}: too short for the encoder's CNN")
        if self.mixed_negatives not in ("union", "chosen"):
            renamed = " ('both' is now called 'union')" if self.mixed_negatives == "both" else ""
            raise ValueError(f"mixed_negatives={self.mixed_negatives!r}: 'union' (paper §2.1) or 'chosen' "
                             f"(official code){renamed}")
        if self.updates is not None and self.updates < 1:
            raise ValueError(f"updates={self.updates}: must be >= 1")

    def total_updates(self, num_utterances: int) -> int:
        """Optimiser updates for a rewiring set of ``num_utterances``."""
        if self.updates is not None:
            return self.updates
        epochs = PAPER_EPOCHS[self.mode] if self.epochs is None else self.epochs
        return max(1, math.ceil(epochs * num_utterances / self.pairs))


# ----------------------------------------------------------------------------- positives


class NeutralMissingError(KeyError):
    """A cut has no Neutral rendering and none can be made; the message names the cut and the fix."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _voice(spec: str):
    from s3kit.data.tts import ENGINES, Voice

    engine, _, name = spec.partition(":")
    if engine not in ENGINES or not name:
        raise ValueError(f"neutral_voice={spec!r}: write it as engine:voice with engine in {list(ENGINES)} "
                         f"(e.g. flite:kal16 or espeak:en-us)")
    return Voice(engine, name, "male", "american")


def _text(cut) -> str | None:
    sups = getattr(cut, "supervisions", None) or []
    text = sups[0].text if sups else None
    return text.strip() if text and text.strip() else None


class NeutralBank:
    """Neutral renderings by cut id: from a manifest of renderings (a supervision's ``neutral_of``
    label, as :mod:`s3kit.data.synth` writes, or else the rendering's own cut id) and from TTS of
    transcripts, cached as 16 kHz FLAC under ``cache`` keyed by voice and text.

    ``get(cut)`` returns float32 ``[S]``; a cut with neither raises :class:`NeutralMissingError`.
    """

    def __init__(self, manifest=None, voice: str = NEUTRAL_VOICE, cache: str | Path = "~/.cache/s3kit/neutral",
                 tts: bool = True):
        from s3kit.data.manifest import get_label, load_cuts

        self.cuts: dict[str, object] = {}
        self.files: dict[str, Path] = {}
        self.voice = voice
        self.cache = Path(cache).expanduser()
        self.tts = tts
        self.source = str(manifest) if isinstance(manifest, (str, Path)) else None
        if manifest is not None:
            for cut in load_cuts(manifest) if isinstance(manifest, (str, Path)) else manifest:
                key = get_label(cut, "neutral_of")
                self.cuts[str(key) if key else cut.id] = cut

    def __contains__(self, cut) -> bool:
        return cut.id in self.cuts or cut.id in self.files

    def _tts_path(self, text: str) -> Path:
        key = hashlib.sha1(json.dumps([self.voice, "monotone", text]).encode()).hexdigest()
        return self.cache / key[:2] / f"{key}.flac"

    def _missing(self, cut, why: str) -> NeutralMissingError:
        where = f" in {self.source}" if self.source else ""
        return NeutralMissingError(
            f"cut '{cut.id}': no Neutral rendering{where} and {why}. Fix: give a neutral manifest with a cut whose "
            f"id or 'neutral_of' label is '{cut.id}', or put the transcript in the cut's supervision text"
            + ("" if self.tts else " and allow tts=true") + ", or rewire with mode twin.")

    def prepare(self, cuts, progress: bool = True) -> int:
        """Check every cut has a rendering, synthesising (and caching) missing ones from transcripts
        up front (the paper renders offline). Returns how many were synthesised now."""
        from tqdm.auto import tqdm

        todo = []
        for cut in cuts:
            if cut.id in self.cuts or cut.id in self.files:
                continue
            text = _text(cut)
            if text is None:
                raise self._missing(cut, "it has no transcript")
            if not self.tts:
                raise self._missing(cut, "tts is off")
            path = self._tts_path(text)
            if path.exists():
                self.files[cut.id] = path
            else:
                todo.append((cut.id, text, path))
        if todo:
            from s3kit.audio import save
            from s3kit.data.tts import synthesize

            voice = _voice(self.voice)
            for cid, text, path in tqdm(todo, desc=f"neutral TTS ({self.voice})", unit="utt", disable=not progress):
                path.parent.mkdir(parents=True, exist_ok=True)
                wav = synthesize(text.lower(), voice, monotone=True)  # official code lower-cases the text
                tmp = path.with_name(path.stem + ".tmp.flac")
                save(tmp, wav)
                tmp.replace(path)
                self.files[cid] = path
        return len(todo)

    def get(self, cut) -> np.ndarray:
        """The Neutral rendering of ``cut`` as float32 mono 16 kHz ``[S]``."""
        if cut.id in self.cuts:
            from s3kit.data.loader import load_cut_audio

            return load_cut_audio(self.cuts[cut.id])
        if cut.id not in self.files:
            self.prepare([cut], progress=False)
        from s3kit.audio import load

        return load(self.files[cut.id])


def split_long(wav: Tensor, half: int, max_samples: int = MAX_SAMPLES) -> Tensor:
    """``wav [S]`` unchanged when ``S <= max_samples``, else its first (``half=0``) or second half (App. B)."""
    n = wav.shape[-1]
    if n <= max_samples:
        return wav
    mid = n // 2
    return wav[:mid] if half == 0 else wav[mid : 2 * mid]


def twin(wav: Tensor, span: float = TWIN_FRACTION, rng=None) -> Tensor:
    """The Twin view: ``wav [S]`` with ``int(S·span)`` consecutive samples zeroed, start uniform in
    ``[0, S - int(S·span))`` (= the first four fifths for span 0.2, App. B)."""
    return span_mask(wav, span, rng)


# ----------------------------------------------------------------------------- the method


def _pad(wavs: list[Tensor]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([w.shape[0] for w in wavs], dtype=torch.long, device=wavs[0].device)
    return torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True), lengths


def _dropout_rates(module: nn.Module) -> dict[str, float]:
    """``{module name: p}`` of every dropout: ``nn.Dropout`` modules and the float ``dropout``
    attribute transformers attention modules pass to their functional attention dropout."""
    rates = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.Dropout):
            rates[name] = float(m.p)
        elif isinstance(getattr(m, "dropout", None), float):
            rates[name] = m.dropout
    return rates


def _set_dropout(module: nn.Module, rates: dict[str, float] | float) -> None:
    for name, m in module.named_modules():
        if isinstance(rates, dict) and name not in rates:
            continue
        p = rates[name] if isinstance(rates, dict) else rates
        if isinstance(m, nn.Dropout):
            m.p = p
        elif isinstance(getattr(m, "dropout", None), float):
            m.dropout = p


class Rewire(nn.Module):
    """The training method: ``step(batch) -> {"loss", "pos_cos", "neg_cos", "top1"}`` for the trainer.

    Args:
        upstream: the encoder to rewire (every parameter is trained).
        cfg: :class:`RewireConfig`.
        neutral: a :class:`NeutralBank` (required for neutral / mixed).
    """

    def __init__(self, upstream: Upstream, cfg: RewireConfig = RewireConfig(), neutral: NeutralBank | None = None):
        super().__init__()
        if cfg.mode != "twin" and neutral is None:
            raise ValueError(f"mode {cfg.mode} needs Neutral renderings: pass a NeutralBank")
        self.upstream = upstream
        self.cfg = cfg
        self.neutral = neutral
        if cfg.dropout is not None:
            _set_dropout(upstream, cfg.dropout)
        model = getattr(upstream, "model", None)
        if model is not None and cfg.spec_augment is not None and hasattr(model.config, "apply_spec_augment"):
            model.config.apply_spec_augment = cfg.spec_augment
        if model is not None and hasattr(upstream, "spec_augment"):  # HFUpstream masks only when told to
            upstream.spec_augment = bool(getattr(model.config, "apply_spec_augment", False))
        self.upstream.requires_grad_(True)

    def embed(self, wavs: list[Tensor]) -> Tensor:
        """Utterance embeddings ``[len(wavs), D]`` of unpadded waveforms, one padded forward."""
        padded, lengths = _pad(wavs)
        return utterance_embedding(self.upstream(padded, lengths))

    def views(self, batch) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[str], list[int]]:
        """Per item: the anchor, its positive view, an optional extra negative (its other view under
        Mixed ``union``), the view kind; and the item each extra negative belongs to.
        Randomness (half, view, span start) comes from torch's global RNG, which the trainer
        checkpoints, so a resumed run draws the same views."""
        wavs, lengths, cuts = batch.wavs, batch.lengths, batch.cuts
        cfg = self.cfg
        anchors, positives, extra, kinds, owners = [], [], [], [], []
        for i, n in enumerate(lengths.tolist()):
            half = int(torch.randint(2, ()))
            wav = split_long(wavs[i, : int(n)], half, cfg.max_samples)
            kind = cfg.mode if cfg.mode != "mixed" else ("twin", "neutral")[int(torch.randint(2, ()))]
            want = {kind} | ({"twin", "neutral"} if cfg.mode == "mixed" and cfg.mixed_negatives == "union" else set())
            made = {}
            if "twin" in want:
                made["twin"] = twin(wav, cfg.span, int(torch.randint(2**31 - 1, ())))
            if "neutral" in want:
                neu = torch.from_numpy(self.neutral.get(cuts[i])).to(wav.device)
                made["neutral"] = split_long(neu, half, cfg.max_samples)  # same half as the anchor (official code)
            anchors.append(wav)
            positives.append(made.pop(kind))
            extra.extend(made.values())
            owners.extend([i] * len(made))
            kinds.append(kind)
        return anchors, positives, extra, kinds, owners

    def losses(self, batch) -> dict[str, Tensor]:
        if len(batch.lengths) < 2:
            raise ValueError(f"a rewiring batch needs >= 2 utterances, got {len(batch.lengths)} "
                             "(the loader should drop incomplete batches)")
        anchors, positives, extra, kinds, owners = self.views(batch)
        n = len(anchors)
        emb = self.embed(anchors + positives + extra)
        a, p = emb[:n], emb[n : 2 * n]
        neg = emb[2 * n :] if extra else None
        owner = torch.tensor(owners, dtype=torch.long) if extra else None
        loss_fn = nt_xent if self.cfg.symmetric else info_nce
        loss = loss_fn(a, p, neg, self.cfg.tau, owner)
        with torch.no_grad():
            an, pn = F.normalize(a.float(), dim=-1), F.normalize(p.float(), dim=-1)
            sim = an @ pn.T  # (N, N)
            off = ~torch.eye(n, dtype=torch.bool, device=sim.device)
            out = {
                "loss": loss,
                "pos_cos": sim.diagonal().mean(),
                "neg_cos": sim[off].mean(),
                "top1": (sim.argmax(1) == torch.arange(n, device=sim.device)).float().mean(),
                "twin_share": torch.tensor(sum(k == "twin" for k in kinds) / n),
            }
        return out

    def step(self, batch) -> dict[str, Tensor]:
        return self.losses(batch)

    def validate(self, batch) -> dict[str, Tensor]:
        return self.losses(batch)

    def checkpoint_meta(self) -> dict:
        return {"rewire": {"mode": self.cfg.mode, "upstream_class": type(self.upstream).__name__}}


# ----------------------------------------------------------------------------- export


def save_upstream(upstream: Upstream, out_dir: str | Path) -> Path:
    """Write ``upstream`` so that ``s3kit.load_upstream(out_dir)`` rebuilds it: a plain transformers
    directory (``save_pretrained``) for transformers encoders (DistilHuBERT students lose their
    heads), an s3kit checkpoint for MelHuBERT."""
    from s3kit.upstream.hf import HFUpstream

    out_dir = Path(out_dir)
    body = getattr(upstream, "body", None)  # DistilStudent wraps an HFUpstream
    hf = upstream if isinstance(upstream, HFUpstream) else body if isinstance(body, HFUpstream) else None
    if hf is not None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        out_dir.mkdir(parents=True, exist_ok=True)
        hf.model.save_pretrained(out_dir)
        return out_dir
    from s3kit.models import melhubert

    if isinstance(upstream, melhubert.MelHubertUpstream):
        return melhubert.save_upstream(out_dir, upstream.encoder)
    raise TypeError(f"cannot save a rewired {type(upstream).__name__}: rewiring supports transformers "
                    f"HuBERT / wav2vec 2.0 / WavLM and s3kit MelHuBERT encoders")


def _restore_inference_settings(upstream: Upstream, original: dict) -> None:
    """Put back the dropout rates and SpecAugment flag the model came with before saving it."""
    _set_dropout(upstream, original["dropout"])
    model = getattr(upstream, "model", None)
    if model is not None and original.get("spec_augment") is not None:
        model.config.apply_spec_augment = original["spec_augment"]
    if original.get("upstream_spec_augment") is not None:
        upstream.spec_augment = original["upstream_spec_augment"]


# ----------------------------------------------------------------------------- end to end


def _load_cuts(manifest):
    from s3kit.data.manifest import load_cuts

    return load_cuts(manifest) if isinstance(manifest, (str, Path)) else manifest


def find_neutral_manifest(manifest) -> Path | None:
    """The synthetic corpus's sibling of a sentences manifest: ``sentences_neutral_<split>.jsonl.gz``."""
    if not isinstance(manifest, (str, Path)):
        return None
    p = Path(manifest)
    if not p.name.startswith("sentences_") or p.name.startswith("sentences_neutral_"):
        return None
    sibling = p.with_name("sentences_neutral_" + p.name[len("sentences_"):])
    return sibling if sibling.exists() else None


def rewire(model, manifest, cfg: RewireConfig = RewireConfig(), out_dir: str | Path | None = None,
           neutral_manifest=None, val_manifest=None):
    """Rewire ``model`` (an :class:`Upstream`, or a name / path for ``load_upstream``) on the
    unlabelled ``manifest`` (CutSet or path); returns the directory of the rewired upstream,
    ``<out_dir>/model`` (a transformers directory when the input was one), which
    ``s3kit.load_upstream`` loads. ``out_dir`` defaults to ``cfg.train.out_dir``; training
    checkpoints, ``metrics.csv`` and ``rewire.json`` (config, updates, first/last loss) go there too.

    ``neutral_manifest``: renderings for neutral / mixed (default: the synthetic corpus's
    ``sentences_neutral_*`` sibling when ``manifest`` is a ``sentences_*`` manifest); cuts without
    one are synthesised from their transcript (``cfg.tts``) or fail with :class:`NeutralMissingError`.
    """
    from s3kit.config import to_dict
    from s3kit.data.loader import make_loader
    from s3kit.train.trainer import train
    from s3kit.upstream import load_upstream

    out_dir = Path(out_dir if out_dir is not None else cfg.train.out_dir)
    upstream = load_upstream(model) if isinstance(model, (str, Path)) else model
    cuts = _load_cuts(manifest)
    n_all = len(cuts)
    if cfg.skip_samples is not None:
        from lhotse import CutSet

        cuts = CutSet.from_cuts([c for c in cuts if c.num_samples is None or c.num_samples <= cfg.skip_samples])
    if len(cuts) < cfg.pairs:
        raise ValueError(f"{manifest}: {len(cuts)} usable utterances (of {n_all}; longer than "
                         f"{cfg.skip_samples} samples are skipped), fewer than one batch of {cfg.pairs}")
    bank = None
    if cfg.mode != "twin":
        neutral_manifest = neutral_manifest if neutral_manifest is not None else find_neutral_manifest(manifest)
        bank = NeutralBank(neutral_manifest, cfg.neutral_voice, cfg.neutral_cache, cfg.tts)
        bank.prepare(cuts, progress=cfg.train.progress)  # fails before training when one is missing
    original = {"dropout": _dropout_rates(upstream),
                "spec_augment": getattr(getattr(getattr(upstream, "model", None), "config", None), "apply_spec_augment", None),
                "upstream_spec_augment": getattr(upstream, "spec_augment", None)}
    method = Rewire(upstream, cfg, bank)
    updates = cfg.total_updates(len(cuts))
    tcfg = dataclasses.replace(cfg.train, out_dir=str(out_dir), total_steps=updates)
    longest = max(c.duration for c in cuts)
    loader = make_loader(cuts, max_duration=cfg.pairs * longest + 1.0, max_cuts=cfg.pairs, shuffle=True,
                         seed=tcfg.seed, drop_last=True)
    val = None
    if val_manifest is not None:
        vcuts = _load_cuts(val_manifest)
        if bank is not None:
            bank.prepare(vcuts, progress=False)
        val = make_loader(vcuts, max_duration=cfg.pairs * max(c.duration for c in vcuts) + 1.0, max_cuts=cfg.pairs,
                          shuffle=False, drop_last=True)
    result = train(method, loader, tcfg, val_data=val, config=dataclasses.replace(cfg, train=tcfg))
    upstream.eval()
    _restore_inference_settings(upstream, original)
    model_dir = save_upstream(upstream, out_dir / "model")
    losses = result.losses
    first = [losses[s] for s in sorted(losses)[: max(1, len(losses) // 10)]]
    last = [losses[s] for s in sorted(losses)[-max(1, len(losses) // 10):]]
    info = {"config": to_dict(dataclasses.replace(cfg, train=tcfg)), "model": str(model_dir),
            "source": str(model) if isinstance(model, (str, Path)) else getattr(upstream, "name", None),
            "utterances": len(cuts), "skipped_long": n_all - len(cuts), "updates": result.step,
            "loss_first_10pct": float(np.mean(first)) if first else None,
            "loss_last_10pct": float(np.mean(last)) if last else None}
    from s3kit.checkpoint import write_atomic

    write_atomic(out_dir / "rewire.json", json.dumps(info, indent=2))
    return model_dir


# ----------------------------------------------------------------------------- analysis (§3.3)

FRACTIONS = (0.01, 0.05, 0.1)  # §3.1: 1 %, 5 %, 10 % of each task's training set


def geometry(upstreams: dict[str, Upstream], cuts, out_dir: str | Path, label: str = "keyword",
             max_duration: float = 60.0, progress: bool = True) -> dict[str, dict]:
    """Isotropy and a t-SNE map (coloured by ``label``) of each upstream's utterance embeddings
    (:func:`utterance_embedding`: the representation rewiring trains) on ``cuts``.

    Writes ``tsne_<name>.png`` per upstream; returns ``{name: isotropy summary dict}``
    (``log10_isotropy``: the paper's "order of 1e-300" is -300).
    """
    from s3kit.data.manifest import get_label
    from s3kit.eval.embed import utterance_embeddings
    from s3kit.eval.isotropy import isotropy_summary
    from s3kit.eval.tsne import tsne_plot

    cuts = _load_cuts(cuts)
    out_dir = Path(out_dir)
    labels = [str(get_label(c, label, "?")) for c in cuts]
    out = {}
    for name, up in upstreams.items():
        sizes = set(up.hidden_sizes)
        if len(sizes) != 1:
            raise ValueError(f"{name}: hidden states of different widths {sorted(sizes)} cannot be averaged")
        emb = utterance_embeddings(up, cuts, max_duration=max_duration, progress=progress).mean(1)  # (N, D)
        iso = isotropy_summary(emb).to_dict()
        tsne_plot(emb, labels, out_dir / f"tsne_{name}.png",
                  title=f"{name} · log10 IS {iso['log10_isotropy']:.1f}")
        iso["tsne"] = f"tsne_{name}.png"
        out[name] = iso
    return out


def low_resource(upstreams: dict[str, Upstream], task: str, train, dev, test,
                 fractions=FRACTIONS, probe_cfg=None, seeds=(0,)) -> list[dict]:
    """Probe every upstream on ``task`` with each training ``fraction`` (and seed): the paper's
    Table 2 rows ``{fraction, model, seed, metric, test, dev, updates_to_best, updates, num_train}``."""
    from s3kit.eval.probe import ProbeConfig, run_probe

    probe_cfg = probe_cfg if probe_cfg is not None else ProbeConfig()
    rows = []
    for fraction in fractions:
        for name, up in upstreams.items():
            for seed in seeds:
                r = run_probe(up, task, train, dev, test, dataclasses.replace(probe_cfg, fraction=fraction, seed=seed))
                rows.append({"fraction": fraction, "model": name, "seed": seed, "task": task, "metric": r.metric,
                             "higher_is_better": r.higher_is_better, "test": r.test, "dev": r.dev,
                             "updates_to_best": r.updates_to_best, "updates": r.updates, "num_train": r.num_train,
                             "lr": r.lr})
    return rows


def _k(n: float) -> str:
    return f"{n / 1000:.3g}k" if n >= 1000 else f"{n:.0f}"


def summarise_low_resource(rows: list[dict]) -> list[dict]:
    """One entry per (fraction, model, task) of :func:`low_resource` rows, averaged over seeds:
    ``{fraction, model, task, metric, higher_is_better, num_train, test, test_std, updates_to_best}``
    (``test_std`` None for one seed), in fraction order, models in first-seen order."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    tasks = sorted({r["task"] for r in rows})
    out = []
    for fraction in sorted({r["fraction"] for r in rows}):
        for model in models:
            for task in tasks:
                sel = [r for r in rows if r["fraction"] == fraction and r["model"] == model and r["task"] == task]
                if not sel:
                    continue
                scores = np.array([r["test"] for r in sel])
                out.append({"fraction": fraction, "model": model, "task": task, "metric": sel[0]["metric"],
                            "higher_is_better": sel[0]["higher_is_better"], "num_train": sel[0].get("num_train"),
                            "test": float(scores.mean()), "test_std": float(scores.std(ddof=1)) if len(sel) > 1 else None,
                            "updates_to_best": float(np.mean([r["updates_to_best"] for r in sel]))})
    return out


def table2(rows: list[dict]) -> str:
    """Markdown in the layout of the paper's Table 2: one row per (fraction, model), the test metric
    (%) and ⌚ = probe updates to the best dev score; mean ± std over seeds when there are several."""
    summary = summarise_low_resource(rows)
    tasks = sorted({r["task"] for r in summary})
    head = "| Tr. | Model | " + " | ".join(
        f"{t.upper()} {next(r for r in summary if r['task'] == t)['metric']} "
        f"{'↑' if next(r for r in summary if r['task'] == t)['higher_is_better'] else '↓'} | ⌚" for t in tasks) + " |"
    lines = [head, "|---|---|" + "---:|---:|" * len(tasks)]
    for fraction, model in dict.fromkeys((r["fraction"], r["model"]) for r in summary):
        cells = []
        for t in tasks:
            sel = [r for r in summary if r["fraction"] == fraction and r["model"] == model and r["task"] == t]
            if not sel:
                cells += ["", ""]
                continue
            r = sel[0]
            score = f"{100 * r['test']:.2f}" + (f" ± {100 * r['test_std']:.2f}" if r["test_std"] is not None else "")
            cells += [score, _k(r["updates_to_best"])]
        lines.append(f"| {fraction * 100:g}% | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def analyse(upstreams: dict[str, Upstream | str | Path], out_dir: str | Path, geometry_cuts=None,
            label: str = "keyword", task: str | None = None, train=None, dev=None, test=None,
            fractions=FRACTIONS, probe_cfg=None, seeds=(0,), progress: bool = True) -> dict:
    """The paper's analyses for base vs rewired models, written to ``out_dir``:
    ``geometry.json`` + ``tsne_<name>.png`` (isotropy / t-SNE on ``geometry_cuts``, coloured by
    ``label``) and ``table2.md`` + ``table2.json`` (low-resource probes on ``task`` with
    updates-to-best). Either part is skipped when its inputs are None. Returns what it wrote."""
    from s3kit.checkpoint import write_atomic
    from s3kit.upstream import load_upstream

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ups = {n: load_upstream(u) if isinstance(u, (str, Path)) else u for n, u in upstreams.items()}
    for n, u in ups.items():
        u.name = n  # probe results and feature caches are labelled by name
    report: dict = {}
    if geometry_cuts is not None:
        report["geometry"] = geometry(ups, geometry_cuts, out_dir, label=label, progress=progress)
        write_atomic(out_dir / "geometry.json", json.dumps(report["geometry"], indent=2))
    if task is not None:
        if train is None or dev is None or test is None:
            raise ValueError(f"the low-resource table for {task} needs train, dev and test manifests")
        rows = low_resource(ups, task, train, dev, test, fractions, probe_cfg, seeds)
        report["table2"] = rows
        write_atomic(out_dir / "table2.json", json.dumps(rows, indent=2))
        write_atomic(out_dir / "table2.md", table2(rows))
    return report


__all__ = ["FRACTIONS", "MODES", "analyse", "geometry", "low_resource", "summarise_low_resource", "table2", "NeutralBank", "NeutralMissingError", "Rewire", "RewireConfig", "find_neutral_manifest",
           "info_nce", "nt_xent", "rewire", "save_upstream", "split_long", "twin", "utterance_embedding"]
