"""SpEAT stimulus sets (Slaughter et al., 2023, "Pre-trained speech processing models contain
human-like biases that propagate to speech emotion recognition"): small sets of clips, each a
*target concept* (e.g. X = young speakers, Y = old speakers) or an *attribute* (A = pleasant,
B = unpleasant valence). The sets themselves (Speech Accent Archive, MESS, EU-Emotion...) have their
own licences, so s3kit reads a CSV that lists them.

Layout: a CSV (or a folder of CSVs, one stimulus set each) with a header and the columns ::

    path,concept,group[,speaker][,gender]
    clips/us_01.wav,US,target_x
    clips/kr_01.wav,Korean,target_y
    mess/p_03.wav,pleasant,attribute_a

``path`` is relative to the CSV's folder (or absolute); ``concept`` names the concept the clip
stands for (female/male, young/old, US/Korean, pleasant/unpleasant...); ``group`` is the SpEAT
role or any grouping you test on. Writes ``OUT/speat_<csv stem>.jsonl.gz`` with ``concept`` and
``group`` labels (plus ``speaker``/``gender`` when given).
"""

from __future__ import annotations

import csv
from pathlib import Path

from s3kit.data.recipes._common import GENDERS, RecipeError, bad_line, cached, cuts_from, finish, recording_id, whole_recording

CORPUS = "speat"
REQUIRED = ("path", "concept", "group")


def read_stimuli(path: Path) -> list[tuple[int, dict]]:
    """``(line number, row)`` of a stimulus CSV; a bad row raises naming file and line."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise RecipeError(f"{path}:1: header {header} lacks {missing}; expected 'path,concept,group[,speaker][,gender]'")
        reader.fieldnames = header
        rows, seen = [], {}
        for row in reader:
            if None in row or any(v is None for v in row.values()) or not all((row[c] or "").strip() for c in REQUIRED):
                raise bad_line(path, reader.line_num, ",".join(str(v) for v in row.values() if v is not None), "non-empty path,concept,group")
            row = {k: v.strip() for k, v in row.items()}
            if row["path"] in seen:
                raise RecipeError(f"{path}:{reader.line_num}: {row['path']} is listed twice (first on line {seen[row['path']]})")
            seen[row["path"]] = reader.line_num
            g = row.get("gender")
            if g and g.lower() not in GENDERS:
                raise bad_line(path, reader.line_num, ",".join(row.values()), "gender female/male (or f/m)")
            rows.append((reader.line_num, row))
    if not rows:
        raise RecipeError(f"{path}: no stimuli listed")
    return rows


def prepare_speat(root: str | Path, out: str | Path | None = None, force: bool = False) -> dict:
    """One CutSet per stimulus CSV; returns ``{csv stem: CutSet}``."""
    from lhotse import Recording, RecordingSet, SupervisionSet

    root = Path(root)
    if root.is_file():
        csvs = [root]
    elif root.is_dir():
        csvs = sorted(root.glob("*.csv"))
    else:
        raise RecipeError(f"{root}: no such file or directory; pass a stimulus CSV or a folder of them")
    if not csvs:
        raise RecipeError(f"{root}: no *.csv stimulus lists inside (columns path,concept,group)")
    if (done := cached(out, CORPUS, [p.stem for p in csvs], force)) is not None:
        return done
    splits = {}
    for csv_path in csvs:
        recordings, supervisions = [], []
        for lineno, row in read_stimuli(csv_path):
            wav = Path(row["path"])
            wav = wav if wav.is_absolute() else csv_path.parent / wav
            if not wav.is_file():
                raise RecipeError(f"{csv_path}:{lineno}: {row['path']} does not exist (paths are relative to the CSV's folder)")
            rid = recording_id(wav, csv_path.parent) if not Path(row["path"]).is_absolute() else f"line{lineno}_{wav.stem}"
            rec = Recording.from_file(wav, recording_id=rid)
            recordings.append(rec)
            supervisions.append(
                whole_recording(
                    rec, speaker=row.get("speaker") or None,
                    gender=GENDERS.get((row.get("gender") or "").lower()),
                    custom={"concept": row["concept"], "group": row["group"]},
                )
            )
        splits[csv_path.stem] = cuts_from(RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions))
    return finish(CORPUS, splits, out)
