"""Upstreams: everything s3kit trains, probes or analyses is an :class:`Upstream`.

``load_upstream(name_or_path)`` resolves, in order:

1. a classical feature name: ``fbank``, ``mel``, ``mfcc``, ``stft``, ``spectrogram``;
2. an s3kit checkpoint directory (``config.json`` with an ``"upstream"`` entry naming the
   s3kit function that rebuilds it, e.g. ``"s3kit.models.melhubert:upstream_from_checkpoint"``);
3. a transformers HuBERT / wav2vec 2.0 / WavLM directory or hub id.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from s3kit.upstream.base import Hidden, Upstream

CLASSICAL = ("fbank", "mel", "mfcc", "stft", "spectrogram")

__all__ = ["CLASSICAL", "Hidden", "Upstream", "load_upstream"]


def _s3kit_loader(directory: Path):
    """The rebuild function named in an s3kit checkpoint, or None for a transformers dir."""
    cfg = directory / "config.json"
    if not cfg.exists():
        return None
    meta = json.loads(cfg.read_text())
    target = meta.get("upstream")
    if not target:
        return None
    module, _, func = target.partition(":")
    if not module.startswith("s3kit.") or not func:  # never import code a checkpoint names outside s3kit
        raise ValueError(f"{cfg}: 'upstream' must name an s3kit function 's3kit.x:func', got {target!r}")
    return getattr(importlib.import_module(module), func)


def load_upstream(name_or_path: str | Path, **options) -> Upstream:
    """An :class:`Upstream` by classical-feature name, s3kit checkpoint, or transformers dir / hub id.

    ``options`` go to the builder (e.g. ``num_mel_bins=64`` for ``fbank``,
    ``normalize=True`` for a transformers model).
    """
    name = str(name_or_path)
    if name in CLASSICAL:
        from s3kit.upstream.classical import build_classical

        return build_classical(name, **options)
    path = Path(name)
    if path.is_dir():
        loader = _s3kit_loader(path)
        if loader is not None:
            return loader(path, **options)
    elif path.suffix or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{name}: no such upstream directory (classical names: {', '.join(CLASSICAL)})")
    from s3kit.upstream.hf import load_hf

    return load_hf(name, **options)
