"""What every s3kit recipe shares: the error type, the output naming, idempotency, validation.

The contract (lhotse's, see ``lhotse/recipes/``): one module per corpus, a docstring giving the
corpus and its on-disk layout, ``prepare_<corpus>(root, out) -> {split: CutSet}``, idempotent
(manifests already in ``out`` are read back, not rebuilt, unless ``force=True``), validated before
anything is written. s3kit writes one CutSet per split, ``OUT/<corpus>_<split>.jsonl.gz``, with
labels on the first supervision (see :mod:`s3kit.data.manifest`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable

from s3kit.data.manifest import load_cuts, save_cuts

log = logging.getLogger(__name__)

GENDERS = {"f": "female", "female": "female", "m": "male", "male": "male"}


class RecipeError(ValueError):
    """A corpus folder s3kit cannot read; the message names the file (and line) and the fix."""


def manifest_path(out: str | Path, corpus: str, split: str) -> Path:
    """``OUT/<corpus>_<split>.jsonl.gz``."""
    return Path(out) / f"{corpus}_{split}.jsonl.gz"


def require_dir(path: str | Path, corpus: str, hint: str) -> Path:
    """``path`` as a directory, or a :class:`RecipeError` saying what layout ``corpus`` expects."""
    path = Path(path)
    if not path.is_dir():
        raise RecipeError(f"{path}: no such directory; {corpus} expects {hint}")
    return path


def cached(out: str | Path | None, corpus: str, splits: Iterable[str], force: bool) -> dict | None:
    """The manifests of ``splits`` read back from ``out`` when all of them exist (idempotency)."""
    if out is None or force:
        return None
    paths = {s: manifest_path(out, corpus, s) for s in splits}
    if not paths or not all(p.exists() for p in paths.values()):
        return None
    log.info("%s: manifests already in %s; pass force=True to rebuild", corpus, out)
    return {s: load_cuts(p) for s, p in paths.items()}


def cached_glob(out: str | Path | None, corpus: str, force: bool) -> dict | None:
    """Like :func:`cached` for recipes whose split names depend on the corpus (read back all)."""
    if out is None or force:
        return None
    paths = sorted(Path(out).glob(f"{corpus}_*.jsonl.gz"))
    if not paths:
        return None
    log.info("%s: manifests already in %s; pass force=True to rebuild", corpus, out)
    return {p.name[len(corpus) + 1 : -len(".jsonl.gz")]: load_cuts(p) for p in paths}


def finish(corpus: str, splits: dict, out: str | Path | None) -> dict:
    """Validate every split (lhotse's checks: ids, durations, supervisions inside recordings),
    then write them; nothing is written when any split is invalid."""
    from lhotse import validate

    for split, cuts in splits.items():
        if len(cuts) == 0:
            raise RecipeError(f"{corpus}: split {split!r} is empty; check the corpus layout (see docs/data.md)")
        try:
            validate(cuts)
        except AssertionError as e:
            raise RecipeError(f"{corpus}: split {split!r} failed lhotse validation: {e}") from e
    if out is not None:
        for split, cuts in splits.items():
            save_cuts(cuts, manifest_path(out, corpus, split))
    return splits


def relabel(cuts, fn: Callable) -> "object":
    """A CutSet whose every cut's first supervision was passed through ``fn(cut, sup) -> sup``."""
    from lhotse import CutSet

    out = []
    for cut in cuts:
        if cut.supervisions:
            sup = fn(cut, cut.supervisions[0])
            cut.supervisions = [sup] + list(cut.supervisions[1:])
        out.append(cut)
    return CutSet.from_cuts(out)


def set_custom(sup, **labels):
    """``sup`` with ``labels`` merged into ``sup.custom`` (None values are dropped)."""
    custom = dict(sup.custom or {})
    custom.update({k: v for k, v in labels.items() if v is not None})
    sup.custom = custom or None
    return sup


def whole_recording(rec, **labels):
    """A supervision covering all of ``rec`` (id = recording id, channel 0) carrying ``labels``
    (lhotse fields such as ``speaker``, ``gender``, ``text``, ``language``, ``custom``)."""
    from lhotse import SupervisionSegment

    return SupervisionSegment(id=rec.id, recording_id=rec.id, start=0.0, duration=rec.duration, channel=0, **labels)


def cuts_from(recordings, supervisions=None):
    """One cut per recording, carrying its supervisions (lhotse's ``CutSet.from_manifests``); the
    cut id is the recording id (lhotse appends a ``-<index>`` we do not need)."""
    from lhotse import CutSet, fix_manifests
    from lhotse.utils import fastcopy

    if supervisions is not None:
        recordings, supervisions = fix_manifests(recordings, supervisions)
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    return CutSet.from_cuts(fastcopy(c, id=c.recording_id) for c in cuts)


def recording_id(path: Path, root: Path) -> str:
    """A recording id unique within ``root``: the relative path without suffix, '/' -> '_'."""
    rel = path.relative_to(root).with_suffix("")
    return "_".join(rel.parts)


def bad_line(path: Path, lineno: int, line: str, expected: str) -> RecipeError:
    """The error for a malformed label-file line: file, line number, content, expected format."""
    return RecipeError(f"{path}:{lineno}: malformed line {line.rstrip()!r}; expected {expected}")
