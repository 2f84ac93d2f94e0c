"""Sound-classification corpora for the M2D-S linear evaluation (ENV: ESC-50, UrbanSound8K;
MUS: GTZAN, NSynth), read in their released layouts; plus any folder-per-class tree. Every cut
carries ``sound_class`` (what :mod:`s3kit.eval.tasks.linear` reads). lhotse has none of these.

Layouts::

    ESC-50/      audio/1-100032-A-0.wav ...   meta/esc50.csv   (filename,fold,target,category,...)
    UrbanSound8K/ audio/fold1..fold10/*.wav   metadata/UrbanSound8K.csv (slice_file_name,...,fold,classID,class)
    GTZAN/       genres/<genre>/<genre>.00000.wav  (or <genre>/ directly under ROOT)
                 [train_filtered.txt valid_filtered.txt test_filtered.txt]  lines "<genre>/<file>.wav"
    NSynth/      nsynth-{train,valid,test}/examples.json  nsynth-*/audio/<note_str>.wav
    any folder:  ROOT/<class>/**/*.wav|flac|ogg

Splits (EVAR's, REFERENCE-NOTES §G): ESC-50 (5 folds) and UrbanSound8K (10 folds) write
``<corpus>_fold<k>_{train,dev,test}`` per test fold ``k``, dev a seeded 10 % of the training
folds per class; GTZAN uses the fault-filtered split files when they are in ROOT (EVAR's split),
otherwise a seeded stratified 80 / 10 / 10 (said in the log); NSynth its official splits
(label: instrument family); a plain folder a seeded stratified 80 / 10 / 10.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from s3kit.data.recipes._common import RecipeError, bad_line, cached_glob, cuts_from, finish, require_dir, whole_recording

log = logging.getLogger(__name__)
LABEL = "sound_class"
AUDIO = (".wav", ".flac", ".ogg")


def _cuts(items: list[tuple[Path, str, dict]], where: str):
    """CutSet of ``(path, class, extra labels)``; ids from file names (unique within a corpus)."""
    from lhotse import Recording, RecordingSet, SupervisionSet

    if not items:
        raise RecipeError(f"{where}: no clips in this split; check the corpus layout (docs/data.md)")

    recs, sups = [], []
    for path, cls, extra in items:
        try:
            rec = Recording.from_file(path, recording_id=path.stem)
        except Exception as e:  # lhotse raises several types for a bad header
            raise RecipeError(f"{path}: unreadable audio ({e}); re-encode it or remove it") from e
        recs.append(rec)
        sups.append(whole_recording(rec, custom={LABEL: cls, **extra}))
    return cuts_from(RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups))


def _split_dev(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded ``fraction`` of each class held out (at least one item of a class with two or more)."""
    import random

    by: dict[str, list] = {}
    for it in items:
        by.setdefault(it[1], []).append(it)
    rng = random.Random(seed)
    train, dev = [], []
    for cls in sorted(by):
        group = sorted(by[cls], key=lambda it: str(it[0]))
        rng.shuffle(group)
        k = max(1 if len(group) > 1 else 0, round(fraction * len(group)))
        dev += group[:k]
        train += group[k:]
    return train, dev


def _fold_splits(corpus: str, items: list[tuple[Path, str, dict]], folds: list[int], out, seed: int) -> dict:
    splits = {}
    for k in folds:
        test = [it for it in items if it[2]["fold"] == k]
        train, dev = _split_dev([it for it in items if it[2]["fold"] != k], 0.1, seed)
        for name, part in (("train", train), ("dev", dev), ("test", test)):
            splits[f"fold{k}_{name}"] = _cuts(part, f"{corpus} fold{k} {name}")
    return finish(corpus, splits, out)


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise RecipeError(f"{path}: missing (the corpus's metadata CSV)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise RecipeError(f"{path}:1: header lacks columns {missing}")
        rows = []
        for row in reader:
            if any(row.get(c) in (None, "") for c in columns):
                raise bad_line(path, reader.line_num, ",".join(str(v) for v in row.values()), f"values for {', '.join(columns)}")
            rows.append((reader.line_num, row))
    return rows


def prepare_esc50(root: str | Path, out: str | Path | None = None, seed: int = 0, force: bool = False) -> dict:
    """ESC-50 (2,000 5-s clips, 50 classes, 5 folds); ``{fold<k>_<split>: CutSet}``."""
    if (done := cached_glob(out, "esc50", force)) is not None:
        return done
    root = require_dir(root, "ESC-50", "audio/ and meta/esc50.csv")
    items = []
    for lineno, row in _read_csv(root / "meta" / "esc50.csv", ("filename", "fold", "category")):
        path = root / "audio" / row["filename"]
        if not path.is_file():
            raise RecipeError(f"{root / 'meta' / 'esc50.csv'}:{lineno}: {row['filename']} not in {root / 'audio'}")
        items.append((path, row["category"], {"fold": int(row["fold"])}))
    return _fold_splits("esc50", items, sorted({it[2]["fold"] for it in items}), out, seed)


def prepare_us8k(root: str | Path, out: str | Path | None = None, seed: int = 0, force: bool = False) -> dict:
    """UrbanSound8K (8,732 clips up to 4 s, 10 classes, 10 folds); ``{fold<k>_<split>: CutSet}``."""
    if (done := cached_glob(out, "us8k", force)) is not None:
        return done
    root = require_dir(root, "UrbanSound8K", "audio/fold1..10/ and metadata/UrbanSound8K.csv")
    csv_path = root / "metadata" / "UrbanSound8K.csv"
    items = []
    for lineno, row in _read_csv(csv_path, ("slice_file_name", "fold", "class")):
        path = root / "audio" / f"fold{row['fold']}" / row["slice_file_name"]
        if not path.is_file():
            raise RecipeError(f"{csv_path}:{lineno}: {path.relative_to(root)} does not exist")
        items.append((path, row["class"], {"fold": int(row["fold"])}))
    return _fold_splits("us8k", items, sorted({it[2]["fold"] for it in items}), out, seed)


def _class_folders(root: Path) -> list[tuple[Path, str, dict]]:
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO):
            items.append((path, folder.name, {}))
    return items


