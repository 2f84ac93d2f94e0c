"""VoxCeleb1 (Nagrani et al., 2017): 153 k utterances of 1 251 celebrities from YouTube interviews;
SUPERB's speaker-identification (SID) task. Wraps lhotse's VoxCeleb1 reader
(``lhotse.recipes.voxceleb._prepare_voxceleb_v1``): lhotse's public ``prepare_voxceleb`` also
downloads the verification trials list, which does not work offline, so s3kit calls the reader
underneath it. Adds ``gender`` as "female"/"male" and SUPERB's identification split.

Layout (as unpacked; ``iden_split.txt`` from the VoxCeleb1 site)::

    ROOT/
      vox1_meta.csv          # TAB-separated: VoxCeleb1 ID, VGGFace1 ID, Gender (m/f), Nationality, Set (dev/test)
      iden_split.txt         # optional: "1 id10001/1zcIwhmdeo4/00001.wav" (1 train, 2 dev, 3 test)
      wav/id10001/1zcIwhmdeo4/00001.wav

With ``iden_split.txt``: ``OUT/voxceleb_{train,dev,test}.jsonl.gz`` (SID: same 1 251 speakers in
each, different utterances). Without it: lhotse's verification split, ``voxceleb_{train,test}``
(disjoint speakers).
"""

from __future__ import annotations

from pathlib import Path

from s3kit.data.recipes._common import GENDERS, RecipeError, bad_line, cached, cuts_from, finish, relabel, require_dir

CORPUS = "voxceleb"
IDEN_SPLITS = {"1": "train", "2": "dev", "3": "test"}


def check_meta(path: Path) -> None:
    """``vox1_meta.csv``: a header, then 5 TAB-separated fields per line, gender m/f."""
    if not path.is_file():
        raise RecipeError(f"{path}: missing; VoxCeleb1 ships vox1_meta.csv next to wav/")
    with open(path, encoding="utf-8") as f:
        next(f, None)
        for lineno, line in enumerate(f, 2):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 5 or fields[2].strip().lower() not in GENDERS:
                raise bad_line(path, lineno, line, "5 TAB-separated fields: ID, VGGFace1 ID, gender m/f, nationality, dev/test")


def read_iden_split(path: Path) -> dict[str, str]:
    """``{recording id: split}`` from ``iden_split.txt`` (ids as lhotse writes them, ``spk-video-utt``)."""
    splits = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2 or fields[0] not in IDEN_SPLITS or fields[1].count("/") != 2:
                raise bad_line(path, lineno, line, "'<1|2|3> <speaker>/<video>/<utt>.wav'")
            splits["-".join(fields[1].rsplit(".", 1)[0].split("/"))] = IDEN_SPLITS[fields[0]]
    return splits


def prepare_voxceleb(root: str | Path, out: str | Path | None = None, force: bool = False, num_jobs: int = 1) -> dict:
    """VoxCeleb1 manifests; returns ``{split: CutSet}``."""
    from lhotse import CutSet
    from lhotse.recipes.voxceleb import _prepare_voxceleb_v1

    root = require_dir(root, "VoxCeleb1", "vox1_meta.csv and wav/<speaker>/<video>/<utt>.wav (docs/data.md)")
    iden = root / "iden_split.txt"
    names = tuple(IDEN_SPLITS.values()) if iden.is_file() else ("train", "test")
    if (done := cached(out, CORPUS, names, force)) is not None:
        return done
    check_meta(root / "vox1_meta.csv")
    manifests = _prepare_voxceleb_v1(root, num_jobs)

    def fix_gender(cut, sup):
        sup.gender = GENDERS.get((sup.gender or "").strip().lower(), sup.gender)
        return sup

    lhotse_splits = {s: relabel(cuts_from(m["recordings"], m["supervisions"]), fix_gender) for s, m in manifests.items()}
    if not iden.is_file():
        return finish(CORPUS, {s: lhotse_splits[s] for s in names}, out)
    assignment = read_iden_split(iden)
    every = [c for cuts in lhotse_splits.values() for c in cuts]
    unlisted = [c.id for c in every if c.recording_id not in assignment]
    if unlisted:
        raise RecipeError(f"{iden}: does not list {len(unlisted)} files under wav/, e.g. {unlisted[0]}; is it VoxCeleb1's?")
    splits = {s: CutSet.from_cuts(c for c in every if assignment[c.recording_id] == s) for s in names}
    return finish(CORPUS, splits, out)
