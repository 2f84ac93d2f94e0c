"""SUPERB-style probing of a frozen upstream: KS, IC, SID, ER (mean-pool + linear), PR (linear
CTC), ASR (BLSTM CTC); learned layer weights; low-resource fractions; updates-to-best.

Dimension legend: ``N`` utterances, ``B`` batch, ``L`` layers, ``T`` frames, ``D`` width,
``K`` intent slots, ``V`` CTC vocabulary (0 = blank).

Protocol (s3prl SUPERB configs, REFERENCE-NOTES §F.2; rewiring paper §4 and App. A/B):
the upstream is frozen and run once (:mod:`s3kit.eval.features_cache`); the probe is a
softmax-weighted sum of all hidden states (or one chosen layer), a projector (256-d; 1024-d and
SpecAugment of the weighted sum for ASR, as s3prl's ``asr/config.yaml``) and the task head, trained with Adam at a constant learning rate, gradient clipping 1, effective
batch 32. Every ``eval_every`` updates the dev metric is computed; the best dev checkpoint
is scored on test, and the update at which dev peaked is reported as **updates-to-best**
(the rewiring paper's convergence measure, its Table 2). ``lr_sweep`` trains one probe per
learning rate of a log-scale grid and keeps the best on dev (SUPERB scores swing with the
learning rate: HuBERT SID 67 % at 1e-4 vs 81 % at 1e-1, s3prl #268).

Label vocabularies are built from train + dev + test, so the output layer has a row for
every class even when a low-resource subset drops one (such classes are simply never learned).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from s3kit.data.manifest import get_label, load_cuts
from s3kit.eval import metrics
from s3kit.eval.features_cache import CachedFeatures, extract_features, manifest_identity_of, upstream_identity
from s3kit.eval.heads import (
    ASR_PROJECTOR_DIM, BLANK, PROJECTOR_DIM, BLSTMCTCHead, FrameCTCHead, ProbeModel, SpecAugment, UtteranceHead,
    WeightedSum, ctc_loss, slot_argmax, slot_cross_entropy,
)

INTENT_SLOTS = ("action", "object", "location")  # Fluent Speech Commands: accuracy needs all three


@dataclass(frozen=True)
class TaskSpec:
    """One SUPERB task: label key, head kind, metric and s3prl's default lr / steps / eval interval,
    projector width and whether its config has a ``specaug`` block."""

    label: str
    kind: Literal["utterance", "intent", "phones", "chars"]
    metric: str
    lr: float
    max_updates: int
    eval_every: int
    proj_dim: int = PROJECTOR_DIM
    specaug: bool = False

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    @property
    def pooled(self) -> bool:
        return self.kind in ("utterance", "intent")


# s3prl legacy downstream configs (REFERENCE-NOTES §F.2 table); ASR = s3prl asr/config.yaml
# (lr 1e-4, 200k steps, eval every 2000, project_dim 1024, specaug on the representations).
TASKS: dict[str, TaskSpec] = {
    "ks": TaskSpec("keyword", "utterance", "accuracy", 1e-4, 200_000, 5000),
    "ic": TaskSpec("intent", "intent", "accuracy", 1e-4, 200_000, 5000),
    "sid": TaskSpec("speaker", "utterance", "accuracy", 1e-4, 200_000, 5000),
    "er": TaskSpec("emotion", "utterance", "accuracy", 1e-4, 30_000, 1000),
    # synthetic ER proxy (speaking style rendered by the TTS voices, not emotion): ER's settings
    "style": TaskSpec("style", "utterance", "accuracy", 1e-4, 30_000, 1000),
    "pr": TaskSpec("phones", "phones", "per", 1e-2, 100_000, 1000),
    "asr": TaskSpec("text", "chars", "wer", 1e-4, 200_000, 2000, proj_dim=ASR_PROJECTOR_DIM, specaug=True),
}

# s3prl maintainers swept 1e-1 .. 1e-7 on a log scale (s3prl #498).
LR_GRID = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)


@dataclass(frozen=True)
class ProbeConfig:
    """Probe options; ``None`` for lr / max_updates / eval_every / proj_dim / specaug means the
    task's s3prl default (projector 256, 1024 for ASR; SpecAugment for ASR only).

    Args:
        layer: probe one hidden state (index into the upstream's states) instead of the weighted sum.
        cache_layers: states to cache and weigh (all cached by default, and the weighted sum then
            spans the upstream's ``weighted_sum_layers``: every state, or M2D-S's transformer
            layers); ``layer`` must be one of them.
        fraction: stratified seeded fraction of train (1 %, 5 %, 10 % in the rewiring paper).
        patience: stop after this many dev evaluations without improvement (None: run all updates).
        lr_sweep: train at every lr of ``lr_grid`` and keep the best on dev.
    """

    lr: float | None = None
    max_updates: int | None = None
    eval_every: int | None = None
    batch_size: int = 32  # s3prl: effective batch 32 for every task (batch x accumulation)
    grad_clip: float = 1.0
    proj_dim: int | None = None
    specaug: bool | None = None  # SpecAugment (s3prl asr/config.yaml values) on the weighted sum in training
    layer: int | None = None
    cache_layers: list[int] | None = None
    fraction: float = 1.0
    seed: int = 0
    patience: int | None = None
    lr_sweep: bool = False
    lr_grid: list[float] = field(default_factory=lambda: list(LR_GRID))
    lstm_hidden: int = 1024  # SUPERB ASR: 2 BLSTM layers of 1024 units, dropout 0.2
    lstm_layers: int = 2
    lstm_dropout: float = 0.2
    cache_dir: str = "~/.cache/s3kit/features"
    checkpoint_dir: str | None = None
    device: str = "auto"
    # unusable audio (s3kit.data.badaudio): None = skip in train, stop in dev / test (they must stay complete)
    on_bad_audio: Literal["error", "skip"] | None = None
    max_bad_share: float = 0.01
    max_duration: float = 60.0  # seconds of audio per upstream batch during feature extraction
    progress: bool = True

    def __post_init__(self):
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction={self.fraction}: must be in (0, 1] (e.g. 0.01, 0.05, 0.1, 1.0)")
        if self.batch_size < 1 or (self.max_updates is not None and self.max_updates < 1):
            raise ValueError("batch_size and max_updates must be >= 1")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr={self.lr}: must be > 0")


@dataclass
class ProbeResult:
    """One probe: test score at the best dev checkpoint, and how it got there."""

    task: str
    upstream: str
    metric: str
    higher_is_better: bool
    test: float
    dev: float
    updates_to_best: int
    updates: int
    lr: float
    fraction: float
    seed: int
    num_train: int
    layers: list[int]
    layer_weights: list[float]
    curve: list[tuple[int, float]]  # (update, dev metric) at each evaluation
    sweep: list[dict] = field(default_factory=list)  # per-lr {lr, dev, test, updates_to_best} under lr_sweep
    checkpoint: str | None = None
    n: int = 0  # test items
    ci_low: float = math.nan  # 95 % interval of ``test``: Wilson (accuracy) or utterance bootstrap (PER / WER)
    ci_high: float = math.nan
    predictions: list[dict] = field(default_factory=list, repr=False)  # per test item, see :func:`predict`
    skipped_audio: list[dict] = field(default_factory=list)  # cuts left out as unusable: {split, cut, file, reason}

    def to_dict(self) -> dict[str, Any]:
        """Everything but the per-item predictions (they go to ``predictions.jsonl.gz``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "predictions"}


# ----------------------------------------------------------------------------------- labels


def _require(cut, key: str, where: str):
    value = get_label(cut, key)
    if value is None or value == "":
        raise ValueError(f"{where}: cut {cut.id!r} has no {key!r} label (expected on its first supervision)")
    return value


def _intent_slots(value, cut_id: str) -> tuple[str, ...]:
    if not isinstance(value, dict) or any(s not in value for s in INTENT_SLOTS):
        raise ValueError(f"cut {cut_id!r}: 'intent' must be a dict with keys {INTENT_SLOTS}, got {value!r}")
    return tuple(str(value[s]) for s in INTENT_SLOTS)


def _tokens(spec: TaskSpec, value) -> list[str]:
    if spec.kind == "phones":
        return str(value).split()
    return list(" ".join(str(value).split()))  # characters, whitespace runs -> one space


class Labels:
    """Maps cuts to targets for one task; vocabularies from every split (see module docstring)."""

    def __init__(self, spec: TaskSpec, splits: dict[str, Any]):
        self.spec = spec
        values = {name: [_require(c, spec.label, name) for c in cuts] for name, cuts in splits.items()}
        every = [v for vs in values.values() for v in vs]
        if spec.kind == "utterance":
            self.classes = sorted({str(v) for v in every})
            self.index = {c: i for i, c in enumerate(self.classes)}
        elif spec.kind == "intent":
            slots = [_intent_slots(get_label(c, spec.label), c.id) for cuts in splits.values() for c in cuts]
            self.slot_classes = [sorted({s[k] for s in slots}) for k in range(len(INTENT_SLOTS))]
            self.slot_index = [{c: i for i, c in enumerate(cl)} for cl in self.slot_classes]
        else:
            self.vocab = sorted({t for v in every for t in _tokens(spec, v)})
            self.token_id = {t: i + 1 for i, t in enumerate(self.vocab)}  # 0 is the CTC blank

    @property
    def output_size(self) -> int:
        if self.spec.kind == "utterance":
            return len(self.classes)
        if self.spec.kind == "intent":
            return sum(self.slot_sizes)
        return len(self.vocab) + 1

    @property
    def slot_sizes(self) -> list[int]:
        return [len(c) for c in self.slot_classes]

    def vocabulary(self) -> dict[str, Any]:
        """What the output units mean, saved with each checkpoint."""
        if self.spec.kind == "utterance":
            return {"classes": self.classes}
        if self.spec.kind == "intent":
            return {"slots": dict(zip(INTENT_SLOTS, self.slot_classes))}
        return {"blank": BLANK, "tokens": self.vocab}  # token i + 1 = vocab[i]

    def target(self, cut):
        value = _require(cut, self.spec.label, "manifest")
        if self.spec.kind == "utterance":
            return self.index[str(value)]
        if self.spec.kind == "intent":
            return [self.slot_index[k][s] for k, s in enumerate(_intent_slots(value, cut.id))]
        return torch.tensor([self.token_id[t] for t in _tokens(self.spec, value)], dtype=torch.long)

    def reference(self, cut) -> str:
        value = _require(cut, self.spec.label, "manifest")
        return " ".join(_tokens(self.spec, value)) if self.spec.kind == "phones" else " ".join(str(value).split())

    def decode(self, ids: list[int]) -> str:
        toks = [self.vocab[i - 1] for i in ids if i != BLANK]
        return " ".join(toks) if self.spec.kind == "phones" else "".join(toks)


# ----------------------------------------------------------------------------------- data


class _Split:
    """Cached features + targets of one split, served in batches."""

    def __init__(self, cuts, feats: CachedFeatures, labels: Labels, select: list[int] | None = None):
        self.select = select  # positions among the cached states that the probe sees (None: all)
        self.cuts = list(cuts)
        self.ids = [c.id for c in self.cuts]
        missing = [i for i in self.ids if i not in feats]
        if missing:
            raise KeyError(f"{len(missing)} cuts missing from feature cache {feats.directory} (e.g. {missing[0]})")
        self.feats = feats
        self.labels = labels
        self.pooled = feats.pooled
        self.targets = [labels.target(c) for c in self.cuts]
        self.refs = [labels.reference(c) for c in self.cuts] if not labels.spec.pooled else None
        self.x = feats.stacked(self.ids) if self.pooled else None  # (N, L, D), small: kept in memory
        if self.x is not None and select is not None:
            self.x = self.x[:, select]

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, index: list[int], device) -> tuple[Tensor, Tensor | None, Any]:
        """``(states, lengths, targets)``: states ``[B, L, D]`` or ``[B, L, T, D]`` (zero-padded)."""
        if self.pooled:
            y = torch.tensor([self.targets[i] for i in index], dtype=torch.long)
            return self.x[index].to(device), None, y.to(device)
        items = [self.feats.get(self.ids[i]) for i in index]  # each (L, T_i, D)
        if self.select is not None:
            items = [it[self.select] for it in items]
        lengths = torch.tensor([it.shape[1] for it in items], dtype=torch.long)
        states = torch.zeros(len(items), items[0].shape[0], int(lengths.max()), items[0].shape[2])
        for b, it in enumerate(items):
            states[b, :, : it.shape[1]] = it
        return states.to(device), lengths.to(device), [self.targets[i] for i in index]


