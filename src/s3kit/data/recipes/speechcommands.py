"""Google Speech Commands v0.01 / v0.02 (Warden, 2018): 1 s clips of single words, ~2 600 speakers.
A thin wrapper over lhotse's ``prepare_speechcommands``; this module adds the ``keyword`` label and
a check of the split lists (lhotse silently skips a listed file that is missing).

Layout (lhotse's; the two archives unpacked side by side)::

    ROOT/
      speech_commands_v0.01/                 # or _v0.02
        yes/0a7c2a8d_nohash_0.wav  no/ ...  bed/ ...  _background_noise_/white_noise.wav
        validation_list.txt  testing_list.txt  # lines "yes/0a7c2a8d_nohash_0.wav"
      speech_commands_test_set_v0.01/        # official test set: 10 words, _unknown_, _silence_
        yes/...  _unknown_/bed_0a7c2a8d_nohash_0.wav  _silence_/...

Here ``keyword`` is the folder name (all 30 / 35 words, ``_background_noise_`` kept whole); for
SUPERB's 12-class task use :mod:`s3kit.data.recipes.speechcommands_superb`.
Writes ``OUT/speechcommands_{train,valid,test}.jsonl.gz``.
"""

from __future__ import annotations

import re
from pathlib import Path

from s3kit.data.recipes._common import RecipeError, bad_line, cached, cuts_from, finish, relabel, require_dir, set_custom

CORPUS = "speechcommands"
SPLITS = ("train", "valid", "test")
_LIST_LINE = re.compile(r"^[^/\s]+/[^/\s]+\.wav$")


def check_layout(root: Path, version: str) -> None:
    """Fail early, naming the file, where lhotse's recipe would crash or silently skip."""
    part = root / f"speech_commands_v0.0{version}"
    test = root / f"speech_commands_test_set_v0.0{version}"
    for d in (part, test):
        if not d.is_dir():
            raise RecipeError(f"{d}: missing; Speech Commands expects both archives unpacked under ROOT (docs/data.md)")
    for name in ("validation_list.txt", "testing_list.txt"):
        path = part / name
        if not path.is_file():
            raise RecipeError(f"{path}: missing; it ships with speech_commands_v0.0{version}.tar.gz")
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                entry = line.strip()
                if not entry:
                    continue
                if not _LIST_LINE.match(entry):
                    raise bad_line(path, lineno, line, "'<word>/<file>.wav'")
                if not (part / entry).is_file():
                    raise RecipeError(f"{path}:{lineno}: lists {entry}, which is not in {part}")


def source_folder(cut) -> str:
    """The folder a Speech Commands clip sits in (its word, ``_unknown_``, ``_silence_``...)."""
    return Path(cut.recording.sources[0].source).parent.name


def load_lhotse(root: str | Path, version: str = "1") -> dict:
    """lhotse's manifests as ``{split: CutSet}``, after :func:`check_layout`."""
    from lhotse.recipes import prepare_speechcommands

    root = require_dir(root, CORPUS, "speech_commands_v0.0X/ and speech_commands_test_set_v0.0X/")
    check_layout(root, version)
    manifests = prepare_speechcommands(version, root, output_dir=None)
    return {s: cuts_from(manifests[s]["recordings"], manifests[s]["supervisions"]) for s in SPLITS}


def prepare_speechcommands(root: str | Path, out: str | Path | None = None, version: str = "1", force: bool = False) -> dict:
    """Speech Commands with ``keyword`` = source folder; returns ``{split: CutSet}``."""
    if (done := cached(out, CORPUS, SPLITS, force)) is not None:
        return done
    splits = {
        s: relabel(cuts, lambda cut, sup: set_custom(sup, keyword=source_folder(cut)))
        for s, cuts in load_lhotse(root, version).items()
    }
    return finish(CORPUS, splits, out)
