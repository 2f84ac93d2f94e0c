"""QUESST 2014 (MediaEval Query by Example Search on Speech): spoken queries searched in a
multilingual document collection; SUPERB's QbE task keeps the English (``nnenglish``) part.
lhotse has no recipe for it.

Layout (``quesst14Database``, as s3prl reads it)::

    ROOT/
      Audio/quesst14_00001.wav ...              # documents (shared by dev and eval)
      dev_queries/quesst14_dev_0001.wav ...
      eval_queries/quesst14_eval_0001.wav ...
      scoring/language_key_utterances.lst       # "<prefix>/Audio/quesst14_00001.wav nnenglish"
      scoring/language_key_dev.lst  language_key_eval.lst
      scoring/groundtruth_quesst14_dev/quesst14_dev.rttm     # "LEXEME quesst14_00001 1 0.50 0.40 quesst14_dev_0001 ..."
      scoring/groundtruth_quesst14_eval/quesst14_eval.rttm

A ``.lst`` line is a path and a language; s3prl drops the path's first component (the
database folder name), so both ``quesst14Database/Audio/x.wav`` and ``Audio/x.wav`` are read.
An RTTM ``LEXEME`` line names a document and, later on the line, the query it contains.

Writes ``OUT/quesst14_{docs,dev,eval}.jsonl.gz``; each query cut carries ``qbe_hits`` (ids of
the documents that contain it) for :mod:`s3kit.eval.tasks.qbe`.
"""

from __future__ import annotations

import re
from pathlib import Path

from s3kit.data.recipes._common import RecipeError, bad_line, cached, cuts_from, finish, require_dir, whole_recording

CORPUS = "quesst14"
SPLITS = ("docs", "dev", "eval")
_QUERY = re.compile(r"quesst14_(dev|eval)_\d+")


def read_lst(path: Path, root: Path, language: str) -> list[Path]:
    """Audio files of ``language`` listed in a ``language_key_*.lst`` file."""
    if not path.is_file():
        raise RecipeError(f"{path}: missing; QUESST 2014 keeps its language keys in ROOT/scoring/")
    files = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise bad_line(path, lineno, line, "'<path>.wav <language>'")
        if parts[1] != language:
            continue
        rel = Path(parts[0])
        audio = root / rel
        if not audio.is_file() and len(rel.parts) > 1:
            audio = root / Path(*rel.parts[1:])  # s3prl: the first component is the database folder
        if not audio.is_file():
            raise RecipeError(f"{path}:{lineno}: {parts[0]} not found under {root}")
        files.append(audio)
    return files


def read_rttm(path: Path) -> dict[str, list[str]]:
    """``{query id: [document ids]}`` from a QUESST ground-truth RTTM."""
    if not path.is_file():
        raise RecipeError(f"{path}: missing; QUESST 2014 keeps its ground truth in ROOT/scoring/groundtruth_quesst14_<split>/")
    out: dict[str, list[str]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0] != "LEXEME":
            continue
        query = next((p for p in parts[2:] if _QUERY.fullmatch(p)), None)
        if len(parts) < 2 or query is None:
            raise bad_line(path, lineno, line, "'LEXEME <document> <channel> <start> <duration> <query id> ...'")
        out.setdefault(query, [])
        if parts[1] not in out[query]:
            out[query].append(parts[1])
    return out


def prepare_quesst14(root: str | Path, out: str | Path | None = None, language: str = "nnenglish",
                     force: bool = False) -> dict:
    """QUESST 2014 documents and dev / eval queries of ``language``; returns ``{split: CutSet}``."""
    from lhotse import Recording, RecordingSet, SupervisionSet

    if (done := cached(out, CORPUS, SPLITS, force)) is not None:
        return done
    root = require_dir(root, "QUESST 2014", "Audio/, dev_queries/, eval_queries/ and scoring/ (docs/data.md)")
    scoring = root / "scoring"
    docs = read_lst(scoring / "language_key_utterances.lst", root, language)
    doc_ids = {p.stem for p in docs}
    splits = {}
    for split, files in (("docs", docs), *((s, read_lst(scoring / f"language_key_{s}.lst", root, language))
                                           for s in ("dev", "eval"))):
        truth = read_rttm(scoring / f"groundtruth_quesst14_{split}" / f"quesst14_{split}.rttm") if split != "docs" else {}
        recordings, supervisions = [], []
        for path in files:
            rec = Recording.from_file(path, recording_id=path.stem)
            recordings.append(rec)
            custom = None
            if split != "docs":
                custom = {"qbe_hits": [d for d in truth.get(path.stem, []) if d in doc_ids]}
            supervisions.append(whole_recording(rec, custom=custom))
        splits[split] = cuts_from(RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions))
    return finish(CORPUS, splits, out)
