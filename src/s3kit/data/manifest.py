"""Manifests are lhotse CutSets (``*.jsonl.gz``); our labels live in each cut's first supervision.

Label keys s3kit reads (the ``LABELS`` tuple): ``speaker``, ``gender`` ("female" / "male") and
``text`` (transcript) are lhotse's own supervision fields; everything else is in
``supervision.custom``: ``keyword``, ``accent``, ``age``, ``emotion``, ``intent`` (a dict with
``action``, ``object``, ``location``), ``phones`` (space-separated phone string), and for SpEAT
stimuli ``concept`` and ``group``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LABELS = ("speaker", "gender", "text", "keyword", "accent", "age", "emotion", "intent", "phones", "concept", "group")
_NATIVE = {"speaker", "gender", "text", "language"}


def get_label(cut, key: str, default: Any = None) -> Any:
    """Label ``key`` of ``cut`` (from its first supervision), or ``default`` when absent."""
    if not cut.supervisions:
        return default
    sup = cut.supervisions[0]
    if key in _NATIVE:
        value = getattr(sup, key, None)
        if value is None and sup.custom:
            value = sup.custom.get(key)
        return default if value is None else value
    return (sup.custom or {}).get(key, default)


def load_cuts(path: str | Path):
    """Read a CutSet manifest, with an error naming the file when it is missing."""
    from lhotse import CutSet

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: manifest not found; create it with `s3kit synth` or `s3kit data prepare`")
    cuts = CutSet.from_file(path)
    return CutSet() if cuts is None else cuts  # lhotse reads an empty manifest as None


def save_cuts(cuts, path: str | Path) -> Path:
    """Write a CutSet atomically (temp file + rename)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp{os.getpid()}.{path.name}")
    cuts.to_file(tmp)
    os.replace(tmp, path)
    return path