# ----------------------------------------------------------------------------------- model / eval


def build_probe(spec: TaskSpec, labels: Labels, num_layers: int, dim: int, cfg: ProbeConfig,
                layer_index: int | None) -> ProbeModel:
    """Weighted sum (or fixed layer) + the task's head."""
    featurizer = WeightedSum(num_layers, layer=layer_index)
    proj = cfg.proj_dim if cfg.proj_dim is not None else spec.proj_dim
    if spec.pooled:
        head = UtteranceHead(dim, labels.output_size, proj)
    elif spec.kind == "phones":
        head = FrameCTCHead(dim, labels.output_size, proj)
    else:
        head = BLSTMCTCHead(dim, labels.output_size, proj, cfg.lstm_hidden, cfg.lstm_layers, cfg.lstm_dropout)
    specaug = cfg.specaug if cfg.specaug is not None else spec.specaug
    if specaug and spec.pooled:
        raise ValueError("specaug needs frame-level features; utterance tasks probe time-averaged states")
    return ProbeModel(featurizer, head, SpecAugment() if specaug else None)


def _loss(spec: TaskSpec, labels: Labels, logits: Tensor, lengths, targets) -> Tensor:
    if spec.kind == "utterance":
        return nn.functional.cross_entropy(logits, targets)
    if spec.kind == "intent":
        return slot_cross_entropy(logits, targets, labels.slot_sizes)
    return ctc_loss(logits, lengths, targets)


