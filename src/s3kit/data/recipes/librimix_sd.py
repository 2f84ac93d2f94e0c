"""Libri2Mix for speaker diarization, in the Kaldi-style data directories that s3prl's LibriMix
scripts (``generate_librimix_sd.sh`` -> ``scripts/prepare_diarization.py``) write for SUPERB SD:
two LibriSpeech speakers per mixture, 16 kHz, "max" mode, with per-utterance speaker turns.

lhotse's ``prepare_librimix`` builds LibriMix from the LibriSpeech / WHAM! manifests and the
metadata CSVs; its supervisions cover whole source utterances, not the RTTM turns SUPERB scores
against, so this recipe reads the SUPERB data directories instead.

Layout::

    ROOT/
      train/wav.scp  rttm  [utt2spk segments reco2dur ...]
      dev/wav.scp    rttm
      test/wav.scp   rttm

``wav.scp``: ``<recording id> <path to wav>`` (a relative path is taken from ROOT, then from the
split folder); ``rttm``: ``SPEAKER <recording id> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>``.

Writes ``OUT/librimix_sd_{train,dev,test}.jsonl.gz``: one cut per mixture, one supervision per
speaker turn (``speaker`` set), as :mod:`s3kit.eval.tasks.sd` reads them.
"""

from __future__ import annotations

from pathlib import Path

from s3kit.data.recipes._common import RecipeError, bad_line, cached, finish, require_dir

CORPUS = "librimix_sd"
SPLITS = ("train", "dev", "test")


def read_wav_scp(path: Path, root: Path) -> dict[str, Path]:
    if not path.is_file():
        raise RecipeError(f"{path}: missing; each split folder needs a Kaldi wav.scp ('<recording id> <wav path>')")
    out = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise bad_line(path, lineno, line, "'<recording id> <wav path>'")
        wav = Path(parts[1].strip())
        if not wav.is_absolute():
            wav = next((p for p in (root / wav, path.parent / wav) if p.is_file()), root / wav)
        if not wav.is_file():
            raise RecipeError(f"{path}:{lineno}: {parts[1].strip()} does not exist")
        out[parts[0]] = wav
    return out


def read_rttm(path: Path) -> dict[str, list[tuple[float, float, str]]]:
    """``{recording: [(start, duration, speaker)]}`` from ``SPEAKER`` lines."""
    if not path.is_file():
        raise RecipeError(f"{path}: missing; each split folder needs an rttm with the speaker turns")
    out: dict[str, list] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            if parts[0] != "SPEAKER" or len(parts) < 8:
                raise ValueError
            out.setdefault(parts[1], []).append((float(parts[3]), float(parts[4]), parts[7]))
        except ValueError:
            raise bad_line(path, lineno, line, "'SPEAKER <recording> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>'") from None
    return out


def prepare_librimix_sd(root: str | Path, out: str | Path | None = None, force: bool = False) -> dict:
    """SUPERB SD manifests from the LibriMix diarization data dirs; returns ``{split: CutSet}``."""
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    if (done := cached(out, CORPUS, SPLITS, force)) is not None:
        return done
    root = require_dir(root, "LibriMix (SUPERB SD)", "train/, dev/, test/ each with wav.scp and rttm (docs/data.md)")
    splits = {}
    for split in SPLITS:
        folder = require_dir(root / split, "LibriMix (SUPERB SD)", f"a {split}/ folder with wav.scp and rttm")
        wavs = read_wav_scp(folder / "wav.scp", root)
        turns = read_rttm(folder / "rttm")
        cuts = []
        for rid, wav in wavs.items():
            rec = Recording.from_file(wav, recording_id=rid)
            sups = [SupervisionSegment(id=f"{rid}-{k}", recording_id=rid, start=s, duration=min(d, rec.duration - s),
                                       channel=0, speaker=spk)
                    for k, (s, d, spk) in enumerate(sorted(turns.get(rid, [])))]
            if not sups:
                raise RecipeError(f"{folder / 'rttm'}: no SPEAKER line for recording {rid!r} of wav.scp")
            cuts.append(MonoCut(id=rid, start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=sups))
        splits[split] = CutSet.from_cuts(cuts)
    return finish(CORPUS, splits, out)
