"""Non-speech linear evaluation (M2D-S's ENV and MUS columns; BYOL-A / EVAR protocol).

Dimension legend: ``N`` clips, ``D`` width, ``C`` classes.

What EVAR (nttcslab/eval-audio-repr ``lineareval.py``) does for M2D, followed here
(REFERENCE-NOTES §G): the **final layer only**, averaged over time (M2D; BYOL-A also
concatenates the time max), one embedding per clip computed once; a ``StandardScaler`` fitted
on train; one ``Linear(D, C)`` trained with Adam (lr 3e-5, weight decay 1e-8), batch
``min(200, N)``, up to 200 epochs, early stopping on validation accuracy (patience 20 epochs,
best weights restored); test accuracy of those weights. EVAR repeats training with seeds 42-44
and reports the mean: run ``seed`` = 42, 43, 44 for that.

Tasks: ``env`` (ESC-50, UrbanSound8K) and ``mus`` (GTZAN, NSynth, Surge); both read the
``sound_class`` label. updates-to-best = the best epoch's last update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from s3kit.eval.probe import ProbeConfig

LABEL = "sound_class"
LINEAR_LR = 3e-5  # EVAR config/m2d.yaml


@dataclass(frozen=True)
class LinearEvalConfig:
    """EVAR's linear-evaluation settings (``ProbeConfig.lr`` overrides ``lr``; ``ProbeConfig.patience``,
    when set, overrides ``patience``; ``ProbeConfig.max_updates``, when set, caps the updates)."""

    lr: float = LINEAR_LR
    weight_decay: float = 1e-8
    max_epochs: int = 200
    patience: int = 20
    max_batch: int = 200


def standardize(train, *others):
    """Per-dimension z-score with train statistics (sklearn ``StandardScaler``: population std,
    a zero std left as 1). ``[N, D]`` tensors in, the same shapes out."""
    mean = train.mean(0)
    std = train.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple((x - mean) / std for x in (train, *others))


def run_linear_eval(upstream, task: str, train, dev, test, cfg: ProbeConfig = ProbeConfig(),
                    lin: LinearEvalConfig = LinearEvalConfig()):
    """Linear evaluation of the final layer's time-averaged features on ``sound_class``.

    Returns a :class:`~s3kit.eval.tasks.common.TaskResult` (metric ``accuracy`` with its Wilson
    interval; ``predictions``: ``correct`` per test clip, as :func:`s3kit.eval.probe.predict`)."""
    from s3kit.data.manifest import get_label
    from s3kit.data.subsets import stratified_subset
    from s3kit.eval import metrics, stats
    from s3kit.eval.tasks.common import TaskResult, features, load_inputs

    upstream, cuts = load_inputs(upstream, {"train": train, "dev": dev, "test": test}, task)
    last = upstream.num_layers - 1
    layer = cfg.layer if cfg.layer is not None else last
    feats = features(upstream, cuts, cfg, pooled=True, layers=[layer])
    if cfg.fraction < 1.0:
        cuts["train"] = stratified_subset(cuts["train"], cfg.fraction, key=LABEL, seed=cfg.seed)
    labels = {}
    for name, cs in cuts.items():
        labels[name] = []
        for c in cs:
            value = get_label(c, LABEL)
            if value is None:
                raise ValueError(f"{task} {name}: cut {c.id!r} has no {LABEL!r} label")
            labels[name].append(str(value))
    classes = sorted({v for vs in labels.values() for v in vs})
    index = {c: i for i, c in enumerate(classes)}
    x = {n: feats[n].stacked([c.id for c in cs])[:, 0] for n, cs in cuts.items()}  # (N, D)
    y = {n: torch.tensor([index[v] for v in labels[n]]) for n in cuts}
    x["train"], x["dev"], x["test"] = standardize(x["train"], x["dev"], x["test"])

    torch.manual_seed(cfg.seed)
    model = nn.Linear(x["train"].shape[1], len(classes))
    lr = cfg.lr if cfg.lr is not None else lin.lr
    optim = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=lin.weight_decay)
    n = len(y["train"])
    batch = min(lin.max_batch, n)
    patience = cfg.patience if cfg.patience is not None else lin.patience
    gen = torch.Generator().manual_seed(cfg.seed)

    def accuracy(split: str) -> float:
        with torch.no_grad():
            return metrics.accuracy(model(x[split]).argmax(1), y[split])

    best, best_update, best_state, curve, stale, update = -1.0, 0, None, [], 0, 0
    for _ in range(lin.max_epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            loss = nn.functional.cross_entropy(model(x["train"][idx]), y["train"][idx])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            update += 1
        score = accuracy("dev")
        curve.append((update, score))
        if score > best:
            best, best_update, stale = score, update, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= patience:
                break
        if cfg.max_updates is not None and update >= cfg.max_updates:
            break
    model.load_state_dict(best_state)
    with torch.no_grad():
        pred = model(x["test"]).argmax(1).tolist()
    items = [{"id": c.id, "reference": classes[t], "hypothesis": classes[p], "correct": p == t}
             for c, p, t in zip(cuts["test"], pred, y["test"].tolist())]
    interval = stats.accuracy_interval([i["correct"] for i in items])
    return TaskResult(
        task=task, upstream=upstream.name, metric="accuracy", higher_is_better=True, test=interval.value, dev=best,
        updates_to_best=best_update, updates=update, lr=lr, fraction=cfg.fraction, seed=cfg.seed,
        num_train=n, layers=[layer], layer_weights=[1.0], curve=curve,
        n=interval.n, ci_low=interval.ci_low, ci_high=interval.ci_high, predictions=items,
        extra={"classes": classes, "epochs": len(curve), "batch": batch, "pooling": "time mean, final layer"},
    )
