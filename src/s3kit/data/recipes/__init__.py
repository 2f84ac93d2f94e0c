"""Real corpora -> s3kit manifests (lhotse CutSets, ``OUT/<corpus>_<split>.jsonl.gz``).

Each corpus is one module with ``prepare_<corpus>(root, out, **options) -> {split: CutSet}``,
following lhotse's recipe contract (idempotent, validated before writing). Where lhotse has the
recipe (LibriSpeech, Speech Commands, VoxCeleb, MUSAN) the module wraps it and only adds s3kit's
labels; IEMOCAP, the SUPERB form of Speech Commands, Fluent Speech Commands (lhotse's needs pandas
and drops speakers), noise folders and SpEAT stimulus sets are s3kit's own. How to point each at
its corpus: ``docs/data.md``.
"""

from __future__ import annotations

from pathlib import Path

from s3kit.data.recipes._common import RecipeError, manifest_path
from s3kit.data.recipes.fsc import prepare_slu
from s3kit.data.recipes.iemocap import leave_one_session_out, prepare_iemocap
from s3kit.data.recipes.librimix_sd import prepare_librimix_sd
from s3kit.data.recipes.librispeech import prepare_librispeech
from s3kit.data.recipes.musan import prepare_musan
from s3kit.data.recipes.noise_folder import prepare_noise
from s3kit.data.recipes.quesst14 import prepare_quesst14
from s3kit.data.recipes.snips import prepare_snips
from s3kit.data.recipes.sound_classes import prepare_esc50, prepare_gtzan, prepare_nsynth, prepare_sound_folder, prepare_us8k
from s3kit.data.recipes.speat import prepare_speat
from s3kit.data.recipes.speechcommands import prepare_speechcommands
from s3kit.data.recipes.speechcommands_superb import prepare_speechcommands_superb
from s3kit.data.recipes.voxceleb import prepare_voxceleb

CORPORA = {
    "librispeech": prepare_librispeech,
    "speechcommands": prepare_speechcommands,
    "speechcommands_superb": prepare_speechcommands_superb,
    "slu": prepare_slu,
    "voxceleb": prepare_voxceleb,
    "musan": prepare_musan,
    "iemocap": prepare_iemocap,
    "noise": prepare_noise,
    "speat": prepare_speat,
    "quesst14": prepare_quesst14,
    "librimix_sd": prepare_librimix_sd,
    "esc50": prepare_esc50,
    "us8k": prepare_us8k,
    "gtzan": prepare_gtzan,
    "nsynth": prepare_nsynth,
    "sound_folder": prepare_sound_folder,
    "snips": prepare_snips,
}


def prepare(corpus: str, root: str | Path, out: str | Path, **options) -> dict:
    """Run the recipe of ``corpus`` (a key of :data:`CORPORA`); returns ``{split: CutSet}``."""
    if corpus not in CORPORA:
        import difflib

        near = difflib.get_close_matches(corpus, CORPORA, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise RecipeError(f"unknown corpus {corpus!r}{hint} Known: {', '.join(CORPORA)}")
    return CORPORA[corpus](root, out, **options)


__all__ = ["CORPORA", "RecipeError", "leave_one_session_out", "manifest_path", "prepare", *(f.__name__ for f in CORPORA.values())]