@torch.no_grad()
def predict(model: ProbeModel, split: _Split, spec: TaskSpec, labels: Labels, device, batch_size: int = 32) -> list[dict]:
    """Per-item results of ``model`` on ``split``, in the split's order: one dict per cut with
    ``id``, ``reference``, ``hypothesis`` and either ``correct`` (accuracy tasks) or ``errors`` and
    ``ref_length`` (edit distance and reference length in tokens: phones for PR, words for ASR).
    These are what paired tests between models need (:mod:`s3kit.eval.stats`).

    The tasks of :mod:`s3kit.eval.tasks` write items of the same shape, one kind per task
    (:func:`item_kind`): ENV / MUS ``correct`` per clip; SD ``errors`` (missed + false alarm +
    confusion seconds) and ``ref_length`` (reference speech seconds) per recording, so DER is
    their ratio of sums; SF ``tp`` / ``fp`` / ``fn`` of the slot-type sets per utterance (plus
    ``value_errors`` / ``value_chars`` for slot-value CER); QbE per query its ``scores`` over
    the documents, the ``targets`` (indices of the true documents) and the MTWV cost ``beta``."""
    was = model.training
    model.eval()
    preds, hyps = [], []
    for start in range(0, len(split), batch_size):
        index = list(range(start, min(start + batch_size, len(split))))
        states, lengths, targets = split.batch(index, device)
        logits = model(states, lengths)
        if spec.kind == "utterance":
            preds.extend(logits.argmax(dim=1).cpu().tolist())
        elif spec.kind == "intent":
            preds.extend(slot_argmax(logits, labels.slot_sizes).cpu().tolist())
        else:
            hyps.extend(labels.decode(ids) for ids in metrics.ctc_greedy_decode(logits, lengths))
    model.train(was)
    items = []
    if spec.kind == "utterance":
        for cut_id, p, t in zip(split.ids, preds, split.targets):
            items.append({"id": cut_id, "reference": labels.classes[t], "hypothesis": labels.classes[p],
                          "correct": p == t})
    elif spec.kind == "intent":
        def name(ids):
            return " ".join(labels.slot_classes[k][i] for k, i in enumerate(ids))

        for cut_id, p, t in zip(split.ids, preds, split.targets):
            items.append({"id": cut_id, "reference": name(t), "hypothesis": name(p), "correct": list(p) == list(t)})
    else:  # PER over space-separated phones, WER over words
        for cut_id, ref, hyp in zip(split.ids, split.refs, hyps):
            r, h = ref.split(), hyp.split()
            items.append({"id": cut_id, "reference": ref, "hypothesis": hyp,
                          "errors": metrics.edit_distance(r, h), "ref_length": len(r)})
    return items