def _random_splits(name: str, items: list, out, seed: int) -> dict:
    if not items:
        raise RecipeError(f"{name}: no audio files in class folders")
    rest, test = _split_dev(items, 0.1, seed)
    train, dev = _split_dev(rest, 1 / 9, seed + 1)  # 10 % of the whole
    return finish(name, {"train": _cuts(train, f"{name} train"), "dev": _cuts(dev, f"{name} dev"),
                         "test": _cuts(test, f"{name} test")}, out)


def prepare_gtzan(root: str | Path, out: str | Path | None = None, seed: int = 0, force: bool = False) -> dict:
    """GTZAN (1,000 30-s clips, 10 genres): the filtered split when its files are in ROOT."""
    if (done := cached_glob(out, "gtzan", force)) is not None:
        return done
    root = require_dir(root, "GTZAN", "genres/<genre>/*.wav (docs/data.md)")
    base = root / "genres" if (root / "genres").is_dir() else root
    lists = {s: root / f"{s}_filtered.txt" for s in ("train", "valid", "test")}
    if all(p.is_file() for p in lists.values()):
        splits = {}
        for split, path in lists.items():
            items = []
            for lineno, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                audio = base / line.strip()
                if not audio.is_file():
                    raise RecipeError(f"{path}:{lineno}: {line.strip()} not found under {base}")
                items.append((audio, Path(line.strip()).parts[0], {}))
            splits["dev" if split == "valid" else split] = _cuts(items, f"{path}")
        return finish("gtzan", splits, out)
    log.warning("GTZAN: no *_filtered.txt split files in %s; using a seeded stratified 80/10/10 split", root)
    return _random_splits("gtzan", _class_folders(base), out, seed)


def prepare_nsynth(root: str | Path, out: str | Path | None = None, force: bool = False) -> dict:
    """NSynth (4-s notes; label = instrument family, 11 classes) with its official splits."""
    if (done := cached_glob(out, "nsynth", force)) is not None:
        return done
    root = require_dir(root, "NSynth", "nsynth-{train,valid,test}/examples.json and audio/")
    splits = {}
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        folder = root / f"nsynth-{split}"
        meta_path = folder / "examples.json"
        if not meta_path.is_file():
            raise RecipeError(f"{meta_path}: missing; NSynth keeps each split's labels in nsynth-<split>/examples.json")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise RecipeError(f"{meta_path}:{e.lineno}: not valid JSON ({e.msg})") from e
        items = []
        for note, info in sorted(meta.items()):
            if "instrument_family_str" not in info:
                raise RecipeError(f"{meta_path}: note {note!r} has no instrument_family_str")
            path = folder / "audio" / f"{note}.wav"
            if not path.is_file():
                raise RecipeError(f"{meta_path}: note {note!r} has no audio file {path}")
            items.append((path, info["instrument_family_str"], {}))
        splits[name] = _cuts(items, str(meta_path))
    return finish("nsynth", splits, out)


def prepare_sound_folder(root: str | Path, out: str | Path | None = None, name: str = "sounds", seed: int = 0,
                         force: bool = False) -> dict:
    """Any ``ROOT/<class>/...`` tree; seeded stratified 80 / 10 / 10 ``{train, dev, test}``."""
    if (done := cached_glob(out, name, force)) is not None:
        return done
    root = require_dir(root, "a folder-per-class sound set", "ROOT/<class>/*.wav")
    return _random_splits(name, _class_folders(root), out, seed)
