"""Slot filling (SUPERB SF on Audio SNIPS): the transcript with slot tags as the CTC target;
slot-type F1 and slot-value CER.

Dimension legend: ``B`` batch, ``L`` layers, ``T`` frames, ``D`` width, ``V`` vocabulary (0 = blank).

s3prl ``downstream/ctc`` with the SNIPS slot tokenizer (REFERENCE-NOTES §G), followed here:

* target: the words with one ``<B-slot>`` token before the first word of a run of words sharing
  a slot tag and one ``<E-slot>`` after the run, characters otherwise, words separated by a space
  (``turn on the <B-device>fan<E-device>``); tags are one per word (``O`` outside slots);
* head: the weighted sum -> ``Linear(D, 1024)`` -> 2-layer BiLSTM of 1024 units per direction,
  dropout 0.2 -> ``Linear``; CTC (blank 0, zero-infinity); SpecAugment-style masking of the
  features during training (4 feature masks of 0-50 dims, 2 time masks of 0-40 frames; s3prl
  also time-warps by 5, not done here);
* Adam lr 1e-4, 200k updates, batch 32, dev every 2,000 updates, the best dev slot-type F1 kept;
  greedy decoding;
* slot-type F1: per utterance over the *sets* of slot types (both empty 1, one empty 0), mean
  over utterances; slot-value CER: for each reference (type, value) the hypothesis value of the
  same type with the lowest CER ("" if none), corpus CER = summed character edits / summed
  reference characters (extra hypothesis slots are not penalised).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from s3kit.eval.probe import ProbeConfig

SF_LR, SF_UPDATES, SF_EVAL_EVERY = 1e-4, 200_000, 2000  # s3prl ctc/snips config
OUTSIDE = "O"


@dataclass(frozen=True)
class SFConfig:
    """SF options; the BiLSTM size / layers / dropout come from ``ProbeConfig.lstm_*``."""

    proj_dim: int = 1024
    freq_masks: int = 4
    freq_mask_max: int = 50
    time_masks: int = 2
    time_mask_max: int = 40


# ----------------------------------------------------------------------------------- targets


def slot_target(words: list[str], tags: list[str]) -> list[str]:
    """Tokens of the CTC target: characters, ``" "`` between words, ``<B-x>`` / ``<E-x>`` around
    each run of words tagged ``x``."""
    if len(words) != len(tags):
        raise ValueError(f"{len(words)} words but {len(tags)} slot tags: {words} / {tags}")
    out: list[str] = []
    i = 0
    while i < len(words):
        if out:
            out.append(" ")
        tag = tags[i]
        if tag == OUTSIDE:
            out += list(words[i])
            i += 1
            continue
        j = i
        while j < len(words) and tags[j] == tag:
            j += 1
        out += [f"<B-{tag}>", *" ".join(words[i:j]), f"<E-{tag}>"]
        i = j
    return out


def parse_slots(tokens: list[str]) -> list[tuple[str, str]]:
    """``[(slot type, value)]`` from a (decoded) token sequence; an unclosed slot ends at the next
    ``<B-...>`` or the end, a stray ``<E-...>`` is ignored."""
    slots, current, value = [], None, []
    for t in tokens:
        if t.startswith("<B-") and t.endswith(">"):
            if current is not None:
                slots.append((current, "".join(value).strip()))
            current, value = t[3:-1], []
        elif t.startswith("<E-") and t.endswith(">"):
            if current is not None:
                slots.append((current, "".join(value).strip()))
            current, value = None, []
        elif current is not None:
            value.append(t)
    if current is not None:
        slots.append((current, "".join(value).strip()))
    return slots


def slot_type_f1(refs: list[list[tuple[str, str]]], hyps: list[list[tuple[str, str]]]) -> float:
    """Mean over utterances of the F1 between the sets of slot types (both empty: 1; one empty: 0)."""
    if len(refs) != len(hyps) or not refs:
        raise ValueError(f"slot_type_f1: {len(refs)} references vs {len(hyps)} hypotheses")
    total = 0.0
    for r, h in zip(refs, hyps):
        rs, hs = {t for t, _ in r}, {t for t, _ in h}
        if not rs and not hs:
            total += 1.0
        elif rs and hs:
            total += 2 * len(rs & hs) / (len(rs) + len(hs))
    return total / len(refs)


def slot_value_cer(refs: list[list[tuple[str, str]]], hyps: list[list[tuple[str, str]]]) -> float:
    """Corpus CER of slot values: each reference slot against the same-type hypothesis value of
    lowest CER (or the empty string)."""
    from s3kit.eval.metrics import edit_distance

    edits, chars = 0, 0
    for r, h in zip(refs, hyps):
        for typ, value in r:
            candidates = [v for t, v in h if t == typ] or [""]
            edits += min(edit_distance(value, v) for v in candidates)
            chars += len(value)
    if chars == 0:
        raise ValueError("slot_value_cer: the references have no slot values")
    return edits / chars


def _slots_str(slots: list[tuple[str, str]]) -> str:
    return "; ".join(f"{t}={v}" for t, v in slots)


def slot_items(ids: list[str], refs: list[list[tuple[str, str]]], hyps: list[list[tuple[str, str]]]) -> list[dict]:
    """Per-utterance results (the item format of :func:`s3kit.eval.probe.predict`): ``id``,
    ``reference`` / ``hypothesis`` (``type=value; ...``), ``tp`` / ``fp`` / ``fn`` of the sets
    of slot types (what :func:`slot_type_f1` scores), and ``value_errors`` / ``value_chars``:
    the character edits and reference characters of the slot values (what :func:`slot_value_cer`
    sums)."""
    from s3kit.eval.metrics import edit_distance

    if not (len(ids) == len(refs) == len(hyps)):
        raise ValueError(f"slot_items: {len(ids)} ids, {len(refs)} references, {len(hyps)} hypotheses")
    items = []
    for cut_id, r, h in zip(ids, refs, hyps):
        rs, hs = {t for t, _ in r}, {t for t, _ in h}
        edits = sum(min(edit_distance(value, v) for v in ([v for t, v in h if t == typ] or [""])) for typ, value in r)
        items.append({"id": cut_id, "reference": _slots_str(r), "hypothesis": _slots_str(h),
                      "tp": len(rs & hs), "fp": len(hs - rs), "fn": len(rs - hs),
                      "value_errors": int(edits), "value_chars": sum(len(v) for _, v in r)})
    return items


def utterance_f1(items: list[dict]):
    """``[N]`` slot-type F1 per utterance from its ``tp`` / ``fp`` / ``fn``: ``2 tp / (2 tp + fp +
    fn)``, 1 where reference and hypothesis both have no slot (s3prl's per-utterance F1; their
    mean is :func:`slot_type_f1`)."""
    import numpy as np

    tp, fp, fn = (np.array([i[k] for i in items], dtype=float) for k in ("tp", "fp", "fn"))
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)


def f1_interval(items: list[dict], seed: int = 0, n_bootstrap: int | None = None):
    """Slot-type F1 (mean over utterances) with its 95 % bootstrap interval over utterances
    (:class:`s3kit.eval.stats.Interval`). The statistic is a mean, so the resampled means are a
    ratio of sums with denominator 1 per utterance (:func:`s3kit.eval.stats.bootstrap_rate`,
    vectorised; the same draws as ``bootstrap_stat`` of the mean)."""
    from s3kit.eval import stats

    f1 = utterance_f1(items)
    return stats.bootstrap_rate(f1, [1.0] * len(f1), n_bootstrap=n_bootstrap or stats.N_BOOTSTRAP, seed=seed)


def compare_f1(items_a: list[dict], items_b: list[dict], seed: int = 0):
    """Slot-type F1 of A minus B on the same utterances: the paired bootstrap over utterances
    (:class:`s3kit.eval.stats.PairedBootstrap`: difference, interval, p)."""
    from s3kit.eval import stats

    fa, fb = utterance_f1(items_a), utterance_f1(items_b)
    return stats.paired_bootstrap(fa, fb, [1.0] * len(fa), seed=seed)


def value_cer_interval(items: list[dict], seed: int = 0):
    """Slot-value CER (summed ``value_errors`` / summed ``value_chars``) with its utterance-level
    bootstrap interval; None when the references have no slot values."""
    from s3kit.eval import stats

    chars = [i["value_chars"] for i in items]
    if sum(chars) == 0:
        return None
    return stats.bootstrap_rate([i["value_errors"] for i in items], chars, seed=seed)


def spec_augment(x: Tensor, lengths: Tensor, cfg: SFConfig, gen: torch.Generator) -> Tensor:
    """Zero ``cfg.freq_masks`` feature bands and ``cfg.time_masks`` frame spans per item of
    ``x [B, T, D]`` (a copy)."""
    x = x.clone()
    for b in range(x.shape[0]):
        n = int(lengths[b])
        for _ in range(cfg.freq_masks):
            w = int(torch.randint(0, cfg.freq_mask_max + 1, (1,), generator=gen))
            s = int(torch.randint(0, max(1, x.shape[2] - w), (1,), generator=gen))
            x[b, :, s : s + w] = 0.0
        for _ in range(cfg.time_masks):
            w = min(int(torch.randint(0, cfg.time_mask_max + 1, (1,), generator=gen)), n)
            s = int(torch.randint(0, max(1, n - w), (1,), generator=gen))
            x[b, s : s + w] = 0.0
    return x


def decode_slots(logits: Tensor, lengths: Tensor, vocab: list[str]) -> list[list[tuple[str, str]]]:
    """Greedy CTC decoding of ``logits [B, T, V]`` (token ``i`` = ``vocab[i - 1]``, 0 = blank),
    then :func:`parse_slots` per item."""
    from s3kit.eval import metrics

    return [parse_slots([vocab[i - 1] for i in seq]) for seq in metrics.ctc_greedy_decode(logits, lengths, 0)]


# ----------------------------------------------------------------------------------- task


def _words_tags(cut) -> tuple[list[str], list[str]]:
    from s3kit.data.manifest import get_label

    text, tags = get_label(cut, "text"), get_label(cut, "slots")
    if not text or tags is None:
        raise ValueError(f"cut {cut.id!r}: SF needs 'text' and 'slots' (one tag per word, 'O' outside slots)")
    words, tag_list = text.split(), str(tags).split()
    if len(words) != len(tag_list):
        raise ValueError(f"cut {cut.id!r}: {len(words)} words but {len(tag_list)} slot tags")
    return words, tag_list


def run_sf(upstream, train, dev, test, cfg: ProbeConfig = ProbeConfig(), sf: SFConfig = SFConfig()):
    """Train the SF probe, keep the best dev slot-type F1, score test. Cuts carry ``text`` and
    ``slots``. Returns a :class:`~s3kit.eval.tasks.common.TaskResult` (metric ``slot_type_f1``
    with its bootstrap interval over utterances and the per-utterance :func:`slot_items` as
    ``predictions``; ``extra``: dev / test slot-value CER, the test one with its interval)."""
    from s3kit.data.subsets import stratified_subset
    from s3kit.eval.heads import BLSTMCTCHead, ProbeModel, WeightedSum, ctc_loss
    from s3kit.eval.probe import _device
    from s3kit.eval.probe import train_loop
    from s3kit.eval.tasks.common import TaskResult, features, frame_batch, layer_position, load_inputs

    upstream, cuts = load_inputs(upstream, {"train": train, "dev": dev, "test": test}, "sf")
    feats = features(upstream, cuts, cfg, pooled=False)
    if cfg.fraction < 1.0:
        cuts["train"] = stratified_subset(cuts["train"], cfg.fraction, key=None, seed=cfg.seed)
    targets = {n: [slot_target(*_words_tags(c)) for c in cs] for n, cs in cuts.items()}
    vocab = sorted({t for ts in targets.values() for seq in ts for t in seq})  # every split: see probe.Labels
    token_id = {t: i + 1 for i, t in enumerate(vocab)}  # 0 = blank
    ids = {n: [c.id for c in cs] for n, cs in cuts.items()}
    refs = {n: [parse_slots(seq) for seq in targets[n]] for n in cuts}
    device = _device(cfg.device)
    layers = feats["train"].layers
    dim = feats["train"].dim
    torch.manual_seed(cfg.seed)
    model = ProbeModel(WeightedSum(len(layers), layer=layer_position(cfg, layers)),
                       BLSTMCTCHead(dim, len(vocab) + 1, sf.proj_dim, cfg.lstm_hidden, cfg.lstm_layers,
                                    cfg.lstm_dropout)).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_targets = [torch.tensor([token_id[t] for t in seq]) for seq in targets["train"]]

    def step_loss(index: list[int]) -> Tensor:
        states, lengths = frame_batch(feats["train"], [ids["train"][i] for i in index], device)
        x = spec_augment(model.featurizer(states), lengths, sf, gen)
        return ctc_loss(model.head(x, lengths), lengths, [train_targets[i] for i in index])

    def decode(split: str) -> list[list[tuple[str, str]]]:
        hyps = []
        for start in range(0, len(ids[split]), cfg.batch_size):
            states, lengths = frame_batch(feats[split], ids[split][start : start + cfg.batch_size], device)
            hyps += decode_slots(model(states, lengths), lengths, vocab)
        return hyps

    lr = cfg.lr if cfg.lr is not None else SF_LR
    _, best_update, updates, curve = train_loop(
        model, len(ids["train"]), step_loss, lambda: slot_type_f1(refs["dev"], decode("dev")), cfg, lr,
        cfg.max_updates or SF_UPDATES, cfg.eval_every or SF_EVAL_EVERY, higher_is_better=True, desc=f"probe sf lr={lr:g}")
    with torch.no_grad():
        dev_h, test_h = decode("dev"), decode("test")
    items = slot_items(ids["test"], refs["test"], test_h)
    interval = f1_interval(items, seed=cfg.seed)
    cer = value_cer_interval(items, seed=cfg.seed)
    return TaskResult(
        task="sf", upstream=upstream.name, metric="slot_type_f1", higher_is_better=True,
        test=interval.value, dev=slot_type_f1(refs["dev"], dev_h), updates_to_best=best_update,
        updates=updates, lr=lr, fraction=cfg.fraction, seed=cfg.seed, num_train=len(ids["train"]), layers=layers,
        layer_weights=model.featurizer.normalized().detach().cpu().tolist(), curve=curve,
        n=interval.n, ci_low=interval.ci_low, ci_high=interval.ci_high, predictions=items,
        extra={"test_slot_value_cer": slot_value_cer(refs["test"], test_h),
               "test_slot_value_cer_ci": None if cer is None else [cer.ci_low, cer.ci_high],
               "dev_slot_value_cer": slot_value_cer(refs["dev"], dev_h), "vocabulary": vocab},
    )
