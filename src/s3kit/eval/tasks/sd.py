"""Speaker diarization (SUPERB SD on Libri2Mix): frame-level two-speaker activity, DER.

Dimension legend: ``B`` batch, ``L`` layers, ``T`` frames, ``D`` width, ``S`` speakers, ``H`` LSTM units.

s3prl ``downstream/diarization`` (REFERENCE-NOTES §G), followed here:

* labels: binary ``[T, S]`` speaker activity at the upstream's frame rate, a turn from ``t0`` to
  ``t1`` seconds covering frames ``round(t0 * rate) .. round(t1 * rate)``; speakers of a
  recording ordered by first turn (the order does not matter: the loss is permutation-free);
* head: the softmax-weighted sum of the hidden states -> one unidirectional LSTM of 512 units
  -> ``Linear(512, S)``;
* loss: permutation-invariant BCE: per recording, the frame-summed mean-over-speakers BCE of
  every speaker permutation, the minimum taken, summed over the batch and divided by the valid
  frames; training on chunks of 2,000 frames (step 2,000), scoring on whole recordings;
* Adam lr 1e-4, 30,000 updates, batch 32 (s3prl: 8 x 4 accumulation), dev every 500 updates,
  the checkpoint of lowest dev DER kept (s3prl's newer recipe; the legacy one kept frame accuracy);
* scoring: sigmoid -> threshold -> median filter over frames -> speaker turns -> DER with
  ``pyannote.metrics`` at SUPERB's settings (collar 0, overlapped speech scored, the whole
  recording as UEM). s3prl reports the lowest test DER over thresholds {0.3 .. 0.7} x median
  {1, 11}: that is choosing on test; **s3kit picks the pair on dev** and scores test with it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from s3kit.eval.heads import WeightedSum
from s3kit.eval.probe import ProbeConfig

SD_LR, SD_UPDATES, SD_EVAL_EVERY = 1e-4, 30_000, 500  # s3prl diarization config


@dataclass(frozen=True)
class SDConfig:
    """SD options (s3prl's values). ``dev_threshold`` / ``dev_median``: the setting used for the
    dev DER that picks the checkpoint during training."""

    num_speakers: int = 2
    hidden: int = 512
    chunk_frames: int = 2000
    thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
    median_filters: tuple[int, ...] = (1, 11)
    dev_threshold: float = 0.5
    dev_median: int = 1
    # z-score every state per dimension with train statistics before the weighted sum. s3prl
    # does not (SSL states are near unit scale); raw fbank / MFCC (values ~10-70) saturate the
    # LSTM's gates and the probe learns nothing without it.
    standardize: bool = False


class SDHead(nn.Module):
    """``[B, L, T, D] -> [B, T, S]`` speaker-activity logits: weighted sum -> LSTM -> Linear."""

    def __init__(self, num_layers: int, dim: int, num_speakers: int = 2, hidden: int = 512, layer: int | None = None):
        super().__init__()
        self.featurizer = WeightedSum(num_layers, layer=layer)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.linear = nn.Linear(hidden, num_speakers)
        self.register_buffer("mean", torch.zeros(num_layers, 1, dim))  # identity unless set (SDConfig.standardize)
        self.register_buffer("std", torch.ones(num_layers, 1, dim))

    def forward(self, states: Tensor, lengths: Tensor) -> Tensor:
        """Logits of every frame; those past ``lengths[b]`` are padding (the loss and the scoring
        use frames ``< lengths[b]`` only)."""
        x = self.featurizer((states - self.mean) / self.std)  # (B, T, D)
        # One direction, padding at the end: frame t's output depends on frames <= t only, so the
        # padded batch gives the packed sequence's outputs on every valid frame (tested), and on
        # CPU the padded LSTM runs forward + backward ~10x faster than the packed one (PyTorch's
        # packed CPU path; benchmarks/sd_head.py).
        out, _ = self.lstm(x)  # (B, T, H)
        return self.linear(out)


def pit_bce(logits: Tensor, labels: Tensor, lengths: Tensor) -> Tensor:
    """Permutation-invariant BCE (s3prl ``pit_loss``).

    ``logits, labels [B, T, S]``, ``lengths [B]`` -> scalar: ``sum_b min_perm sum_t mean_s
    BCE(logit[b,t,s], label[b,t,perm(s)]) / sum_b lengths[b]``.
    """
    mask = (torch.arange(logits.shape[1], device=logits.device)[None] < lengths[:, None]).float()  # (B, T)
    per_perm = []
    for perm in itertools.permutations(range(labels.shape[2])):
        bce = nn.functional.binary_cross_entropy_with_logits(logits, labels[..., list(perm)], reduction="none")
        per_perm.append((bce.mean(dim=2) * mask).sum(dim=1))  # (B,)
    return torch.stack(per_perm).amin(dim=0).sum() / mask.sum().clamp_min(1.0)


def speaker_turns(cut) -> dict[str, list[tuple[float, float]]]:
    """``{speaker: [(start, end) seconds from the cut start]}`` from the cut's supervisions."""
    out: dict[str, list[tuple[float, float]]] = {}
    for sup in sorted(cut.supervisions, key=lambda s: s.start):
        if sup.speaker is None:
            raise ValueError(f"cut {cut.id!r}: supervision {sup.id!r} has no speaker; SD needs one supervision per speaker turn")
        out.setdefault(sup.speaker, []).append((max(0.0, sup.start), min(cut.duration, sup.end)))
    return out


def frame_labels(cut, num_frames: int, frame_rate: float, num_speakers: int) -> Tensor:
    """``[T, S]`` binary activity, speakers in order of their first turn."""
    turns = speaker_turns(cut)
    if len(turns) > num_speakers:
        raise ValueError(f"cut {cut.id!r} has {len(turns)} speakers; this probe has {num_speakers} outputs (SDConfig.num_speakers)")
    out = torch.zeros(num_frames, num_speakers)
    for s, segs in enumerate(turns.values()):
        for t0, t1 in segs:
            out[round(t0 * frame_rate) : round(t1 * frame_rate), s] = 1.0
    return out


def decisions(probs: np.ndarray, threshold: float, median: int) -> np.ndarray:
    """``[T, S]`` probabilities -> binary activity: threshold, then a ``median``-frame median filter
    per speaker, zero-padded at the ends (s3prl's ``scipy.signal.medfilt``; ``ndimage`` computes
    the same, faster)."""
    from scipy.ndimage import median_filter

    binary = (probs > threshold).astype(np.float64)
    if median > 1:
        binary = median_filter(binary, size=(median, 1), mode="constant", cval=0.0)
    return binary > 0.5


def activity_to_annotation(active: np.ndarray, frame_rate: float, uri: str):
    """``[T, S]`` bool -> a ``pyannote.core.Annotation`` with one track per run of active frames."""
    from pyannote.core import Annotation, Segment

    ann = Annotation(uri=uri)
    for s in range(active.shape[1]):
        col = np.concatenate([[False], active[:, s], [False]])
        edges = np.flatnonzero(col[1:] != col[:-1])
        for k, (a, b) in enumerate(zip(edges[::2], edges[1::2])):
            ann[Segment(a / frame_rate, b / frame_rate), f"{s}.{k}"] = f"spk{s}"
    return ann


def reference_annotation(cut):
    from pyannote.core import Annotation, Segment

    ann = Annotation(uri=cut.id)
    for spk, segs in speaker_turns(cut).items():
        for k, (t0, t1) in enumerate(segs):
            if t1 > t0:
                ann[Segment(t0, t1), f"{spk}.{k}"] = spk
    return ann


def diarization_error_rate(refs: list, hyps: list, durations: list[float]) -> dict:
    """Corpus DER (pyannote.metrics, collar 0, overlap scored): total missed + false alarm +
    confusion over total reference speech, and the three components."""
    import warnings

    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    for ref, hyp, dur in zip(refs, hyps, durations):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metric(ref, hyp, uem=Timeline([Segment(0.0, dur)]))
    total = metric[:]
    out = {k: float(total[k]) for k in ("missed detection", "false alarm", "confusion", "total")}
    out["der"] = abs(metric) if out["total"] > 0 else math.nan
    return out


def _turns_str(ann) -> str:
    """``spk 0.10-1.00, ...`` (speaker, start-end seconds) of an annotation, in time order."""
    return ", ".join(f"{label} {seg.start:.2f}-{seg.end:.2f}" for seg, _, label in ann.itertracks(yield_label=True))


def diarization_items(ids: list[str], refs: list, hyps: list, durations: list[float]) -> list[dict]:
    """Per-recording results (the item format of :func:`s3kit.eval.probe.predict`): ``id``,
    ``reference`` / ``hypothesis`` turns, ``errors`` = missed + false alarm + confusion seconds
    and ``ref_length`` = reference speech seconds (pyannote.metrics per recording, collar 0,
    overlap scored, the whole recording as UEM), plus the three components. Summed errors over
    summed ``ref_length`` is :func:`diarization_error_rate`'s corpus DER."""
    import warnings

    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    items = []
    for cut_id, ref, hyp, dur in zip(ids, refs, hyps, durations):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = metric(ref, hyp, uem=Timeline([Segment(0.0, dur)]), detailed=True)
        parts = {k: float(c[k]) for k in ("missed detection", "false alarm", "confusion")}
        items.append({"id": cut_id, "reference": _turns_str(ref), "hypothesis": _turns_str(hyp),
                      "errors": sum(parts.values()), "ref_length": float(c["total"]),
                      "missed": parts["missed detection"], "false_alarm": parts["false alarm"],
                      "confusion": parts["confusion"]})
    return items


class _SDData:
    """Cached frames + activity labels of one split."""

    def __init__(self, cuts, feats, num_speakers: int):
        self.cuts = list(cuts)
        self.feats = feats
        self.rate = float(feats.meta["frame_rate"])
        self.ids = [c.id for c in self.cuts]
        self.labels = [frame_labels(c, feats.get(c.id).shape[1], self.rate, num_speakers) for c in self.cuts]
        self.refs = [reference_annotation(c) for c in self.cuts]

    def chunks(self, size: int) -> list[tuple[int, int, int]]:
        """``(item, start, end)`` windows of ``size`` frames, step ``size`` (s3prl's chunking)."""
        return [(i, s, min(s + size, len(y))) for i, y in enumerate(self.labels) for s in range(0, len(y), size)]


@torch.no_grad()
def sd_probabilities(model: SDHead, data: _SDData, device, batch_size: int = 8) -> list[np.ndarray]:
    """Sigmoid activity ``[T_i, S]`` per recording (whole recordings)."""
    from s3kit.eval.tasks.common import frame_batch

    out = []
    for start in range(0, len(data.ids), batch_size):
        ids = data.ids[start : start + batch_size]
        states, lengths = frame_batch(data.feats, ids, device)
        probs = model(states, lengths).sigmoid().cpu().numpy()
        out += [probs[b, : int(n)] for b, n in enumerate(lengths.tolist())]
    return out


def _hyps(probs: list[np.ndarray], data: _SDData, threshold: float, median: int) -> list:
    return [activity_to_annotation(decisions(p, threshold, median), data.rate, c.id) for p, c in zip(probs, data.cuts)]


def score(probs: list[np.ndarray], data: _SDData, threshold: float, median: int) -> dict:
    return diarization_error_rate(data.refs, _hyps(probs, data, threshold, median), [c.duration for c in data.cuts])


def run_sd(upstream, train, dev, test, cfg: ProbeConfig = ProbeConfig(), sd: SDConfig = SDConfig()):
    """Train the SD probe on ``train``, keep the lowest-dev-DER checkpoint, pick threshold and
    median filter on dev, score test. Cuts carry one supervision per speaker turn (``speaker``
    set). Returns a :class:`~s3kit.eval.tasks.common.TaskResult` (metric ``der``, lower is better,
    with its recording-level bootstrap interval and the per-recording :func:`diarization_items`
    as ``predictions``; ``extra``: the chosen threshold / median, dev grid, test DER components)."""
    from s3kit.data.subsets import stratified_subset
    from s3kit.eval.probe import _device
    from s3kit.eval.probe import train_loop
    from s3kit.eval.tasks.common import TaskResult, features, frame_batch, layer_position, load_inputs

    upstream, cuts = load_inputs(upstream, {"train": train, "dev": dev, "test": test}, "sd")
    feats = features(upstream, cuts, cfg, pooled=False)
    if cfg.fraction < 1.0:
        cuts["train"] = stratified_subset(cuts["train"], cfg.fraction, key=None, seed=cfg.seed)
    data = {n: _SDData(c, feats[n], sd.num_speakers) for n, c in cuts.items()}
    layers = feats["train"].layers
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = SDHead(len(layers), feats["train"].dim, sd.num_speakers, sd.hidden, layer_position(cfg, layers)).to(device)
    chunks = data["train"].chunks(sd.chunk_frames)
    tr = data["train"]
    if sd.standardize:
        frames = torch.cat([tr.feats.get(i) for i in tr.ids], dim=1)  # (L, sum T, D)
        model.mean.copy_(frames.mean(1, keepdim=True))
        model.std.copy_(frames.std(1, keepdim=True).clamp_min(1e-5))

    def step_loss(index: list[int]) -> Tensor:
        picked = [chunks[i] for i in index]
        states, lengths = frame_batch(tr.feats, [tr.ids[i] for i, _, _ in picked], device, [(s, e) for _, s, e in picked])
        labels = nn.utils.rnn.pad_sequence([tr.labels[i][s:e] for i, s, e in picked], batch_first=True).to(device)
        return pit_bce(model(states, lengths), labels, lengths)

    def evaluate() -> float:
        return score(sd_probabilities(model, data["dev"], device), data["dev"], sd.dev_threshold, sd.dev_median)["der"]

    lr = cfg.lr if cfg.lr is not None else SD_LR
    max_updates = cfg.max_updates or SD_UPDATES
    _, best_update, updates, curve = train_loop(model, len(chunks), step_loss, evaluate, cfg, lr, max_updates,
                                                cfg.eval_every or SD_EVAL_EVERY, higher_is_better=False,
                                                desc=f"probe sd lr={lr:g}")
    dev_probs = sd_probabilities(model, data["dev"], device)
    grid = {(t, m): score(dev_probs, data["dev"], t, m)["der"] for t in sd.thresholds for m in sd.median_filters}
    (threshold, median), dev_der = min(grid.items(), key=lambda kv: kv[1])  # first on ties
    test_probs = sd_probabilities(model, data["test"], device)
    test = score(test_probs, data["test"], threshold, median)
    te = data["test"]
    items = diarization_items(te.ids, te.refs, _hyps(test_probs, te, threshold, median), [c.duration for c in te.cuts])
    from s3kit.eval.stats import bootstrap_rate

    interval = bootstrap_rate([i["errors"] for i in items], [i["ref_length"] for i in items], seed=cfg.seed)
    return TaskResult(
        task="sd", upstream=upstream.name, metric="der", higher_is_better=False, test=test["der"], dev=dev_der,
        updates_to_best=best_update, updates=updates, lr=lr, fraction=cfg.fraction, seed=cfg.seed,
        num_train=len(cuts["train"]), layers=layers, layer_weights=model.featurizer.normalized().detach().cpu().tolist(),
        curve=curve, n=interval.n, ci_low=interval.ci_low, ci_high=interval.ci_high, predictions=items,
        extra={"threshold": threshold, "median": median, "picked_on": "dev",
               "dev_grid": [{"threshold": t, "median": m, "der": v} for (t, m), v in grid.items()],
               "test_components": {k: v for k, v in test.items() if k != "der"}, "frame_rate": data["test"].rate},
    )
