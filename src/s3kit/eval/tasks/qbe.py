"""Query-by-example spoken term detection (SUPERB QbE on QUESST 2014): zero-shot, no training.

Dimension legend: ``Q`` queries, ``N`` documents, ``Tq`` query frames, ``Td`` document frames,
``D`` width, ``L`` layers.

SUPERB's recipe (s3prl ``downstream/quesst14_dtw``, REFERENCE-NOTES §G), one hidden layer at a time:

1. every feature dimension z-scored over all frames of the run's queries and documents;
2. per (query, document) the frame distance ``exp(cosine distance) - 1``, each query-frame row
   min-max normalised over the document's frames;
3. subsequence DTW (open begin and end in the document), steps ``(i-1, j)``, ``(i-1, j-1)``,
   ``(i-1, j-2)`` (dtw-python's ``asymmetric`` pattern), the best end's cost divided by the query
   length; the score is minus that (queries under 5 frames score 0);
4. each query's scores z-normalised across documents;
5. scored as detection of (query, document) pairs by the maximum term-weighted value (MTWV);
   SUPERB runs every layer on dev, keeps the layer of best dev MTWV and reports it on eval.

MTWV (NIST STD 2006, QUESST's secondary metric): for a threshold θ,
``TWV(θ) = 1 - mean_q [P_miss(q, θ) + β P_fa(q, θ)]`` over the queries with at least one true
document, ``P_miss = 1 - hits / N_true(q)``, ``P_fa = false alarms / (N - N_true(q))``,
``β = (C_fa / C_miss) (1 / P_target - 1)``; MTWV is the maximum over θ (≥ 0: θ above every
score gives TWV 0). QUESST's scoring script ``score-TWV-Cnxe.sh`` holds the cost parameters;
it was not readable here, so they are :class:`QbEConfig` fields and every result states them.
MAP and the pooled-trial EER are reported too, as a threshold-free second view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from s3kit.data.manifest import get_label
from s3kit.eval.probe import ProbeConfig

QUERY_LABEL = "qbe_hits"  # on each query cut: ids of the documents that contain it


@dataclass(frozen=True)
class QbEConfig:
    """QbE scoring options.

    ``p_target``, ``c_miss``, ``c_fa``: MTWV cost parameters. The defaults (0.0008, 1, 1:
    β ≈ 1249) are the values the MediaEval SWS / QUESST overviews state; QUESST's scoring script
    itself could not be checked, so treat MTWVs as comparable only at equal parameters.
    """

    p_target: float = 0.0008
    c_miss: float = 1.0
    c_fa: float = 1.0
    min_query_frames: int = 5  # s3prl: shorter queries get score 0 for every document
    normalize_features: bool = True  # s3prl feature_normalization: per-dimension z-score
    doc_batch: int = 64  # documents DTW'd at once per query (memory vs speed only)

    @property
    def beta(self) -> float:
        return (self.c_fa / self.c_miss) * (1.0 / self.p_target - 1.0)


# ----------------------------------------------------------------------------------- DTW


def frame_distance(query: Tensor, docs: Tensor, doc_lengths: Tensor) -> Tensor:
    """``exp(1 - cos) - 1`` between query and document frames, each query row min-max normalised
    over the valid document frames; padded frames get +inf.

    ``query [Tq, D]``, ``docs [N, Td, D]`` (zero-padded), ``doc_lengths [N]`` -> ``[N, Tq, Td]``.
    """
    q = torch.nn.functional.normalize(query.float(), dim=-1)
    d = torch.nn.functional.normalize(docs.float(), dim=-1)
    dist = torch.expm1(1.0 - torch.einsum("qd,ntd->nqt", q, d))  # (N, Tq, Td)
    valid = torch.arange(docs.shape[1])[None, :] < doc_lengths[:, None]  # (N, Td)
    lo = dist.masked_fill(~valid[:, None], math.inf).amin(dim=2, keepdim=True)
    hi = dist.masked_fill(~valid[:, None], -math.inf).amax(dim=2, keepdim=True)
    dist = (dist - lo) / (hi - lo).clamp_min(1e-12)
    return dist.masked_fill(~valid[:, None], math.inf)


def subsequence_dtw(cost: Tensor) -> Tensor:
    """Open-begin, open-end DTW of the query (rows) inside each document (columns) with steps
    (i-1, j), (i-1, j-1), (i-1, j-2); the best alignment's summed cost divided by ``Tq``.

    ``cost [N, Tq, Td]`` (+inf on padding) -> ``[N]``.
    """
    acc = cost[:, 0].clone()  # (N, Td): the match may start at any document frame
    inf = torch.full_like(acc[:, :1], math.inf)
    for i in range(1, cost.shape[1]):
        stay = acc
        diag = torch.cat([inf, acc[:, :-1]], dim=1)
        skip = torch.cat([inf, inf, acc[:, :-2]], dim=1)
        acc = cost[:, i] + torch.minimum(torch.minimum(stay, diag), skip)
    return acc.amin(dim=1) / cost.shape[1]


def qbe_scores(queries: list[Tensor], docs: list[Tensor], cfg: QbEConfig = QbEConfig()) -> Tensor:
    """SUPERB QbE scores (steps 1-4 of the module docstring): ``Q`` queries ``[Tq_i, D]`` and
    ``N`` documents ``[Td_j, D]`` -> ``[Q, N]`` (higher = more likely to contain the query)."""
    if cfg.normalize_features:
        frames = torch.cat([x.float() for x in (*queries, *docs)])
        mean, std = frames.mean(0), frames.std(0).clamp_min(1e-5)
        queries = [(q.float() - mean) / std for q in queries]
        docs = [(d.float() - mean) / std for d in docs]
    lengths = torch.tensor([d.shape[0] for d in docs])
    out = torch.zeros(len(queries), len(docs))
    for qi, q in enumerate(queries):
        if q.shape[0] < cfg.min_query_frames:
            continue  # score 0 everywhere, as s3prl
        for start in range(0, len(docs), cfg.doc_batch):
            chunk = docs[start : start + cfg.doc_batch]
            padded = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True)  # (n, Td, D)
            cost = frame_distance(q, padded, lengths[start : start + len(chunk)])
            out[qi, start : start + len(chunk)] = -subsequence_dtw(cost)
        row = out[qi]
        out[qi] = (row - row.mean()) / row.std().clamp_min(1e-12) if len(docs) > 1 else row
    return out


# ----------------------------------------------------------------------------------- metrics


def _check(scores: Tensor, truth: Tensor) -> tuple[np.ndarray, np.ndarray]:
    s, t = np.asarray(scores, dtype=np.float64), np.asarray(truth, dtype=bool)
    if s.shape != t.shape or s.ndim != 2:
        raise ValueError(f"scores {s.shape} and truth {t.shape} must both be [Q, N]")
    return s, t


def mtwv(scores, truth, p_target: float = QbEConfig.p_target, c_miss: float = QbEConfig.c_miss,
         c_fa: float = QbEConfig.c_fa) -> tuple[float, float]:
    """Maximum term-weighted value and the threshold reaching it (detect where score >= θ).

    ``scores [Q, N]`` float, ``truth [Q, N]`` bool. Queries without a true document are left out
    (their P_miss is undefined). Exact: TWV changes only where θ crosses a score, so sorting all
    trials once and summing each trial's weight (``1 / (Q' N_true)`` for a hit,
    ``-β / (Q' (N - N_true))`` for a false alarm) gives TWV at every cut.
    """
    s, t = _check(scores, truth)
    beta = (c_fa / c_miss) * (1.0 / p_target - 1.0)
    n_true = t.sum(1)
    keep = n_true > 0
    if not keep.any():
        raise ValueError("mtwv: no query has a true document")
    s, t, n_true = s[keep], t[keep], n_true[keep]
    q, n = s.shape
    n_false = np.maximum(n - n_true, 1)
    w = np.where(t, 1.0 / (q * n_true[:, None]), -beta / (q * n_false[:, None])).ravel()
    flat = s.ravel()
    order = np.argsort(-flat, kind="stable")
    twv = np.cumsum(w[order])
    sorted_s = flat[order]
    last_of_tie = np.append(sorted_s[1:] != sorted_s[:-1], True)  # cut only between distinct scores
    twv, cut_scores = twv[last_of_tie], sorted_s[last_of_tie]
    best = int(np.argmax(twv))
    if twv[best] <= 0.0:
        return 0.0, math.inf  # detect nothing
    return float(twv[best]), float(cut_scores[best])


def mean_average_precision(scores, truth) -> float:
    """Mean over queries (with a true document) of the average precision of ranking documents by score."""
    s, t = _check(scores, truth)
    aps = []
    for row, rel in zip(s, t):
        if not rel.any():
            continue
        hits = rel[np.argsort(-row, kind="stable")]
        ranks = np.flatnonzero(hits) + 1
        aps.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
    if not aps:
        raise ValueError("mean_average_precision: no query has a true document")
    return float(np.mean(aps))


def equal_error_rate(scores, truth) -> float:
    """EER of all (query, document) trials pooled: where miss and false-alarm rates cross."""
    from sklearn.metrics import roc_curve

    s, t = _check(scores, truth)
    if t.all() or not t.any():
        raise ValueError("equal_error_rate: needs both target and non-target trials")
    fpr, tpr, _ = roc_curve(t.ravel(), s.ravel())
    fnr = 1.0 - tpr
    i = int(np.argmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2.0)


# ----------------------------------------------------------------------------------- task


def truth_matrix(query_cuts, doc_ids: list[str]) -> np.ndarray:
    """``[Q, N]`` bool from each query cut's ``qbe_hits`` label (ids of documents that contain it)."""
    index = {d: j for j, d in enumerate(doc_ids)}
    out = np.zeros((len(query_cuts), len(doc_ids)), dtype=bool)
    for i, cut in enumerate(query_cuts):
        hits = get_label(cut, QUERY_LABEL)
        if hits is None:
            raise ValueError(f"query cut {cut.id!r} has no {QUERY_LABEL!r} label (the ids of the documents containing it)")
        unknown = [h for h in hits if h not in index]
        if unknown:
            raise ValueError(f"query cut {cut.id!r}: documents {unknown[:3]} are not in the document manifest")
        out[i, [index[h] for h in hits]] = True
    return out


def evaluate_layer(queries: list[Tensor], docs: list[Tensor], truth: np.ndarray, cfg: QbEConfig) -> dict:
    """MTWV (+ threshold; None = detect nothing), MAP and EER of one layer's features."""
    scores = qbe_scores(queries, docs, cfg)
    value, threshold = mtwv(scores, truth, cfg.p_target, cfg.c_miss, cfg.c_fa)
    return {"mtwv": value, "threshold": None if math.isinf(threshold) else threshold,
            "map": mean_average_precision(scores, truth),
            "eer": equal_error_rate(scores, truth)}


def run_qbe(upstream, docs, dev_queries, test_queries, cfg: ProbeConfig = ProbeConfig(),
            qbe: QbEConfig = QbEConfig()):
    """Zero-shot QbE of a frozen ``upstream``: every cached layer scored on dev, the best dev-MTWV
    layer (or ``cfg.layer``) reported on test.

    Args:
        docs: CutSet / manifest of the searched documents (shared by dev and test, as QUESST).
        dev_queries, test_queries: query cuts, each with the ``qbe_hits`` label.
    Returns a :class:`~s3kit.eval.tasks.common.TaskResult` (metric ``mtwv``; ``extra`` holds test
    MAP / EER, per-layer dev numbers and the cost parameters).
    """
    from s3kit.eval.tasks.common import TaskResult, features, layer_position, load_inputs

    upstream, cuts = load_inputs(upstream, {"docs": docs, "dev": dev_queries, "test": test_queries}, "qbe")
    feats = features(upstream, cuts, cfg, pooled=False)
    layers = feats["docs"].layers
    doc_ids = [c.id for c in cuts["docs"]]
    truth = {s: truth_matrix(list(cuts[s]), doc_ids) for s in ("dev", "test")}
    fixed = layer_position(cfg, layers)
    candidates = [fixed] if fixed is not None else list(range(len(layers)))

    def layer_feats(split: str, k: int) -> list[Tensor]:
        return [feats[split].get(c.id)[k] for c in cuts[split]]

    doc_cache = {}
    dev = {}
    for k in candidates:
        doc_cache[k] = layer_feats("docs", k)
        dev[k] = evaluate_layer(layer_feats("dev", k), doc_cache[k], truth["dev"], qbe)
        if fixed is None:
            del doc_cache[k]  # keep one layer of document frames in memory at a time
    best = max(candidates, key=lambda k: dev[k]["mtwv"])  # first (lowest) layer on ties
    test = evaluate_layer(layer_feats("test", best), doc_cache.get(best) or layer_feats("docs", best), truth["test"], qbe)
    weights = [1.0 if k == best else 0.0 for k in range(len(layers))]
    return TaskResult(
        task="qbe", upstream=upstream.name, metric="mtwv", higher_is_better=True, test=test["mtwv"],
        dev=dev[best]["mtwv"], updates_to_best=0, updates=0, lr=0.0, fraction=1.0, seed=cfg.seed,
        num_train=0, layers=layers, layer_weights=weights, curve=[],
        extra={"layer": layers[best], "test_map": test["map"], "test_eer": test["eer"],
               "dev_by_layer": {str(layers[k]): dev[k] for k in candidates},
               "p_target": qbe.p_target, "c_miss": qbe.c_miss, "c_fa": qbe.c_fa, "beta": qbe.beta,
               "num_docs": len(doc_ids), "num_queries": {s: len(cuts[s]) for s in ("dev", "test")}},
    )
