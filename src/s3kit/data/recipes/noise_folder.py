"""A generic noise folder: any tree of wav / flac / ogg files (AudioSet clips, ESC-50, DEMAND,
your own recordings) as the noise side of mixing (M2D-S mixes AudioSet noise into speech; the
KWS paper's "playback" test set adds noise at an SNR). No labels are needed; each file's parent
folder (relative to ROOT) is kept as ``noise_class``.

Layout: anything, e.g. ::

    ROOT/
      balanced_train_segments/--4gqARaEJE.wav
      eval_segments/ ...

Writes ``OUT/<name>_all.jsonl.gz`` (``name`` defaults to ``noise``). An unreadable file stops the
recipe with its path (re-encode it or delete it).
"""

from __future__ import annotations

from pathlib import Path

from s3kit.data.recipes._common import RecipeError, cached, finish, recording_id, require_dir, whole_recording

CORPUS = "noise"
EXTENSIONS = (".wav", ".flac", ".ogg")


def prepare_noise(root: str | Path, out: str | Path | None = None, name: str = CORPUS, force: bool = False) -> dict:
    """Every audio file under ``root`` as one cut; returns ``{"all": CutSet}``."""
    from lhotse import Recording, RecordingSet, SupervisionSet

    from s3kit.data.recipes._common import cuts_from

    if (done := cached(out, name, ["all"], force)) is not None:
        return done
    root = require_dir(root, "a noise folder", "a tree of wav/flac/ogg files")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not files:
        raise RecipeError(f"{root}: no {'/'.join(EXTENSIONS)} files anywhere below it")
    recordings, supervisions = [], []
    for path in files:
        rid = recording_id(path, root)
        try:
            rec = Recording.from_file(path, recording_id=rid)
        except Exception as e:  # lhotse raises several types for a bad header
            raise RecipeError(f"{path}: unreadable audio ({e}); re-encode it as wav/flac or remove it") from e
        if rec.duration <= 0:
            raise RecipeError(f"{path}: 0 samples; remove it")
        recordings.append(rec)
        cls = path.parent.relative_to(root).as_posix()
        supervisions.append(
            whole_recording(
                    rec, custom={"noise_class": cls})
        )
    cuts = cuts_from(RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions))
    return finish(name, {"all": cuts}, out)
