"""Speech Commands in SUPERB's 12-class keyword-spotting form (KS task; same layout as
:mod:`s3kit.data.recipes.speechcommands`, v0.01 by default).

lhotse's recipe keeps all 30 words and the six ``_background_noise_`` files whole. SUPERB instead
uses 12 classes: the 10 command words, every other word mapped to ``_unknown_``, and ``_silence_``
clips of 1 s cut from ``_background_noise_``. s3prl crops a random second at load time; a manifest
must be static, so each background file is cut here into consecutive 1 s windows (the last,
shorter window is dropped). The test split is the official test set, which already has
``_unknown_`` and ``_silence_`` folders. Train/valid come from ``validation_list.txt`` /
``testing_list.txt`` as lhotse reads them (``running_tap.wav`` goes to valid, as in lhotse).

Writes ``OUT/speechcommands_superb_{train,valid,test}.jsonl.gz`` with ``keyword`` in 12 classes.
"""

from __future__ import annotations

from pathlib import Path

from s3kit.data.recipes._common import cached, finish, relabel, set_custom
from s3kit.data.recipes.speechcommands import SPLITS, load_lhotse, source_folder

CORPUS = "speechcommands_superb"
WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN, SILENCE, BACKGROUND = "_unknown_", "_silence_", "_background_noise_"
CLASSES = WORDS + (UNKNOWN, SILENCE)
SILENCE_SECONDS = 1.0  # a Speech Commands clip is 1 s


def superb_keyword(folder: str) -> str:
    """The 12-class label of a clip in ``folder``."""
    if folder in WORDS:
        return folder
    if folder in (SILENCE, BACKGROUND):
        return SILENCE
    return UNKNOWN


def silence_windows(cuts):
    """Each ``_background_noise_`` recording of ``cuts`` cut into whole 1 s windows, each with its
    own supervision spanning exactly the window; other cuts kept."""
    from lhotse import CutSet
    from lhotse.utils import fastcopy

    out = []
    for cut in cuts:
        if source_folder(cut) != BACKGROUND:
            out.append(cut)
            continue
        for window in cut.cut_into_windows(SILENCE_SECONDS):
            if window.duration >= SILENCE_SECONDS - 1e-6:
                sup = fastcopy(window.supervisions[0], id=window.id, start=0.0, duration=window.duration)
                out.append(fastcopy(window, supervisions=[sup]))
    return CutSet.from_cuts(out)


def prepare_speechcommands_superb(root: str | Path, out: str | Path | None = None, version: str = "1", force: bool = False) -> dict:
    """SUPERB KS manifests (12 classes); returns ``{split: CutSet}``."""
    if (done := cached(out, CORPUS, SPLITS, force)) is not None:
        return done
    splits = {}
    for split, cuts in load_lhotse(root, version).items():
        cuts = silence_windows(cuts)
        splits[split] = relabel(cuts, lambda cut, sup: set_custom(sup, keyword=superb_keyword(source_folder(cut))))
    return finish(CORPUS, splits, out)
