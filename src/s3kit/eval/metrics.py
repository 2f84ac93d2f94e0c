"""Probing metrics: accuracy, intent accuracy, edit distance, PER / WER, greedy CTC decoding.

Dimension legend: ``N`` items, ``S`` slots, ``B`` batch, ``T`` frames, ``V`` vocabulary (blank included).

Error rates follow s3prl's ``downstream/ctc/metric.py``: the summed Levenshtein distance over
the corpus divided by the summed reference length (not a mean of per-utterance rates).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def accuracy(pred: Tensor, target: Tensor) -> float:
    """Fraction of ``pred [N]`` equal to ``target [N]`` (class indices)."""
    if pred.shape != target.shape:
        raise ValueError(f"accuracy: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.numel() == 0:
        raise ValueError("accuracy: no items")
    return (pred == target).float().mean().item()


def all_slots_accuracy(pred: Tensor, target: Tensor) -> float:
    """Intent accuracy: fraction of items whose every slot is right; ``pred, target [N, S]``."""
    if pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(f"all_slots_accuracy: need equal [N, S] shapes, got {tuple(pred.shape)}, {tuple(target.shape)}")
    return (pred == target).all(dim=1).float().mean().item()


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (unit-cost substitutions, insertions, deletions) between token lists
    (or strings), by RapidFuzz's C++ implementation."""
    from rapidfuzz.distance import Levenshtein

    return int(Levenshtein.distance(ref, hyp))


def error_rate(refs: Sequence[Sequence], hyps: Sequence[Sequence]) -> float:
    """Corpus error rate: ``sum edit_distance / sum len(ref)`` over token-list pairs."""
    if len(refs) != len(hyps):
        raise ValueError(f"error_rate: {len(refs)} references vs {len(hyps)} hypotheses")
    total = sum(len(r) for r in refs)
    if total == 0:
        raise ValueError("error_rate: references are all empty")
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / total


def per(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Phone error rate over space-separated phone strings."""
    return error_rate([r.split() for r in refs], [h.split() for h in hyps])


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate over whitespace-separated transcripts."""
    return error_rate([r.split() for r in refs], [h.split() for h in hyps])


def ctc_greedy_decode(logits: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks.

    ``logits [B, T, V]`` (or log-probabilities), ``lengths [B]`` valid frames -> token ids per item.
    """
    best = logits.argmax(dim=-1).cpu()  # (B, T)
    out = []
    for b, n in enumerate(lengths.tolist()):
        seq = best[b, :n]
        if n > 0:
            keep = torch.ones(n, dtype=torch.bool)
            keep[1:] = seq[1:] != seq[:-1]
            seq = seq[keep & (seq != blank)]
        out.append(seq.tolist())
    return out