def item_kind(items: list[dict]) -> str:
    """What per-item results hold, from the first item's keys: ``accuracy`` (``correct``),
    ``rate`` (``errors`` / ``ref_length``: PER, WER, SD's DER), ``f1`` (``tp`` / ``fp`` / ``fn``:
    SF's slot-type F1) or ``detection`` (``scores`` / ``targets``: QbE's MTWV)."""
    if not items:
        raise ValueError("per-item results: no items")
    first = items[0]
    if "correct" in first:
        return "accuracy"
    if "scores" in first and "targets" in first:
        return "detection"
    if {"tp", "fp", "fn"} <= first.keys():
        return "f1"
    if "errors" in first and "ref_length" in first:
        return "rate"
    raise ValueError(f"per-item result {first.get('id')!r} has none of correct / errors + ref_length / tp + fp + fn / "
                     f"scores + targets (keys: {sorted(first)})")


def score_items(items: list[dict]) -> float:
    """The task metric from per-item results: accuracy, the corpus error rate (summed edits /
    summed reference length, as s3prl's ``downstream/ctc/metric.py``; SD: DER), SF's slot-type
    F1 (mean over utterances) or QbE's MTWV (:func:`item_kind`)."""
    kind = item_kind(items)
    if kind == "accuracy":
        return sum(bool(i["correct"]) for i in items) / len(items)
    if kind == "f1":
        from s3kit.eval.tasks.sf import utterance_f1

        return float(utterance_f1(items).mean())
    if kind == "detection":
        from s3kit.eval.tasks.qbe import mtwv_items

        return mtwv_items(items)
    total = sum(i["ref_length"] for i in items)
    if total == 0:
        raise ValueError("score_items: references are all empty")
    return sum(i["errors"] for i in items) / total


def score_interval(items: list[dict], seed: int = 0):
    """The metric with its 95 % interval (:class:`s3kit.eval.stats.Interval`): Wilson for
    accuracies, an utterance-level bootstrap for corpus error rates (and SD's DER), a bootstrap
    over utterances for SF's F1 and over queries for QbE's MTWV."""
    from s3kit.eval import stats

    kind = item_kind(items)
    if kind == "accuracy":
        return stats.accuracy_interval([bool(i["correct"]) for i in items])
    if kind == "f1":
        from s3kit.eval.tasks.sf import f1_interval

        return f1_interval(items, seed=seed)
    if kind == "detection":
        from s3kit.eval.tasks.qbe import mtwv_interval

        return mtwv_interval(items, seed=seed)
    return stats.bootstrap_rate([i["errors"] for i in items], [i["ref_length"] for i in items], seed=seed)


