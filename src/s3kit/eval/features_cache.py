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
is complete. The key hashes the upstream's weights, buffers and options, its sub-modules'
included (:func:`upstream_identity`), so a retrained checkpoint or a different feature setting
never reuses stale features.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from s3kit.checkpoint import write_atomic

SHARD_BYTES = 256 * 2**20  # one safetensors file per ~256 MiB of features
INDEX_FILE = "index.json"
FP16_MAX = 65504.0


def _digest(t) -> str:
    """SHA-1 of a tensor's (or array's) dtype, shape and bytes."""
    t = torch.as_tensor(t).detach().cpu().contiguous()
    h = hashlib.sha1(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _option_value(v, depth: int = 0):
    """A JSON-able, process-independent form of an attribute value (``None`` for sub-modules,
    which are walked on their own). Objects without such a form count by their type only: a
    ``repr`` with a memory address would change the key every run."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if depth > 8:
        return "<deep>"
    if isinstance(v, nn.Module):
        return None
    if isinstance(v, (torch.dtype, torch.device)):
        return str(v)
    if isinstance(v, enum.Enum):
        return f"{type(v).__qualname__}.{v.name}"
    if isinstance(v, (Tensor, np.ndarray)):
        return {"tensor": _digest(v)}
    if isinstance(v, (list, tuple, set, frozenset)):
        items = [_option_value(x, depth + 1) for x in v]
        return sorted(items, key=repr) if isinstance(v, (set, frozenset)) else items
    if isinstance(v, dict):
        return {str(k): _option_value(x, depth + 1) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _option_value({f.name: getattr(v, f.name) for f in dataclasses.fields(v)}, depth + 1)
    if callable(getattr(v, "to_dict", None)):  # transformers PretrainedConfig and the like
        d = v.to_dict()
        # where it was loaded from and by which version does not change the model
        d = {k: x for k, x in d.items() if not k.startswith("_") and k != "transformers_version"}
        return {type(v).__qualname__: _option_value(d, depth + 1)}
    if callable(v) and hasattr(v, "__qualname__"):  # a function held as an option (activation)
        return f"{getattr(v, '__module__', '')}.{v.__qualname__}"
    return f"<{type(v).__module__}.{type(v).__qualname__}>"


def upstream_identity(upstream) -> str:
    """SHA-1 of everything that decides an upstream's features.

    For the upstream and every sub-module: its class and its public attributes (constructor
    options such as a feature's ``scale`` or ``snip_edges``, configs), then every parameter and
    every buffer, persistent or not (a mel filterbank built from ``f_min`` / ``f_max`` lives in
    a non-persistent buffer that ``state_dict()`` leaves out). The train / eval flag is left
    out: features are always extracted in eval mode.
    """
    h = hashlib.sha1(f"{getattr(upstream, 'name', '')}".encode())
    for path, module in upstream.named_modules(remove_duplicate=False):
        options = {k: _option_value(v) for k, v in sorted(vars(module).items())
                   if not k.startswith("_") and k != "training" and not isinstance(v, nn.Module)}
        h.update(json.dumps([path, f"{type(module).__module__}.{type(module).__qualname__}", options],
                            sort_keys=True).encode())
    tensors = [("param", k, t) for k, t in upstream.named_parameters(remove_duplicate=False)]
    tensors += [("buffer", k, t) for k, t in upstream.named_buffers(remove_duplicate=False)]
    for kind, k, t in tensors:
        h.update(f"{kind}:{k}:".encode())
        h.update(_digest(t).encode())
    return h.hexdigest()


# Written into each cut by lhotse's sampler while a loader iterates an in-memory CutSet (rank,
# world size): bookkeeping, not audio.
_LOADER_FIELDS = ("dataloading_info",)


def manifest_identity(cuts) -> str:
    """SHA-1 over what decides each cut's audio: id, recording sources, start, duration, channel.
    Supervisions (labels) and the loader's own bookkeeping in ``custom`` are left out."""
    h = hashlib.sha1()
    for cut in cuts:
        d = cut.to_dict()
        d.pop("supervisions", None)  # labels do not change features
        custom = {k: v for k, v in (d.pop("custom", None) or {}).items() if k not in _LOADER_FIELDS}
        if custom:
            d["custom"] = custom
        h.update(json.dumps(d, sort_keys=True, default=str).encode())
    return h.hexdigest()


_PATH_IDENTITY: dict[tuple[str, int, int], str] = {}


def manifest_identity_of(path: str | Path) -> str:
    """:func:`manifest_identity` of a manifest file, remembered per (path, mtime, size) in this
    process: probes with several seeds and models read the same manifests again and again."""
    from s3kit.data.manifest import load_cuts

    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    if key not in _PATH_IDENTITY:
        _PATH_IDENTITY[key] = manifest_identity(load_cuts(p))
    return _PATH_IDENTITY[key]


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
    manifest_id: str | None = None,
) -> CachedFeatures:
    """Run the frozen ``upstream`` over ``cuts`` once and cache ``layers``; reuse if cached.

    Args:
        identity: override :func:`upstream_identity` (e.g. a hub revision) to skip hashing weights.
        manifest_id: :func:`manifest_identity` of ``cuts`` when known (:func:`manifest_identity_of`).
        max_duration: seconds of audio per upstream batch on CUDA; batching follows
            :func:`~s3kit.data.loader.inference_plan` (on CPU one utterance at a time, or batches
            for an upstream that sets ``cpu_batch_seconds``).
        on_bad_audio, max_bad_share: unusable cuts stop the extraction (``error``) or are left out
            and listed in the index's ``skipped`` (``skip``; :mod:`s3kit.data.badaudio`).
    Returns the :class:`CachedFeatures` for this (upstream, layers, pooled, manifest).
    """
    from tqdm.auto import tqdm

    from s3kit.data.loader import PaddingStats, cpu_batch_seconds_of, inference_plan, sorted_batches
    from s3kit.data.manifest import load_cuts

    if isinstance(cuts, (str, Path)):
        cuts = load_cuts(cuts)
    layers = resolve_layers(upstream, layers)
    ident = identity or upstream_identity(upstream)
    manifest_id = manifest_id or manifest_identity(cuts)
    key = hashlib.sha1(json.dumps([ident, layers, pooled, manifest_id]).encode()).hexdigest()[:20]
    directory = Path(cache_dir) / f"{upstream.name.replace('/', '_')}-{key}"
    if (directory / INDEX_FILE).exists():
        return CachedFeatures(directory)

    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    from s3kit.data.badaudio import BadAudio

    stats = PaddingStats()
    bad_audio = BadAudio(on_bad_audio, max_bad_share, total=len(cuts))
    plan = inference_plan(device, max_duration, cpu_batch_seconds=cpu_batch_seconds_of(upstream))
    batches = sorted_batches(cuts, plan, stats, bad_audio)
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
        for batch in batches:
            if not len(batch):  # every cut of it skipped as unusable audio
                bar.update(len(batch.skipped))
                continue
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
    ids = [c.id for c in cuts if c.id in shard_of]  # manifest order (batches ran longest first), bad cuts left out
    meta = {
        "upstream": upstream.name, "identity": ident, "layers": layers, "pooled": pooled,
        "dim": upstream.hidden_sizes[layers[0]], "frame_rate": upstream.frame_rate,
        "ids": ids, "shard_of": shard_of, "skipped": list(bad_audio.skipped.values()),
        "padding_share": round(stats.share, 4),
    }
    write_atomic(directory / INDEX_FILE, json.dumps(meta))
    return CachedFeatures(directory)
