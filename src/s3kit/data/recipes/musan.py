"""MUSAN (Snyder et al., 2015): 109 h of music, speech and noise for augmentation. A thin wrapper
over lhotse's ``prepare_musan``; this module checks the ``ANNOTATIONS`` files first (lhotse reads
them without saying which line is bad) and makes one CutSet per part.

Layout (openslr.org/17)::

    ROOT/                                   # musan/
      music/fma/music-fma-0000.wav  music/fma/ANNOTATIONS   # "music-fma-0000 genre1,genre2 Y|N artist"
      speech/librivox/speech-librivox-0000.wav
      noise/free-sound/noise-free-sound-0000.wav

Writes ``OUT/musan_{music,speech,noise}.jsonl.gz`` for the parts present. Use them as the noise
side of :func:`s3kit.data.augment.mix_at_snr` or lhotse's ``CutSet.mix``.
"""

from __future__ import annotations

from pathlib import Path

from s3kit.data.recipes._common import RecipeError, bad_line, cached, cuts_from, finish, require_dir

CORPUS = "musan"
PARTS = ("music", "speech", "noise")


def check_annotations(music_dir: Path) -> None:
    """Each ``ANNOTATIONS`` line: ``<utt> <genres,comma,separated> <Y|N> [artist...]``."""
    for path in sorted(music_dir.rglob("ANNOTATIONS")):
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                fields = line.split()
                if fields and (len(fields) < 3 or fields[2] not in ("Y", "N")):
                    raise bad_line(path, lineno, line, "'<utterance> <genres> <Y|N vocals> <artist>'")


def prepare_musan(root: str | Path, out: str | Path | None = None, force: bool = False) -> dict:
    """MUSAN manifests, one per part present; returns ``{part: CutSet}``."""
    from lhotse.recipes import prepare_musan as lhotse_prepare

    root = require_dir(root, CORPUS, "music/, speech/ and noise/ folders (docs/data.md)")
    parts = [p for p in PARTS if (root / p).is_dir()]
    if not parts:
        raise RecipeError(f"{root}: none of music/, speech/, noise/ inside; point ROOT at musan/")
    if (done := cached(out, CORPUS, parts, force)) is not None:
        return done
    if "music" in parts:
        check_annotations(root / "music")
    manifests = lhotse_prepare(root, output_dir=None, parts=parts)
    splits = {}
    for part, m in manifests.items():
        sups = m.get("supervisions")
        if sups is not None:  # music: genres/vocals supervisions; files without annotation are dropped
            sups = sups.filter(lambda s: s.recording_id in m["recordings"])
        splits[part] = cuts_from(m["recordings"], sups)
    return finish(CORPUS, splits, out)
