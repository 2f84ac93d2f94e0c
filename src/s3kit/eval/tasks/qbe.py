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


def average_precisions(scores, truth) -> np.ndarray:
    """``[Q']`` average precision of ranking the documents by score, per query with a true document."""
    s, t = _check(scores, truth)
    aps = []
    for row, rel in zip(s, t):
        if not rel.any():
            continue
        hits = rel[np.argsort(-row, kind="stable")]
        ranks = np.flatnonzero(hits) + 1
        aps.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
    return np.asarray(aps, dtype=float)


def mean_average_precision(scores, truth) -> float:
    """Mean over queries (with a true document) of the average precision of ranking documents by score."""
    aps = average_precisions(scores, truth)
    if not aps.size:
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


# ----------------------------------------------------------------------------------- per query


def query_items(query_ids: list[str], doc_ids: list[str], scores, truth, beta: float,
                threshold: float = math.inf) -> list[dict]:
    """Per-query results (the item format of :func:`s3kit.eval.probe.predict`): ``id``,
    ``reference`` (the true documents' ids), ``hypothesis`` (the documents detected at
    ``threshold``, the run's MTWV threshold), ``targets`` (indices of the true documents in the
    document order), ``scores [N]`` over all documents and the MTWV cost ``beta``.

    Scores are stored at float32 precision in their shortest decimal form: that keeps their order
    and ties, so MTWV, MAP and EER from the items equal those of the scores.
    """
    s, t = _check(scores, truth)
    if s.shape != (len(query_ids), len(doc_ids)):
        raise ValueError(f"query_items: scores {s.shape} for {len(query_ids)} queries and {len(doc_ids)} documents")
    items = []
    for qid, row, rel in zip(query_ids, s, t):
        targets = np.flatnonzero(rel)
        detected = np.flatnonzero(row >= threshold) if math.isfinite(threshold) else []
        items.append({"id": qid, "reference": " ".join(doc_ids[j] for j in targets),
                      "hypothesis": " ".join(doc_ids[j] for j in detected), "targets": targets.tolist(),
                      "scores": [float(x) for x in row.astype(np.float32).astype(str)], "beta": float(beta)})
    return items


def _item_arrays(items: list[dict]) -> tuple[np.ndarray, np.ndarray, float]:
    """``scores [Q, N]``, ``truth [Q, N]`` and β of per-query items."""
    if not items:
        raise ValueError("QbE: no per-query items")
    n = len(items[0]["scores"])
    betas = {float(i["beta"]) for i in items}
    if len(betas) > 1 or any(len(i["scores"]) != n for i in items):
        raise ValueError("QbE items: every query needs scores over the same documents and one beta")
    scores = np.array([i["scores"] for i in items], dtype=np.float64)
    truth = np.zeros(scores.shape, dtype=bool)
    for k, i in enumerate(items):
        truth[k, i["targets"]] = True
    return scores, truth, betas.pop()


def twv_table(scores, truth, beta: float) -> np.ndarray:
    """``[Q', J]`` each query's term-weighted value ``hits / N_true - β false alarms / (N - N_true)``
    at each of the ``J`` distinct scores of true trials as threshold (detect where score >= θ),
    for the ``Q'`` queries with a true document.

    TWV over a set of queries is the mean of their rows, and its maximum over θ is MTWV: between
    two true trials a lower threshold only adds false alarms, so the maximum lies at a true trial's
    score (or at "detect nothing", 0). A bootstrap resample of queries is then a weighted mean of
    rows, with no re-sorting of trials (:func:`mtwv_interval`).
    """
    s, t = _check(scores, truth)
    keep = t.any(1)
    if not keep.any():
        raise ValueError("mtwv: no query has a true document")
    s, t = s[keep], t[keep]
    thresholds = np.unique(s[t])  # (J,)
    n = s.shape[1]
    table = np.empty((s.shape[0], thresholds.size))
    for q, (row, rel) in enumerate(zip(s, t)):
        pos, neg = np.sort(row[rel]), np.sort(row[~rel])
        hits = pos.size - np.searchsorted(pos, thresholds, side="left")
        fas = neg.size - np.searchsorted(neg, thresholds, side="left")
        table[q] = hits / pos.size - beta * fas / max(n - pos.size, 1)
    return table


def _mtwv_of(table: np.ndarray, counts: np.ndarray) -> float:
    """MTWV of the queries drawn ``counts [Q']`` times each (all once: the test set's MTWV)."""
    return max(0.0, float((counts @ table).max() / counts.sum()))