def compare_items(items_a: list[dict], items_b: list[dict], seed: int = 0):
    """System A minus system B on the same test items (:class:`s3kit.eval.stats.PairedBootstrap`).

    Accuracies: the difference with a paired bootstrap interval and the exact McNemar p;
    error rates (and DER): the paired utterance-level bootstrap (difference, interval, p); SF's
    F1 and QbE's MTWV: the paired bootstrap over utterances / queries. Raises when the two runs
    were not scored on the same items, naming the first mismatch."""
    from s3kit.eval import stats

    ids_a, ids_b = [i["id"] for i in items_a], [i["id"] for i in items_b]
    if ids_a != ids_b:
        if len(ids_a) != len(ids_b):
            raise ValueError(f"compare: the runs have {len(ids_a)} and {len(ids_b)} test items; need the same test set")
        k = next(k for k, (a, b) in enumerate(zip(ids_a, ids_b)) if a != b)
        raise ValueError(f"compare: test item {k} differs ({ids_a[k]!r} vs {ids_b[k]!r}); need the same test set")
    kind = item_kind(items_a)
    if item_kind(items_b) != kind:
        raise ValueError(f"compare: the runs hold different kinds of results ({kind} vs {item_kind(items_b)})")
    if kind == "accuracy":
        a = [bool(i["correct"]) for i in items_a]
        b = [bool(i["correct"]) for i in items_b]
        boot = stats.paired_bootstrap([not x for x in a], [not x for x in b], [1] * len(a), seed=seed)
        # errors(A) - errors(B) = acc(B) - acc(A): flip to A minus B on accuracy
        return stats.PairedBootstrap(-boot.diff, -boot.ci_high, -boot.ci_low, stats.mcnemar_exact(a, b),
                                     boot.n, 1 - boot.rate_a, 1 - boot.rate_b)
    if kind == "f1":
        from s3kit.eval.tasks.sf import compare_f1

        return compare_f1(items_a, items_b, seed=seed)
    if kind == "detection":
        from s3kit.eval.tasks.qbe import compare_mtwv

        return compare_mtwv(items_a, items_b, seed=seed)
    return stats.paired_bootstrap([i["errors"] for i in items_a], [i["errors"] for i in items_b],
                                  [i["ref_length"] for i in items_a], seed=seed)


def evaluate(model: ProbeModel, split: _Split, spec: TaskSpec, labels: Labels, device, batch_size: int = 32) -> float:
    """The task metric of ``model`` on ``split`` (accuracy, or PER / WER as a fraction)."""
    return score_items(predict(model, split, spec, labels, device, batch_size))


def _better(spec: TaskSpec, a: float, b: float) -> bool:
    return a > b if spec.higher_is_better else a < b


