"""IEMOCAP (Busso et al., 2008): 5 sessions of dyadic acted dialogue, one male and one female actor
per session, ~12 h, utterances labelled with categorical emotion by 3+ annotators. lhotse 1.33 has
no IEMOCAP recipe, so this is s3kit's, following lhotse's contract.

SUPERB's emotion-recognition form: 4 classes, ``neu``, ``hap`` (happy merged with ``exc``
excited), ``ang``, ``sad``; every other label (fru, sur, fea, dis, oth, xxx) is dropped. Evaluation
is leave-one-session-out over the 5 sessions; the dev set is a seeded random 20 % of the training
sessions' utterances (SUPERB ``emotion/config.yaml``).

Layout (the licensed release, as unpacked)::

    ROOT/                              # IEMOCAP_full_release
      Session1/
        sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav
        dialog/EmoEvaluation/Ses01F_impro01.txt
      Session2/ ... Session5/

An EmoEvaluation line reads ``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5, 2.5, 2.5]``.
The utterance name encodes the speaker: ``Ses01F_impro01_M000`` is session 1's male actor (the
letter after the last ``_``), whatever the dialogue's leading ``F``/``M`` says.

Writes ``OUT/iemocap_all.jsonl.gz`` (labels ``emotion``, ``speaker``, ``gender``, ``session``) and,
for each fold k in ``test_sessions``, ``iemocap_fold{k}_{train,dev,test}.jsonl.gz``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from s3kit.data.recipes._common import (
    RecipeError,
    bad_line,
    whole_recording,
    cached,
    cuts_from,
    finish,
    require_dir,
)

CORPUS = "iemocap"
SESSIONS = (1, 2, 3, 4, 5)
# SUPERB ER: 4 classes; "exc" (excited) is merged into "hap" (happy).
EMOTION_MAP = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
DEV_FRACTION = 0.2  # SUPERB: dev = random 20 % of the training sessions
_LINE = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(Ses(\d\d)[FM]_\S+_([FM])\d+)\s+(\w+)\s+\[.*\]\s*$")
_EXPECTED = "'[START - END]<TAB>SesNNX_dialog_X000<TAB>emotion<TAB>[V, A, D]'"


def read_emo_evaluation(path: Path) -> list[tuple[str, int, str, str]]:
    """``(utterance, session, speaker_letter, raw_emotion)`` for each label line of ``path``.

    Only lines starting with ``[`` are labels (the others are annotator details); a label line
    that does not parse raises :class:`RecipeError` naming file and line.
    """
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.startswith("["):
                continue
            m = _LINE.match(line.strip())
            if m is None:
                raise bad_line(path, lineno, line, _EXPECTED)
            rows.append((m.group(3), int(m.group(4)), m.group(5), m.group(6)))
    return rows


def leave_one_session_out(cuts, test_session: int, dev_fraction: float = DEV_FRACTION, seed: int = 0):
    """``(train, dev, test)`` CutSets: test = session ``test_session``; dev = a seeded random
    ``dev_fraction`` of the other sessions' utterances (SUPERB's ER protocol)."""
    from lhotse import CutSet

    from s3kit.data.manifest import get_label

    if test_session not in SESSIONS:
        raise ValueError(f"test_session={test_session}: IEMOCAP sessions are {SESSIONS}")
    test = [c for c in cuts if get_label(c, "session") == test_session]
    rest = [c for c in cuts if get_label(c, "session") != test_session]
    order = np.random.default_rng(seed).permutation(len(rest))
    n_dev = int(round(dev_fraction * len(rest)))
    dev_idx = set(order[:n_dev].tolist())
    dev = [c for i, c in enumerate(rest) if i in dev_idx]
    train = [c for i, c in enumerate(rest) if i not in dev_idx]
    return CutSet.from_cuts(train), CutSet.from_cuts(dev), CutSet.from_cuts(test)


def prepare_iemocap(
    root: str | Path,
    out: str | Path | None = None,
    test_sessions: Sequence[int] | None = None,
    seed: int = 0,
    force: bool = False,
) -> dict:
    """Manifests of IEMOCAP in SUPERB's 4-class form; returns ``{split: CutSet}``.

    ``test_sessions``: the folds to write (default: every session present under ``root``).
    """
    from lhotse import Recording, RecordingSet, SupervisionSet

    root = require_dir(root, CORPUS, "IEMOCAP_full_release with Session1..Session5/ (see docs/data.md)")
    present = [k for k in SESSIONS if (root / f"Session{k}").is_dir()]
    if not present:
        raise RecipeError(f"{root}: no Session1..Session5 folders; point ROOT at IEMOCAP_full_release")
    test_sessions = present if test_sessions is None else list(test_sessions)
    if missing := sorted(set(test_sessions) - set(present)):
        raise RecipeError(f"{root}: test_sessions {missing} have no Session folder; present: {present}")
    splits = ["all"] + [f"fold{k}_{s}" for k in test_sessions for s in ("train", "dev", "test")]
    if (done := cached(out, CORPUS, splits, force)) is not None:
        return done
    sessions = [root / f"Session{k}" for k in present]

    recordings, supervisions = [], []
    for session in sessions:
        for label_file in sorted((session / "dialog" / "EmoEvaluation").glob("*.txt")):
            dialog = label_file.stem
            for utt, sess, letter, raw in read_emo_evaluation(label_file):
                emotion = EMOTION_MAP.get(raw)
                if emotion is None:
                    continue  # fru, sur, fea, dis, oth, xxx: not one of the 4 SUPERB classes
                wav = session / "sentences" / "wav" / dialog / f"{utt}.wav"
                if not wav.is_file():
                    raise RecipeError(f"{label_file}: labels {utt} but {wav} is missing; is the release complete?")
                rec = Recording.from_file(wav, recording_id=utt)
                recordings.append(rec)
                supervisions.append(
                    whole_recording(
                    rec, language="English",
                        speaker=f"Ses{sess:02d}{letter}",
                        gender="female" if letter == "F" else "male",
                        custom={"emotion": emotion, "session": sess},
                    )
                )
    if not recordings:
        raise RecipeError(f"{root}: no neu/hap/exc/ang/sad utterances found under Session*/dialog/EmoEvaluation/")
    all_cuts = cuts_from(RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions))
    result = {"all": all_cuts}
    for k in test_sessions:
        train, dev, test = leave_one_session_out(all_cuts, k, seed=seed)
        result.update({f"fold{k}_train": train, f"fold{k}_dev": dev, f"fold{k}_test": test})
    return finish(CORPUS, result, out)
