"""Utterance embeddings: each layer of an upstream averaged over valid frames.

Dimension legend: ``N`` utterances, ``L`` layers (``states`` indices), ``D`` features.

This is SpEAT's pooling (bias paper Sec. 2.2: "averaging the embeddings within each layer
along time"); the across-layer aggregation is left to the caller (``speat_layers`` means them).
"""

from __future__ import annotations

import numpy as np
import torch

from s3kit.upstream.base import Upstream


def _cut_ids(cuts) -> list[str]:
    ids = [c.id for c in cuts]
    if len(set(ids)) != len(ids):
        raise ValueError("utterance_embeddings: cut ids must be unique (lhotse CutSet ids)")
    return ids


@torch.inference_mode()
def utterance_embeddings(upstream: Upstream, cuts, layers: list[int] | None = None, max_duration: float = 60.0,
                         device: str | torch.device = "auto", progress: bool = True) -> np.ndarray:
    """Time-averaged hidden states ``[N, L, D]`` (float32), rows in the order of ``cuts``.

    upstream: any :class:`~s3kit.upstream.base.Upstream` (put in eval mode here).
    cuts: a lhotse CutSet or a manifest path. layers: ``states`` indices (all by default).
    max_duration: seconds of audio per batch on CUDA; batching follows
    :func:`~s3kit.data.loader.inference_plan` (on CPU one utterance at a time, or batches for an
    upstream that sets ``cpu_batch_seconds``).
    """
    from tqdm.auto import tqdm

    from s3kit.data.loader import cpu_batch_seconds_of, inference_plan, sorted_batches
    from s3kit.data.manifest import load_cuts
    from s3kit.extract import resolve_device

    if isinstance(cuts, (str, bytes)) or hasattr(cuts, "__fspath__"):
        cuts = load_cuts(cuts)
    ids = _cut_ids(cuts)
    layers = list(range(upstream.num_layers)) if layers is None else list(layers)
    bad = [l for l in layers if not -upstream.num_layers <= l < upstream.num_layers]
    if bad:
        raise ValueError(f"{upstream.name}: layers {bad} out of range (it has {upstream.num_layers} states)")
    sizes = {upstream.hidden_sizes[l] for l in layers}
    if len(sizes) != 1:
        raise ValueError(f"{upstream.name}: chosen layers have different sizes {sorted(sizes)}; pass layers= of one size")
    row = {cut_id: i for i, cut_id in enumerate(ids)}
    out = np.zeros((len(ids), len(layers), sizes.pop()), dtype=np.float32)
    seen = np.zeros(len(ids), dtype=bool)
    device = resolve_device(device) if isinstance(device, str) else device
    upstream = upstream.to(device).eval()
    plan = inference_plan(device, max_duration, cpu_batch_seconds=cpu_batch_seconds_of(upstream))
    loader = sorted_batches(cuts, plan)
    with tqdm(total=len(ids), desc=f"embed {upstream.name}", unit="utt", disable=not progress) as bar:
        for batch in loader:
            batch = batch.to(device)
            hidden = upstream(batch.wavs, batch.lengths)
            pooled = hidden.pooled(layers).float().cpu().numpy()  # (B, L, D)
            rows = [row[i] for i in batch.ids]
            out[rows] = pooled
            seen[rows] = True
            bar.update(len(rows))
    if not seen.all():
        missing = [ids[i] for i in np.flatnonzero(~seen)[:5]]
        raise RuntimeError(f"utterance_embeddings: the loader skipped {int((~seen).sum())} cuts, e.g. {missing}")
    return out