def train_loop(model, num_items: int, step_loss, evaluate, cfg: ProbeConfig, lr: float, max_updates: int,
               eval_every: int, higher_is_better: bool, desc: str, on_best=None):
    """Every probe's loop (SUPERB tasks here, SD / SF / linear evaluation in :mod:`s3kit.eval.tasks`):
    Adam at a constant ``lr`` (s3prl's scheduler block is commented out), gradient clipping,
    back-to-back shuffled epochs of ``cfg.batch_size`` items, the dev metric every ``eval_every``
    updates, early stop after ``cfg.patience`` stale evaluations; the best dev state is loaded
    back into ``model``.

    ``step_loss(index) -> loss`` for a batch of item indices; ``evaluate() -> dev metric``;
    ``on_best(update, score)`` is called at each new best (e.g. to save a checkpoint).
    Returns ``(best dev, updates-to-best, updates run, curve [(update, dev)])``.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    optim = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    eval_every = min(eval_every, max_updates)
    order: list[int] = []
    best, best_update, best_state, curve, stale, update = None, 0, None, [], 0, 0
    bar = tqdm(total=max_updates, desc=desc, unit="upd", disable=not cfg.progress)
    model.train()
    while update < max_updates:
        if len(order) < min(cfg.batch_size, num_items):
            order += torch.randperm(num_items, generator=gen).tolist()  # epochs run back to back
        index, order = order[: cfg.batch_size], order[cfg.batch_size:]
        loss = step_loss(index)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optim.step()
        update += 1
        bar.update(1)
        if update % eval_every == 0 or update == max_updates:
            model.eval()
            with torch.no_grad():
                score = evaluate()
            model.train()
            curve.append((update, score))
            bar.set_postfix(loss=f"{loss.item():.3f}", dev=f"{score:.4f}")
            if best is None or (score > best if higher_is_better else score < best):
                best, best_update, stale = score, update, 0
                best_state = copy.deepcopy(model.state_dict())
                if on_best is not None:
                    on_best(update, score)
            else:
                stale += 1
                if cfg.patience is not None and stale >= cfg.patience:
                    break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return best, best_update, update, curve


def _train_once(spec: TaskSpec, task: str, upstream_name: str, labels: Labels, splits: dict[str, _Split],
                layers: list[int], layer_index: int | None, cfg: ProbeConfig, device) -> ProbeResult:
    from s3kit import checkpoint

    lr = cfg.lr if cfg.lr is not None else spec.lr
    max_updates = cfg.max_updates or spec.max_updates
    eval_every = cfg.eval_every or spec.eval_every
    torch.manual_seed(cfg.seed)
    train, dev, test = splits["train"], splits["dev"], splits["test"]
    model = build_probe(spec, labels, len(layers), train.feats.dim, cfg, layer_index).to(device)
    name = f"{task}-frac{cfg.fraction:g}-lr{lr:g}-seed{cfg.seed}"
    ckpt = str(Path(cfg.checkpoint_dir).expanduser() / name) if cfg.checkpoint_dir else None

    def step_loss(index):
        states, lengths, targets = train.batch(index, device)
        return _loss(spec, labels, model(states, lengths), lengths, targets)

    def save(update, score):
        if ckpt:
            checkpoint.save(ckpt, model, cfg, task=task, upstream=upstream_name, update=update, dev=score,
                            layers=layers, vocabulary=labels.vocabulary())

    best, best_update, update, curve = train_loop(
        model, len(train), step_loss, lambda: evaluate(model, dev, spec, labels, device, cfg.batch_size), cfg, lr,
        max_updates, eval_every, spec.higher_is_better, f"probe {task} lr={lr:g}", on_best=save)
    predictions = predict(model, test, spec, labels, device, cfg.batch_size)
    test_score = score_items(predictions)
    interval = score_interval(predictions, seed=cfg.seed)
    weights = model.featurizer.normalized().detach().cpu().tolist()
    return ProbeResult(
        task=task, upstream=upstream_name, metric=spec.metric, higher_is_better=spec.higher_is_better,
        test=test_score, dev=best, updates_to_best=best_update, updates=update, lr=lr, fraction=cfg.fraction,
        seed=cfg.seed, num_train=len(train), layers=layers, layer_weights=weights, curve=curve, checkpoint=ckpt,
        n=interval.n, ci_low=interval.ci_low, ci_high=interval.ci_high, predictions=predictions,
    )


class _cpu_threads:
    """Temporarily cap torch's intra-op threads. Pooled probes multiply ``[32, D] x [D, 256]``:
    far too small for thread fan-out, which costs ~80x per step on a busy 2-core CPU (measured:
    0.45 ms with 1 thread vs 38 ms with 2 for a 13 -> 256 -> 4 probe step under load)."""

    def __init__(self, n: int | None):
        self.n, self.old = n, None

    def __enter__(self):
        if self.n is not None:
            self.old = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.old is not None:
            torch.set_num_threads(self.old)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_subset(cuts, task: str, fraction: float, seed: int):
    """The stratified seeded ``fraction`` of train: by class for KS / SID / ER / IC, random for PR / ASR."""
    from s3kit.data.subsets import stratified_subset

    if fraction >= 1.0:
        return cuts
    spec = TASKS[task]
    return stratified_subset(cuts, fraction, key=spec.label if spec.pooled else None, seed=seed)


def run_probe(upstream, task: str, train, dev, test, cfg: ProbeConfig = ProbeConfig()) -> ProbeResult:
    """Probe a frozen ``upstream`` on ``task`` (ks | ic | sid | er | style | pr | asr, or one of
    :data:`s3kit.eval.tasks.EXTRA_TASKS`: qbe | sd | sf | env | mus, see that package).

    Args:
        upstream: an :class:`~s3kit.upstream.Upstream` or a name / path for ``load_upstream``.
        train, dev, test: CutSets or manifest paths carrying the task's label.
    Returns the test score at the best dev checkpoint (best learning rate under ``lr_sweep``).
    """
    from s3kit.eval.tasks import EXTRA_TASKS, run_task

    if task in EXTRA_TASKS:  # SD, SF, QbE, ENV / MUS live in s3kit.eval.tasks
        return run_task(upstream, task, train, dev, test, cfg)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join((*TASKS, *EXTRA_TASKS))}")
    spec = TASKS[task]
    if isinstance(upstream, (str, Path)):
        from s3kit.upstream import load_upstream

        upstream = load_upstream(upstream)
    cuts = {n: load_cuts(c) if isinstance(c, (str, Path)) else c for n, c in (("train", train), ("dev", dev), ("test", test))}
    for name, c in cuts.items():
        if len(c) == 0:
            raise ValueError(f"{task}: the {name} manifest is empty")
    labels = Labels(spec, cuts)  # vocab from full splits, before subsetting
    device = _device(cfg.device)
    cache_dir = Path(cfg.cache_dir).expanduser()
    identity = upstream_identity(upstream)  # hash the weights once, not once per split
    manifest_ids = {n: manifest_identity_of(c) if isinstance(c, (str, Path)) else None
                    for n, c in (("train", train), ("dev", dev), ("test", test))}
    # Features of the *full* train set, so every fraction and seed reuses one cache entry.
    policy = {n: cfg.on_bad_audio or ("skip" if n == "train" else "error") for n in cuts}
    feats = {
        n: extract_features(upstream, c, cache_dir, layers=cfg.cache_layers, pooled=spec.pooled,
                            max_duration=cfg.max_duration, device=device, identity=identity, progress=cfg.progress,
                            on_bad_audio=policy[n], max_bad_share=cfg.max_bad_share, manifest_id=manifest_ids[n])
        for n, c in cuts.items()
    }
    from lhotse import CutSet

    from s3kit.data.badaudio import BadAudio

    skipped = []
    for n, f in feats.items():  # a cache entry may come from an earlier run: apply this run's policy to it
        if f.skipped and policy[n] == "error":
            from s3kit.audio import AudioError

            raise AudioError(f"{n} split: {f.skipped[0]['reason']} (and {len(f.skipped) - 1} more unusable cuts)")
        if f.skipped:
            BadAudio(policy[n], cfg.max_bad_share, total=len(cuts[n])).record(f.skipped)  # the share limit
            gone = {r["cut"] for r in f.skipped}
            cuts[n] = CutSet.from_cuts(c for c in cuts[n] if c.id not in gone)
            skipped += [{"split": n, **r} for r in f.skipped]
    cuts["train"] = train_subset(cuts["train"], task, cfg.fraction, cfg.seed)
    layers = feats["train"].layers
    layer_index, select = None, None
    if cfg.layer is not None:
        if cfg.layer not in layers:
            raise ValueError(f"layer {cfg.layer} is not among the cached layers {layers}")
        layer_index = layers.index(cfg.layer)
    elif cfg.cache_layers is None:  # all states cached; the weighted sum spans the upstream's choice
        summed = set(getattr(upstream, "weighted_sum_layers", layers))
        if summed != set(layers):
            select = [k for k, layer in enumerate(layers) if layer in summed]
            layers = [layers[k] for k in select]
    splits = {n: _Split(c, feats[n], labels, select) for n, c in cuts.items()}
    grid = cfg.lr_grid if cfg.lr_sweep else [cfg.lr]
    with _cpu_threads(1 if spec.pooled and device.type == "cpu" else None):
        runs = [_train_once(spec, task, upstream.name, labels, splits, layers, layer_index,
                            dataclasses.replace(cfg, lr=lr, lr_sweep=False), device) for lr in grid]
    for r in runs:
        r.skipped_audio = skipped
    if not cfg.lr_sweep:
        return runs[0]
    best = runs[0]
    for r in runs[1:]:
        if _better(spec, r.dev, best.dev):
            best = r
    best.sweep = [{"lr": r.lr, "dev": r.dev, "test": r.test, "updates_to_best": r.updates_to_best} for r in runs]
    return best


# ----------------------------------------------------------------------------------- output


def _score(r: ProbeResult) -> str:
    """House style ``0.868 [0.727, 0.942], n=38`` of a probe's test score."""
    from s3kit.eval.stats import format_score

    return format_score(r.test, r.ci_low, r.ci_high, r.n)


