"""Teacher-feature cache: a frozen teacher's target layers per utterance, computed once.

Dimension legend: ``T`` frames, ``L`` cached layers, ``D`` width, ``N`` total frames.

Layout of a cache directory (``<root>/teacher-<key>``)::

    feats.f16     fp16 memory-mapped array [N, L, D] (every utterance's frames, back to back)
    index.json    {"key", "layers", "dim", "items": {cut_id: [offset, frames]}}

The key hashes the teacher's weights and config, its input options (waveform normalisation),
the layers and the manifest (cut ids, offsets, durations, recordings), so changing any of them builds a new cache (and removes stale ones under
the same root). Features are of whole utterances run alone through the teacher, exactly what
the live teacher computes for an un-augmented input; a method that crops must crop these frames
at the same frame-aligned offset (see :mod:`s3kit.methods.distilhubert`). Size: 2 bytes x L x D
per 20 ms frame: 3 layers of 768 -> 4.6 kB per frame, 230 kB per second of audio, so 960 h of
LibriSpeech is ~0.8 TB (s3prl issue #390): cache corpora that fit on local disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from s3kit import checkpoint
from s3kit.data.badaudio import MAX_BAD_SHARE, BadAudio

FEATS = "feats.f16"
INDEX = "index.json"


def teacher_hash(model: torch.nn.Module) -> str:
    """sha256 of a module's config (when it has one: a transformers config, or a dataclass such as
    :class:`~s3kit.models.melhubert.MelHubertConfig`, whose ``num_heads`` no tensor shape shows) and
    every tensor of its state_dict (MelHuBERT's fbank mean / std buffers included)."""
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_json_string"):
        h.update(cfg.to_json_string(use_diff=False).encode())
    elif dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        h.update(json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def manifest_hash(cuts) -> str:
    """sha256 over each cut's id, start, duration and recording id (order-independent)."""
    rows = sorted(
        json.dumps([c.id, round(float(c.start), 6), round(float(c.duration), 6),
                    getattr(getattr(c, "recording", None), "id", None)])
        for c in cuts
    )
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def cache_key(teacher_model: torch.nn.Module, layers: list[int], cuts, options: dict | None = None) -> str:
    """Hash of teacher weights/config, layers, manifest and the upstream's input options."""
    h = hashlib.sha256()
    opts = json.dumps(options or {}, sort_keys=True, default=str)
    for part in (teacher_hash(teacher_model), json.dumps(list(layers)), manifest_hash(cuts), opts):
        h.update(part.encode())
    return h.hexdigest()[:24]


class TeacherCache:
    """Read side: ``get(ids) -> [array [T_i, L, D] fp16]`` from the memory-mapped file."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index_path = self.directory / INDEX
        if not index_path.exists():
            raise FileNotFoundError(f"{self.directory}: not a teacher cache ({INDEX} missing)")
        index = json.loads(index_path.read_text())
        self.key = index["key"]
        self.layers: list[int] = index["layers"]
        self.dim: int = index["dim"]
        self.items: dict[str, list[int]] = index["items"]
        total = index["frames"]
        shape = (total, len(self.layers), self.dim)
        self.feats = np.memmap(self.directory / FEATS, dtype=np.float16, mode="r", shape=shape) if total else None

    def __contains__(self, cut_id: str) -> bool:
        return cut_id in self.items

    def __len__(self) -> int:
        return len(self.items)

    def get(self, ids: list[str]) -> list[np.ndarray]:
        out = []
        for i in ids:
            if i not in self.items:
                raise KeyError(f"{i}: not in teacher cache {self.directory}")
            off, n = self.items[i]
            out.append(self.feats[off : off + n])
        return out


@torch.no_grad()
def build_cache(directory: str | Path, teacher, layers: list[int], cuts, key: str,
                max_duration: float = 60.0, progress: bool = True, bad_audio=None) -> TeacherCache:
    """Run ``teacher`` (an upstream: :class:`~s3kit.upstream.hf.HFUpstream`,
    :class:`~s3kit.models.melhubert.MelHubertUpstream`; fp32, eval) over ``cuts`` and
    write its ``layers`` (hidden-state indices) to ``directory`` atomically. Batching follows
    :func:`~s3kit.data.loader.inference_plan` for the teacher's device (one utterance at a time on
    CPU, batches for a teacher that sets ``cpu_batch_seconds``, length-sorted batches of
    ``max_duration`` seconds on CUDA). ``bad_audio``
    (:class:`~s3kit.data.badaudio.BadAudio`): what to do with unusable cuts (default: stop)."""
    from tqdm.auto import tqdm

    from s3kit.data.loader import cpu_batch_seconds_of, inference_plan, sorted_batches

    directory = Path(directory)
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    items: dict[str, list[int]] = {}
    offset = 0
    dim = None
    bar = tqdm(total=len(cuts), desc="teacher cache", disable=not progress, dynamic_ncols=True)
    plan = inference_plan(device, max_duration, cpu_batch_seconds=cpu_batch_seconds_of(teacher))
    with open(tmp / FEATS, "wb") as f:
        for batch in sorted_batches(cuts, plan, bad_audio=bad_audio):
            bar.update(len(batch.skipped))
            if not len(batch):
                continue
            hidden = teacher(batch.wavs.to(device), batch.lengths.to(device))
            stacked = torch.stack([hidden.states[i] for i in layers], dim=2)  # (B, T, L, D)
            dim = stacked.shape[-1]
            for b, cut_id in enumerate(batch.ids):
                n = int(hidden.lengths[b])
                f.write(stacked[b, :n].to("cpu", torch.float16).contiguous().numpy().tobytes())
                items[cut_id] = [offset, n]
                offset += n
            bar.update(len(batch.ids))
    bar.close()
    teacher.train(was_training)
    index = {"key": key, "layers": list(layers), "dim": dim or 0, "frames": offset, "items": items}
    checkpoint.write_atomic(tmp / INDEX, json.dumps(index))
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return TeacherCache(directory)


def teacher_model(teacher: torch.nn.Module) -> torch.nn.Module:
    """The model inside a teacher upstream whose config and weights key the cache: ``.model`` of an
    :class:`~s3kit.upstream.hf.HFUpstream`, ``.encoder`` (a ``MelHubert``) of a ``MelHubertUpstream``."""
    from s3kit.models.melhubert import MelHubertUpstream

    if isinstance(teacher, MelHubertUpstream):
        return teacher.encoder  # its MelHubertConfig goes into the key (num_heads shows in no shape)
    return teacher.model if hasattr(teacher, "model") else teacher


def ensure_cache(root: str | Path, teacher, layers: list[int], cuts, progress: bool = True,
                 max_duration: float = 60.0, on_bad_audio: str = "error",
                 max_bad_share: float = MAX_BAD_SHARE) -> TeacherCache:
    """The cache for (teacher weights/config, layers, manifest) under ``root``: reused when its
    key matches, else built; caches with other keys under ``root`` are removed (invalidated).
    With ``on_bad_audio="skip"`` unusable cuts are left out (:mod:`s3kit.data.badaudio`)."""
    root = Path(root)
    # the wrapper's input options change the features too (waveform normalisation)
    options = {k: getattr(teacher, k) for k in ("normalize",) if hasattr(teacher, k)}
    key = cache_key(teacher_model(teacher), layers, cuts, options)
    directory = root / f"teacher-{key}"
    if (directory / INDEX).exists():
        cache = TeacherCache(directory)
        if cache.key == key:
            return cache
    if root.is_dir():
        for stale in root.glob("teacher-*"):
            if stale.name != directory.name:
                shutil.rmtree(stale, ignore_errors=True)
    bad_audio = BadAudio(on_bad_audio, max_bad_share, total=len(cuts))
    return build_cache(directory, teacher, layers, cuts, key, max_duration=max_duration, progress=progress,
                       bad_audio=bad_audio)
