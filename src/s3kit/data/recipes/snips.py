"""Audio SNIPS (SUPERB SF): SNIPS NLU commands read by 16 Amazon Polly voices; the train / valid
/ test splits use disjoint voices. lhotse has no recipe for it.

Layout (what s3prl's ``preprocess/snips_prepare_data.sh`` leaves in ``SNIPS/``)::

    ROOT/
      all.iob.snips.txt        # "<Voice>-snips-<split>-<n> BOS w1 .. wN EOS<TAB>O t1 .. tN <intent>"
      train/Joanna-snips-train-0.wav ...   (or .mp3)
      valid/Aditi-snips-valid-0.wav ...
      test/Brian-snips-test-0.wav ...

The text side of an IOB line holds the utterance id, ``BOS``, the words, ``EOS``; the tag side
one tag per token (``O`` for BOS, then one per word) and the intent last. BIO prefixes
(``B-`` / ``I-``) are dropped: SUPERB's target has one slot type per word.

Writes ``OUT/snips_{train,valid,test}.jsonl.gz`` with ``text``, ``slots`` (tags per word, ``O``
outside slots), ``intent`` and ``speaker``; only s3prl's voices of each split are kept.
"""

from __future__ import annotations

from pathlib import Path

from s3kit.data.recipes._common import RecipeError, bad_line, cached, cuts_from, finish, require_dir, whole_recording

CORPUS = "snips"
SPLITS = ("train", "valid", "test")
# s3prl downstream/ctc/snips.yaml
VOICES = {
    "train": ("Ivy", "Joanna", "Joey", "Justin", "Kendra", "Kimberly", "Matthew", "Salli"),
    "valid": ("Aditi", "Amy", "Geraint", "Nicole"),
    "test": ("Brian", "Emma", "Raveena", "Russell"),
}


def read_iob(path: Path) -> dict[str, tuple[str, str, str]]:
    """``{utterance id: (text, slot tags, intent)}`` from ``all.iob.snips.txt``."""
    if not path.is_file():
        raise RecipeError(f"{path}: missing; Audio SNIPS keeps its transcripts and slots in ROOT/all.iob.snips.txt")
    out = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        words = parts[0].split()
        tags = parts[1].split() if len(parts) == 2 else []
        if len(parts) != 2 or len(words) < 3 or words[1] != "BOS" or words[-1] != "EOS" or len(tags) != len(words) - 1:
            raise bad_line(path, lineno, line, "'<id> BOS w1 .. wN EOS<TAB>O t1 .. tN <intent>'")
        slot_tags = [t.split("-", 1)[1] if t[:2] in ("B-", "I-") else t for t in tags[1:-1]]
        out[words[0]] = (" ".join(words[2:-1]), " ".join(slot_tags), tags[-1])
    return out


def prepare_snips(root: str | Path, out: str | Path | None = None, force: bool = False) -> dict:
    """Audio SNIPS manifests; returns ``{split: CutSet}``."""
    from lhotse import Recording, RecordingSet, SupervisionSet

    if (done := cached(out, CORPUS, SPLITS, force)) is not None:
        return done
    root = require_dir(root, "Audio SNIPS", "all.iob.snips.txt and train/ valid/ test/ (docs/data.md)")
    labels = read_iob(root / "all.iob.snips.txt")
    splits = {}
    for split in SPLITS:
        folder = require_dir(root / split, "Audio SNIPS", f"a {split}/ folder of <voice>-snips-{split}-<n>.wav")
        recordings, supervisions = [], []
        for path in sorted(p for p in folder.iterdir() if p.suffix in (".wav", ".mp3")):
            voice = path.stem.split("-", 1)[0]
            if voice not in VOICES[split]:
                continue
            if path.stem not in labels:
                raise RecipeError(f"{path}: no line for {path.stem!r} in {root / 'all.iob.snips.txt'}")
            text, slots, intent = labels[path.stem]
            rec = Recording.from_file(path, recording_id=path.stem)
            recordings.append(rec)
            supervisions.append(whole_recording(rec, text=text, speaker=voice, language="English",
                                                custom={"slots": slots, "intent": intent}))
        splits[split] = cuts_from(RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions))
    return finish(CORPUS, splits, out)