def results_table(results: list[ProbeResult]) -> str:
    """A Markdown table: one row per probe; the test score with its 95 % interval and test items
    (Wilson for accuracy, utterance bootstrap for PER / WER, lower is better)."""
    lines = [
        "| task | upstream | metric | test [95 % CI], n | dev | updates-to-best | updates | lr | fraction | seed | train |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        arrow = "↑" if r.higher_is_better else "↓"
        lines.append(
            f"| {r.task} | {r.upstream} | {r.metric} {arrow} | {_score(r)} | {r.dev:.3f} | "
            f"{r.updates_to_best} | {r.updates} | {r.lr:g} | {r.fraction:g} | {r.seed} | {r.num_train} |"
        )
    return "\n".join(lines) + "\n"


def seed_groups(results: list[ProbeResult]) -> list[dict]:
    """One entry per (task, upstream, fraction, lr setting): the test score over seeds as mean, sample
    sd and t interval (:func:`s3kit.eval.stats.seed_summary`), the same for updates-to-best, and
    every seed's own score with its interval. One seed: sd and interval are ``None``."""
    from s3kit.eval.stats import metric_bounds, seed_summary

    groups: dict[tuple, list[ProbeResult]] = {}
    for r in results:
        groups.setdefault((r.task, r.upstream, r.fraction), []).append(r)
    out = []
    for (task, up, frac), rs in groups.items():
        out.append({
            "task": task, "upstream": up, "metric": rs[0].metric, "higher_is_better": rs[0].higher_is_better,
            "fraction": frac, "seeds": [r.seed for r in rs], "n_items": rs[0].n,
            "test": _finite(seed_summary([r.test for r in rs], bounds=metric_bounds(rs[0].metric)).as_dict()),
            "updates_to_best": _finite(seed_summary([r.updates_to_best for r in rs],
                                                    bounds=metric_bounds("updates")).as_dict()),
            "per_seed": [{"seed": r.seed, "test": r.test, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n}
                         for r in rs],
        })
    return out


def _finite(d: dict) -> dict:
    """NaN (no spread from one seed) -> None, so results.json is strict JSON."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _seed_str(s: dict, digits: int = 3) -> str:
    """``0.861 [0.812, 0.910], 3 seeds`` (t interval over seeds; ``n.a.`` for one seed)."""
    if s["ci_low"] is None:
        return f"{s['mean']:.{digits}f} [n.a.], {s['n']} seed"
    return f"{s['mean']:.{digits}f} [{s['ci_low']:.{digits}f}, {s['ci_high']:.{digits}f}], {s['n']} seeds"


def summary_table(results: list[ProbeResult]) -> str:
    """Per (task, upstream, fraction): the mean test score over seeds with its 95 % t interval, each
    seed's score with its own interval, and updates-to-best the same way (:func:`seed_groups`)."""
    lines = ["| task | upstream | fraction | test over seeds: mean [95 % t CI] | per seed: test [95 % CI], n | "
             "updates-to-best: mean [95 % t CI] |",
             "|---|---|---:|---:|---|---:|"]
    from s3kit.eval.stats import format_score

    for g in seed_groups(results):
        per_seed = "; ".join(f"seed {p['seed']}: {format_score(p['test'], p['ci_low'], p['ci_high'], p['n'])}"
                             for p in g["per_seed"])
        lines.append(f"| {g['task']} | {g['upstream']} | {g['fraction']:g} | {_seed_str(g['test'])} | {per_seed} | "
                     f"{_seed_str(g['updates_to_best'], 0)} |")
    return "\n".join(lines) + "\n"


def plot_layer_weights(result: ProbeResult, path: str | Path) -> Path:
    """Bar chart of the learned softmax layer weights (x: upstream state index)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(result.layers) + 2), 3.0))
    ax.bar([str(i) for i in result.layers], result.layer_weights, color="tab:blue")
    ax.axhline(1.0 / len(result.layers), color="gray", lw=0.8, ls="--", label="uniform")
    ax.set_xlabel("hidden state (0 = input to layer 1)")
    ax.set_ylabel("softmax weight")
    ax.set_title(f"{result.task.upper()} · {result.upstream} · {result.metric} {100 * result.test:.1f}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_predictions(rows: list[dict], path: str | Path) -> Path:
    """Per-item results (:func:`predict`, optionally with run fields such as task and seed) as
    gzipped JSON lines, written atomically; read back with :func:`read_predictions`."""
    import gzip

    from s3kit.checkpoint import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in rows)
    write_atomic(path, gzip.compress(text.encode(), mtime=0))
    return path


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of a ``predictions.jsonl.gz`` (:func:`write_predictions`), with a clear error for a
    file that is missing or is not one."""
    import gzip

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no per-item predictions; `s3kit probe` writes predictions.jsonl.gz "
                                "next to results.json (rerun the probe with this version of s3kit)")
    try:
        return [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not gzipped JSON lines of per-item predictions ({e})") from e


def write_results(results: list[ProbeResult], out_dir: str | Path) -> dict[str, Path]:
    """``results.json``, ``results.md``, ``predictions.jsonl.gz`` (one line per test item of every
    probe: task, upstream, fraction, seed, lr and the item's result) and
    ``layer_weights_<task>[_<n>].png`` in ``out_dir``.

    ``results.json`` is ``{"runs": [...], "summary": [...]}``: one entry per probe
    (:meth:`ProbeResult.to_dict`, the test score with ``n``, ``ci_low``, ``ci_high``) and one per
    (task, upstream, fraction) over its seeds (:func:`seed_groups`)."""
    from s3kit.checkpoint import write_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "predictions": out / "predictions.jsonl.gz"}
    doc = {"runs": [_finite(r.to_dict()) for r in results], "summary": seed_groups(results)}
    write_atomic(paths["json"], json.dumps(doc, indent=2))
    write_predictions([{"task": r.task, "upstream": r.upstream, "fraction": r.fraction, "seed": r.seed, "lr": r.lr,
                        **item} for r in results for item in r.predictions], paths["predictions"])
    text = results_table(results)
    if len({(r.task, r.upstream, r.fraction) for r in results}) < len(results):  # several seeds somewhere
        text += "\n" + summary_table(results)
    write_atomic(paths["markdown"], text)
    seen: dict[str, int] = {}
    for r in results:
        if len(r.layers) < 2:
            continue  # one state: nothing to weigh
        n = seen.get(r.task, 0)
        seen[r.task] = n + 1
        name = f"layer_weights_{r.task}" + (f"_{n}" if n else "") + ".png"
        paths[name] = plot_layer_weights(r, out / name)
    return paths


def chance_accuracy(train_cuts, task: str) -> float:
    """Majority-class accuracy on ``train_cuts``: the floor a KS/SID/ER probe must beat."""
    from collections import Counter

    spec = TASKS[task]
    counts = Counter(str(get_label(c, spec.label)) for c in train_cuts)
    return max(counts.values()) / max(1, sum(counts.values())) if counts else math.nan
