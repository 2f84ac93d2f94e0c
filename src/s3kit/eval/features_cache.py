"""Frozen-upstream features computed once and reused across tasks, learning rates and seeds.

Dimension legend: ``N`` utterances, ``L`` cached layers, ``T`` frames, ``D`` width.

s3prl re-runs the upstream at every probe step (its users ask for a cache: issues #390, #431,
#546). Here :func:`extract_features` runs the upstream once per (upstream identity, layer set,
pooling, manifest) and writes the result under ``cache_dir/<key>/``:

* ``pooled=True`` (KS, IC, SID, ER): per utterance the **time-averaged** states ``[L, D]``.
  This is exact for the mean-pool heads, not an approximation: the learned layer weighting
  and the projector are both linear, so ``mean_t(sum_l w_l h_lt) = sum_l w_l mean_t(h_lt)``
  and the projector commutes with the mean too. It is ``T`` times smaller than frames.
  (Consequence: no per-step random cropping, e.g. s3prl's 8 s SID crop, on cached features.)
* ``pooled=False`` (PR, ASR): per utterance the frames ``[L, T, D]``.

Tensors are stored fp16 (fp32 for a tensor whose values overflow fp16, e.g. raw power
spectra) in safetensors shards; ``index.json`` is written last, so a directory with an index
is complete. The key hashes the upstream's weights and options, so a retrained checkpoint or
a different feature setting never reuses stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from s3kit.checkpoint import write_atomic

SHARD_BYTES = 256 * 2**20  # one safetensors file per ~256 MiB of features
INDEX_FILE = "index.json"
FP16_MAX = 65504.0


def upstream_identity(upstream) -> str:
    """SHA-1 of an upstream's class, name, simple attributes (feature options) and all tensors."""
    h = hashlib.sha1()
    h.update(f"{type(upstream).__module__}.{type(upstream).__qualname__}:{getattr(upstream, 'name', '')}".encode())
    simple = {k: v for k, v in sorted(vars(upstream).items())
              if not k.startswith("_") and isinstance(v, (int, float, str, bool, tuple, list))}
    h.update(json.dumps(simple, sort_keys=True, default=str).encode())
    for k, t in upstream.state_dict().items():
        h.update(k.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def manifest_identity(cuts) -> str:
    """SHA-1 over what decides each cut's audio: id, recording sources, start, duration, channel."""
    h = hashlib.sha1()
    for cut in cuts:
        d = cut.to_dict()
        d.pop("supervisions", None)  # labels do not change features
        h.update(json.dumps(d, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _storage(t: Tensor) -> Tensor:
    t = t.detach().float().cpu().contiguous()
    return t if t.abs().max().item() > FP16_MAX else t.half()


class CachedFeatures:
    """Read side of one cache entry: ``get(cut_id)`` -> float32 ``[L, D]`` or ``[L, T, D]``."""

    def __init__(self, directory: str | Path):
        from safetensors import safe_open

        self.directory = Path(directory)
        index = self.directory / INDEX_FILE
        if not index.exists():
            raise FileNotFoundError(f"{self.directory}: incomplete feature cache (no {INDEX_FILE}); delete it and re-run")
        self.meta = json.loads(index.read_text())
        self.ids: list[str] = self.meta["ids"]
        self.layers: list[int] = self.meta["layers"]
        self.pooled: bool = self.meta["pooled"]
        self.dim: int = self.meta["dim"]
        self._shard_of: dict[str, str] = self.meta["shard_of"]
        self.skipped: list[dict] = self.meta.get("skipped", [])  # unusable cuts left out (on_bad_audio="skip")
        self._handles = {s: safe_open(str(self.directory / s), framework="pt") for s in sorted(set(self._shard_of.values()))}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, cut_id: str) -> bool:
        return cut_id in self._shard_of

    def get(self, cut_id: str) -> Tensor:
        if cut_id not in self._shard_of:
            raise KeyError(f"{cut_id}: not in feature cache {self.directory}")
        return self._handles[self._shard_of[cut_id]].get_tensor(cut_id).float()

    def stacked(self, ids: list[str] | None = None) -> Tensor:
        """``[N, L, D]`` float32 for pooled caches (all ids, or ``ids`` in that order)."""
        if not self.pooled:
            raise ValueError(f"{self.directory}: frame-level cache; stacked() needs pooled features")
        return torch.stack([self.get(i) for i in (self.ids if ids is None else ids)])


def resolve_layers(upstream, layers: list[int] | None) -> list[int]:
    """The state indices to cache (all by default); they must share one width for a weighted sum."""
    n = upstream.num_layers
    chosen = list(range(n)) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise ValueError(f"layers {bad} out of range: {upstream.name} has states 0..{n - 1}")
    widths = {upstream.hidden_sizes[i] for i in chosen}
    if len(widths) > 1:
        raise ValueError(
            f"{upstream.name}: states {chosen} have different widths {[upstream.hidden_sizes[i] for i in chosen]}; "
            f"a weighted sum needs one width: choose layers of equal width (or one layer)"
        )
    return chosen


def extract_features(
    upstream,
    cuts,
    cache_dir: str | Path,
    layers: list[int] | None = None,
    pooled: bool = True,
    max_duration: float = 60.0,
    device: str | torch.device = "cpu",
    identity: str | None = None,
    progress: bool = True,
    on_bad_audio: str = "error",
    max_bad_share: float = 0.01,
) -> CachedFeatures:
    """Run the frozen ``upstream`` over ``cuts`` once and cache ``layers``; reuse if cached.

    Args:
        identity: override :func:`upstream_identity` (e.g. a hub revision) to skip hashing weights.
        max_duration: seconds of audio per upstream batch (raised to the longest cut if shorter).
        on_bad_audio, max_bad_share: unusable cuts stop the extraction (``error``) or are left out
            and listed in the index's ``skipped`` (``skip``; :mod:`s3kit.data.badaudio`).
    Returns the :class:`CachedFeatures` for this (upstream, layers, pooled, manifest).
    """
    from tqdm.auto import tqdm

    from s3kit.data.loader import make_loader
    from s3kit.data.manifest import load_cuts

    if isinstance(cuts, (str, Path)):
        cuts = load_cuts(cuts)
    layers = resolve_layers(upstream, layers)
    ident = identity or upstream_identity(upstream)
    key = hashlib.sha1(json.dumps([ident, layers, pooled, manifest_identity(cuts)]).encode()).hexdigest()[:20]
    directory = Path(cache_dir) / f"{upstream.name.replace('/', '_')}-{key}"
    if (directory / INDEX_FILE).exists():
        return CachedFeatures(directory)

    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    longest = max((c.duration for c in cuts), default=0.0)
    loader = make_loader(cuts, max_duration=max(max_duration, longest + 1e-3), shuffle=False,
                         on_bad_audio=on_bad_audio, max_bad_share=max_bad_share)
    was_training = upstream.training
    upstream.eval().to(device)
    shard_of: dict[str, str] = {}
    ids: list[str] = []
    pending: dict[str, Tensor] = {}
    pending_bytes = 0

    def flush():
        nonlocal pending, pending_bytes
        if not pending:
            return
        name = f"shard-{len(set(shard_of.values())):05d}.safetensors"
        tmp = directory / f".{name}.tmp{os.getpid()}"
        save_file(pending, str(tmp))
        os.replace(tmp, directory / name)
        shard_of.update({k: name for k in pending})
        pending, pending_bytes = {}, 0

    bar = tqdm(total=len(cuts), desc=f"features {upstream.name}", unit="utt", disable=not progress)
    with torch.inference_mode():
        for batch in loader:
            batch = batch.to(device)
            hidden = upstream(batch.wavs, batch.lengths)
            if pooled:
                feats = hidden.pooled(layers)  # (B, L, D)
                items = [feats[b] for b in range(len(batch))]
            else:
                stacked = torch.stack([hidden.states[i] for i in layers], dim=1)  # (B, L, T, D)
                items = [stacked[b, :, : int(n)] for b, n in enumerate(hidden.lengths.tolist())]
            for cut_id, item in zip(batch.ids, items):
                if cut_id in pending or cut_id in shard_of:
                    raise ValueError(f"duplicate cut id {cut_id!r} in manifest; ids must be unique")
                pending[cut_id] = _storage(item)
                pending_bytes += pending[cut_id].numel() * pending[cut_id].element_size()
                ids.append(cut_id)
            if pending_bytes >= SHARD_BYTES:
                flush()
            bar.update(len(batch) + len(batch.skipped))
    bar.close()
    flush()
    upstream.train(was_training)
    meta = {
        "upstream": upstream.name, "identity": ident, "layers": layers, "pooled": pooled,
        "dim": upstream.hidden_sizes[layers[0]], "frame_rate": upstream.frame_rate,
        "ids": ids, "shard_of": shard_of, "skipped": list(loader.bad_audio.skipped.values()),
    }
    write_atomic(directory / INDEX_FILE, json.dumps(meta))
    return CachedFeatures(directory)
