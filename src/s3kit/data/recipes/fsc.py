"""Fluent Speech Commands (Lugosch et al., 2019): 30 043 English utterances from 97 speakers, each
an intent made of three slots (action, object, location); SUPERB's intent-classification task.

lhotse 1.33 has ``lhotse.recipes.slu.prepare_slu`` for this corpus, but it needs ``pandas`` (not an
s3kit dependency), numbers supervisions 0..N per split (ids collide across splits) and drops the
speaker. This module reads the same CSVs with the standard library instead, following the same
recipe contract, and keeps the speaker (and gender/age when ``speaker_demographics.csv`` exists).

Layout (``fluent_speech_commands_dataset``)::

    ROOT/
      data/train_data.csv  valid_data.csv  test_data.csv  [speaker_demographics.csv]
      wavs/speakers/2BqVo8kVB2Skwgyb/0a3129c0-4474-11e9-a9a5-5dbec3b8816a.wav

A data CSV line reads ``0,wavs/speakers/<spk>/<id>.wav,<spk>,Change language,change language,none,none``
(header ``,path,speakerId,transcription,action,object,location``).

Writes ``OUT/slu_{train,valid,test}.jsonl.gz`` with ``intent`` = {action, object, location}.
"""

from __future__ import annotations

import csv
from pathlib import Path

from s3kit.data.recipes._common import GENDERS, RecipeError, bad_line, cached, cuts_from, finish, require_dir, whole_recording

CORPUS = "slu"
SPLITS = ("train", "valid", "test")
COLUMNS = ("path", "speakerId", "transcription", "action", "object", "location")


def read_csv(path: Path) -> list[tuple[int, dict]]:
    """``(line number, row)`` of a data CSV; a short/long row or missing column raises naming file and line."""
    if not path.is_file():
        raise RecipeError(f"{path}: missing; Fluent Speech Commands keeps its splits in ROOT/data/*_data.csv")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise RecipeError(f"{path}:1: header lacks columns {missing}; expected ,{','.join(COLUMNS)}")
        rows = []
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise bad_line(path, reader.line_num, ",".join(str(v) for v in row.values()), f"{len(reader.fieldnames)} fields: {','.join(reader.fieldnames)}")
            rows.append((reader.line_num, row))
    return rows


def read_demographics(path: Path) -> dict[str, dict]:
    """``{speakerId: {"gender", "age"}}`` from ``speaker_demographics.csv`` (empty if absent)."""
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {
            r["speakerId"]: {"gender": GENDERS.get((r.get("gender") or "").strip().lower()), "age": r.get("ageRange")}
            for r in csv.DictReader(f)
            if r.get("speakerId")
        }


def prepare_slu(root: str | Path, out: str | Path | None = None, force: bool = False) -> dict:
    """Fluent Speech Commands manifests; returns ``{split: CutSet}``."""
    from lhotse import Recording, RecordingSet, SupervisionSet

    if (done := cached(out, CORPUS, SPLITS, force)) is not None:
        return done
    root = require_dir(root, "Fluent Speech Commands", "data/*_data.csv and wavs/speakers/ (docs/data.md)")
    demo = read_demographics(root / "data" / "speaker_demographics.csv")
    splits = {}
    for split in SPLITS:
        csv_path = root / "data" / f"{split}_data.csv"
        recordings, supervisions = [], []
        for lineno, row in read_csv(csv_path):
            wav = root / row["path"]
            if not wav.is_file():
                raise RecipeError(f"{csv_path}:{lineno}: {row['path']} does not exist under {root}")
            rid = f"{row['speakerId']}_{wav.stem}"
            rec = Recording.from_file(wav, recording_id=rid)
            spk = demo.get(row["speakerId"], {})
            custom = {"intent": {k: row[k] for k in ("action", "object", "location")}}
            if spk.get("age"):
                custom["age"] = spk["age"]
            recordings.append(rec)
            supervisions.append(
                whole_recording(
                    rec, language="English",
                    text=row["transcription"],
                    speaker=row["speakerId"],
                    gender=spk.get("gender"),
                    custom=custom,
                )
            )
        splits[split] = cuts_from(RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions))
    return finish(CORPUS, splits, out)
