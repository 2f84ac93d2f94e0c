"""What the SD, SF, QbE and linear-evaluation tasks share with :mod:`s3kit.eval.probe`: the
result type, loading upstream / manifests, and the frozen-feature cache (their training loop is
:func:`s3kit.eval.probe.train_loop`).

Dimension legend: ``L`` layers, ``T`` frames, ``D`` width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3kit.eval.probe import ProbeConfig, ProbeResult, _device


@dataclass
class TaskResult(ProbeResult):
    """A :class:`~s3kit.eval.probe.ProbeResult` plus task-specific numbers in ``extra``
    (QbE: MAP / EER / per-layer dev MTWV; SD: the dev-picked threshold and median filter;
    SF: slot-value CER; linear evaluation: epochs)."""

    extra: dict[str, Any] = field(default_factory=dict)


def load_inputs(upstream, splits: dict[str, Any], task: str):
    """``(upstream, {split: CutSet})``: an upstream name / path loaded, manifest paths read, and an
    error naming the split when a manifest is empty."""
    from s3kit.data.manifest import load_cuts

    if isinstance(upstream, (str, Path)):
        from s3kit.upstream import load_upstream

        upstream = load_upstream(upstream)
    cuts = {n: load_cuts(c) if isinstance(c, (str, Path)) else c for n, c in splits.items()}
    for name, c in cuts.items():
        if len(c) == 0:
            raise ValueError(f"{task}: the {name} manifest is empty")
    return upstream, cuts


def features(upstream, cuts: dict[str, Any], cfg: ProbeConfig, pooled: bool, layers: list[int] | None = None):
    """Cached frozen-upstream features of every split (``extract_features`` once per split)."""
    from s3kit.eval.features_cache import extract_features, upstream_identity

    device = _device(cfg.device)
    identity = upstream_identity(upstream)
    cache_dir = Path(cfg.cache_dir).expanduser()
    return {n: extract_features(upstream, c, cache_dir, layers=layers if layers is not None else cfg.cache_layers,
                                pooled=pooled, max_duration=cfg.max_duration, device=device, identity=identity,
                                progress=cfg.progress)
            for n, c in cuts.items()}


def layer_position(cfg: ProbeConfig, layers: list[int]) -> int | None:
    """Index of ``cfg.layer`` among the cached ``layers`` (None: weighted sum of all)."""
    if cfg.layer is None:
        return None
    if cfg.layer not in layers:
        raise ValueError(f"layer {cfg.layer} is not among the cached layers {layers}")
    return layers.index(cfg.layer)


def frame_batch(feats, ids: list[str], device, spans: list[tuple[int, int]] | None = None):
    """Zero-padded ``[B, L, T, D]`` states and ``[B]`` lengths of cached frame features
    (``spans``: a frame window ``(start, end)`` per item, e.g. SD's 2,000-frame chunks)."""
    import torch

    items = [feats.get(i) for i in ids]  # each (L, T_i, D)
    if spans is not None:
        items = [it[:, s:e] for it, (s, e) in zip(items, spans)]
    lengths = torch.tensor([it.shape[1] for it in items], dtype=torch.long)
    states = torch.zeros(len(items), items[0].shape[0], int(lengths.max()), items[0].shape[2])
    for b, it in enumerate(items):
        states[b, :, : it.shape[1]] = it
    return states.to(device), lengths.to(device)