def mtwv_items(items: list[dict]) -> float:
    """MTWV of per-query items (:func:`query_items`); equals :func:`mtwv` of their scores."""
    scores, truth, beta = _item_arrays(items)
    table = twv_table(scores, truth, beta)
    return _mtwv_of(table, np.ones(table.shape[0]))


def mtwv_interval(items: list[dict], seed: int = 0):
    """MTWV with its 95 % bootstrap interval over the queries with a true document
    (:func:`s3kit.eval.stats.bootstrap_stat`): each resample's MTWV is computed over the pooled
    trials of the drawn queries, a query drawn twice counting twice. ``n``: those queries."""
    from s3kit.eval import stats

    scores, truth, beta = _item_arrays(items)
    table = twv_table(scores, truth, beta)
    size = table.shape[0]
    return stats.bootstrap_stat(lambda idx: _mtwv_of(table, np.bincount(idx, minlength=size)), size, seed=seed)


def map_interval(items: list[dict], seed: int = 0):
    """MAP with its 95 % bootstrap interval over the queries with a true document (a mean, so
    :func:`s3kit.eval.stats.bootstrap_rate` with denominator 1 per query)."""
    from s3kit.eval import stats

    scores, truth, _ = _item_arrays(items)
    aps = average_precisions(scores, truth)
    if not aps.size:
        raise ValueError("MAP: no query has a true document")
    return stats.bootstrap_rate(aps, np.ones_like(aps), seed=seed)


def compare_mtwv(items_a: list[dict], items_b: list[dict], seed: int = 0):
    """MTWV of system A minus B on the same queries and documents: the paired bootstrap over the
    queries with a true document (:func:`s3kit.eval.stats.paired_bootstrap_stat`, one draw for
    both systems)."""
    from s3kit.eval import stats

    sa, ta, beta_a = _item_arrays(items_a)
    sb, tb, beta_b = _item_arrays(items_b)
    if sa.shape != sb.shape or not np.array_equal(ta, tb):
        raise ValueError("compare QbE: the runs differ in their documents or true documents; need the same test set")
    if beta_a != beta_b:
        raise ValueError(f"compare QbE: the runs were scored with different MTWV costs (beta {beta_a:g} vs {beta_b:g})")
    table_a, table_b = twv_table(sa, ta, beta_a), twv_table(sb, tb, beta_b)
    size = table_a.shape[0]

    def statistic(idx):
        counts = np.bincount(idx, minlength=size)
        return _mtwv_of(table_a, counts), _mtwv_of(table_b, counts)

    return stats.paired_bootstrap_stat(statistic, size, seed=seed)


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
    Returns a :class:`~s3kit.eval.tasks.common.TaskResult` (metric ``mtwv`` with its bootstrap
    interval over the test queries that have a true document, ``n`` of them; ``predictions``: the
    per-query :func:`query_items`; ``extra`` holds test MAP with its interval, EER, per-layer dev
    numbers and the cost parameters).
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
    test_scores = qbe_scores(layer_feats("test", best), doc_cache.get(best) or layer_feats("docs", best), qbe)
    _, threshold = mtwv(test_scores, truth["test"], qbe.p_target, qbe.c_miss, qbe.c_fa)
    items = query_items([c.id for c in cuts["test"]], doc_ids, test_scores, truth["test"], qbe.beta, threshold)
    interval, map_iv = mtwv_interval(items, seed=cfg.seed), map_interval(items, seed=cfg.seed)
    weights = [1.0 if k == best else 0.0 for k in range(len(layers))]
    return TaskResult(
        task="qbe", upstream=upstream.name, metric="mtwv", higher_is_better=True, test=interval.value,
        dev=dev[best]["mtwv"], updates_to_best=0, updates=0, lr=0.0, fraction=1.0, seed=cfg.seed,
        num_train=0, layers=layers, layer_weights=weights, curve=[],
        n=interval.n, ci_low=interval.ci_low, ci_high=interval.ci_high, predictions=items,
        extra={"layer": layers[best], "test_map": map_iv.value, "test_map_ci": [map_iv.ci_low, map_iv.ci_high],
               "test_eer": equal_error_rate(test_scores, truth["test"]),
               "test_threshold": None if math.isinf(threshold) else threshold,
               "dev_by_layer": {str(layers[k]): dev[k] for k in candidates},
               "p_target": qbe.p_target, "c_miss": qbe.c_miss, "c_fa": qbe.c_fa, "beta": qbe.beta,
               "num_docs": len(doc_ids), "num_queries": {s: len(cuts[s]) for s in ("dev", "test")}},
    )
