"""Feature extraction: an upstream's chosen layers for every utterance of a manifest, on disk.

Output directory layout::

    OUT/shards/00000.safetensors   one shard per ~64 MiB: {cut_id: [L', T, D] or [L', D]} in fp16
    OUT/index.jsonl                one line per finished shard: {"shard", "ids", "frames"}
    OUT/extract.json               what was extracted (upstream, layers, pooling, frame rate)
    OUT/skipped_audio.jsonl        with on_bad_audio="skip": the cuts left out, with file and reason

Resumable: a shard is listed in the index only after it is fully written, and a rerun skips
every cut already listed. A rerun with different settings on the same OUT is an error.

Batching follows :func:`s3kit.data.loader.inference_plan`: one utterance at a time on CPU
(batches for s3kit's small fbank / log-mel models), length-sorted batches of up to
``max_duration`` seconds on CUDA (longest first, so shards hold
utterances in that order; features are looked up by cut id).
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from s3kit.data.badaudio import MAX_BAD_SHARE, BadAudio, skipped_path
from s3kit.upstream.base import Upstream


@dataclass(frozen=True)
class ExtractConfig:
    layers: list[int] | None = None  # None = every state of the upstream
    pool: Literal["mean", "none"] = "mean"  # "mean": time-average per layer -> [L', D]
    max_duration: float = 120.0  # seconds of audio per batch (CUDA plan)
    max_cuts: int | None = None  # utterances per batch; None: the device's plan (1 on CPU)
    dtype: Literal["float16", "float32"] = "float16"
    device: str = "auto"
    on_bad_audio: Literal["error", "skip"] = "error"  # s3kit.data.badaudio: stop at a bad cut, or leave it out
    max_bad_share: float = MAX_BAD_SHARE  # with "skip": stop when more cuts than this share are bad

    # how a run treats bad input, not what it extracts: a rerun may change these
    RUN_ONLY = ("device", "max_duration", "max_cuts", "on_bad_audio", "max_bad_share")


SHARD_BYTES = 64 * 2**20  # features per shard file before it is written


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _done_ids(out: Path) -> set[str]:
    index = out / "index.jsonl"
    done: set[str] = set()
    if index.exists():
        for line in index.read_text().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            if (out / "shards" / entry["shard"]).exists():
                done.update(entry["ids"])
    return done


@torch.inference_mode()
def run_upstream(upstream: Upstream, wavs: torch.Tensor, lengths: torch.Tensor, layers: list[int] | None):
    """Hidden states restricted to ``layers``; later transformer layers are skipped when the
    upstream supports ``max_layer`` (transformers encoders do)."""
    kwargs = {}
    if layers is not None and "max_layer" in inspect.signature(upstream.forward).parameters:
        kwargs["max_layer"] = max(layers)
    hidden = upstream(wavs, lengths, **kwargs)
    chosen = layers if layers is not None else list(range(len(hidden.states)))
    return hidden, chosen


def extract(
    upstream: Upstream,
    cuts,
    out: str | Path,
    cfg: ExtractConfig = ExtractConfig(),
    progress: bool = True,
    stats=None,
) -> Path:
    """Extract ``cfg.layers`` of ``upstream`` for every cut in ``cuts`` (CutSet or manifest path) into ``out``.

    ``stats``: an optional :class:`~s3kit.data.loader.PaddingStats` that collects the padding share."""
    from s3kit.data.loader import cpu_batch_seconds_of, inference_plan, sorted_batches
    from s3kit.data.manifest import load_cuts

    if isinstance(cuts, (str, Path)):
        cuts = load_cuts(cuts)
    out = Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    meta = {"upstream": getattr(upstream, "name", type(upstream).__name__), "frame_rate": upstream.frame_rate,
            **asdict(cfg)}
    for key in ExtractConfig.RUN_ONLY:
        meta.pop(key)
    meta_path = out / "extract.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old != json.loads(json.dumps(meta)):
            raise ValueError(f"{out}: holds features extracted with other settings ({old}); use a new --out")
    else:
        meta_path.write_text(json.dumps(meta, indent=2))
    done = _done_ids(out)
    todo = cuts.filter(lambda c: c.id not in done).to_eager()
    if len(todo) == 0:
        return out
    device = resolve_device(cfg.device)
    upstream = upstream.to(device).eval()
    dtype = getattr(torch, cfg.dtype)
    bad_audio = BadAudio(cfg.on_bad_audio, cfg.max_bad_share, total=len(cuts))  # share of the whole manifest, also on a resumed run
    bad_audio.log_to(skipped_path(out))
    plan = inference_plan(device, cfg.max_duration, cfg.max_cuts, cpu_batch_seconds_of(upstream))
    shard_no = len(list((out / "shards").glob("*.safetensors")))
    bar = tqdm(total=len(todo), desc=f"extract {meta['upstream']}", unit="utt", disable=not progress)
    tensors: dict[str, torch.Tensor] = {}
    frames: list[int] = []
    size = 0
    with open(out / "index.jsonl", "a") as index:

        def flush():
            nonlocal shard_no, tensors, frames, size
            if not tensors:
                return
            name = f"{shard_no:05d}.safetensors"
            tmp = out / "shards" / f".{name}.tmp"
            save_file(tensors, str(tmp))
            os.replace(tmp, out / "shards" / name)
            index.write(json.dumps({"shard": name, "ids": list(tensors), "frames": frames}) + "\n")
            index.flush()
            shard_no += 1
            tensors, frames, size = {}, [], 0

        for batch in sorted_batches(todo, plan, stats, bad_audio):
            if not len(batch):
                bar.update(len(batch.skipped))
                continue
            batch = batch.to(device)
            hidden, chosen = run_upstream(upstream, batch.wavs, batch.lengths, cfg.layers)
            for i, cut_id in enumerate(batch.ids):
                n = int(hidden.lengths[i])
                per_layer = torch.stack([hidden.states[l][i, :n] for l in chosen])  # (L', T, D)
                feat = per_layer.mean(1) if cfg.pool == "mean" else per_layer  # (L', D) or (L', T, D)
                tensors[cut_id] = feat.to("cpu", dtype).contiguous()
                size += tensors[cut_id].numel() * tensors[cut_id].element_size()
                frames.append(n)
            if size >= SHARD_BYTES:
                flush()
            bar.update(len(batch) + len(batch.skipped))
        flush()
    bar.close()
    return out


def load_features(out: str | Path) -> dict[str, torch.Tensor]:
    """All extracted features of ``out`` as ``{cut_id: tensor}``."""
    out = Path(out)
    if not (out / "index.jsonl").exists():
        raise FileNotFoundError(f"{out}: no extracted features (index.jsonl missing); run `s3kit extract` first")
    feats: dict[str, torch.Tensor] = {}
    for line in (out / "index.jsonl").read_text().splitlines():
        if line.strip():
            feats.update(load_file(str(out / "shards" / json.loads(line)["shard"])))
    return feats
