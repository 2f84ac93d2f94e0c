"""LibriSpeech (Panayotov et al., 2015): 960 h of read English audiobooks, 16 kHz flac, with
transcripts; SUPERB's phoneme-recognition (PR) and ASR data, and the usual pre-training set.
A thin wrapper over lhotse's ``prepare_librispeech``; this module adds ``gender`` from
``SPEAKERS.TXT`` and checks the transcript files first (lhotse stops on a bad line without
saying which file it was in).

Layout (as unpacked from openslr.org/12; Mini LibriSpeech parts work too)::

    ROOT/                                    # LibriSpeech/
      SPEAKERS.TXT                           # optional: "14 | F | train-clean-360 | 25.03 | Kristin LeMoine"
      train-clean-100/19/198/19-198-0001.flac
      train-clean-100/19/198/19-198.trans.txt   # lines "19-198-0001 NORTHANGER ABBEY ..."
      dev-clean/ ...  test-clean/ ...

Writes ``OUT/librispeech_<part>.jsonl.gz`` for each part present (``speaker``, ``gender``, ``text``).
Phone transcripts (``phones``) are not in LibriSpeech. With ``phones=True`` they are made from
each transcript by espeak-ng's front end (IPA, stress dropped; the synthetic corpus uses the same),
an offline stand-in for SUPERB PR's lexicon-based phonemes: scores are comparable between models
prepared the same way, not with published SUPERB PR numbers.
"""

from __future__ import annotations

import re
from pathlib import Path

from s3kit.data.recipes._common import GENDERS, bad_line, cached, cuts_from, finish, relabel, require_dir

CORPUS = "librispeech"
_TRANS = re.compile(r"^\d+-\d+-\d+ \S.*$")
_SPEAKER = re.compile(r"^\s*(\d+)\s*\|\s*([FM])\s*\|.*$")


def parts_in(root: Path) -> list[str]:
    from lhotse.recipes.librispeech import LIBRISPEECH, MINI_LIBRISPEECH

    return sorted(p for p in LIBRISPEECH + MINI_LIBRISPEECH if (root / p).is_dir())


def check_transcripts(part_dir: Path) -> None:
    """Each ``*.trans.txt`` line must be ``<spk>-<chapter>-<utt> <TEXT>``."""
    for path in sorted(part_dir.rglob("*.trans.txt")):
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip() and not _TRANS.match(line.strip()):
                    raise bad_line(path, lineno, line, "'<speaker>-<chapter>-<utterance> <TRANSCRIPT>'")


def read_speakers(path: Path) -> dict[str, str]:
    """``{speaker: "female"/"male"}`` from ``SPEAKERS.TXT`` (``;`` starts a comment)."""
    if not path.is_file():
        return {}
    genders = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith(";"):
                continue
            m = _SPEAKER.match(line)
            if m is None:
                raise bad_line(path, lineno, line, "'ID | SEX (F/M) | SUBSET | MINUTES | NAME'")
            genders[m.group(1)] = GENDERS[m.group(2).lower()]
    return genders


def prepare_librispeech(root: str | Path, out: str | Path | None = None, force: bool = False, num_jobs: int = 1,
                        phones: bool = False) -> dict:
    """LibriSpeech manifests, one per part present; returns ``{part: CutSet}``.
    ``phones``: also write espeak-ng IPA phone transcripts (``custom["phones"]``)."""
    from lhotse.recipes import prepare_librispeech as lhotse_prepare

    root = require_dir(root, CORPUS, "the unpacked LibriSpeech/ folder with train-clean-100/ etc. (docs/data.md)")
    parts = parts_in(root)
    if not parts:
        from s3kit.data.recipes._common import RecipeError

        raise RecipeError(f"{root}: no LibriSpeech part (train-clean-100, dev-clean, ...) inside; point ROOT at LibriSpeech/")
    if (done := cached(out, CORPUS, parts, force)) is not None:
        return done
    for part in parts:
        check_transcripts(root / part)
    genders = read_speakers(root / "SPEAKERS.TXT")
    manifests = lhotse_prepare(root, dataset_parts=parts, output_dir=None, num_jobs=num_jobs)

    if phones:
        from s3kit.data.tts import phonemize

    def add_gender(cut, sup):
        sup.gender = genders.get(sup.speaker, sup.gender)
        if phones:
            sup.custom = {**(sup.custom or {}), "phones": " ".join(phonemize(sup.text.lower()))}
        return sup

    splits = {p: relabel(cuts_from(m["recordings"], m["supervisions"]), add_gender) for p, m in manifests.items()}
    return finish(CORPUS, splits, out)
