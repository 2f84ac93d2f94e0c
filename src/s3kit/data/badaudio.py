"""What a run does with a cut whose audio cannot be used: stop (``error``) or drop it (``skip``).

``error`` is right for evaluation splits, which must stay complete: the run stops with the
:class:`~s3kit.audio.AudioError` that names the file, the cut and the fix. ``skip`` is right for
training data: the cut is dropped, logged once, counted, and listed (one JSON line per cut) in
``skipped_audio.jsonl`` in the run's output directory. A run that skips more than ``max_share``
of its cuts stops with :class:`BadAudioShareError`: then the corpus is broken, not a file.

The policy lives in one place, :class:`BadAudio`, held by s3kit's loader
(:func:`s3kit.data.loader.make_loader`); every command that reads audio goes through it.
``s3kit data check`` (:mod:`s3kit.data.check`) finds every bad file before a run starts.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np

from s3kit.audio import MIN_SAMPLES, AudioError

OnBadAudio = Literal["error", "skip"]
ON_BAD_AUDIO = ("error", "skip")
MAX_BAD_SHARE = 0.01  # more than 1 % unusable cuts: the corpus (or its manifest) is broken, not one file
SKIPPED_FILE = "skipped_audio.jsonl"

log = logging.getLogger("s3kit.audio")


class BadAudioShareError(AudioError):
    """A run skipped more than its allowed share of cuts."""


def check_policy(policy: str) -> str:
    if policy not in ON_BAD_AUDIO:
        raise ValueError(f"on_bad_audio must be one of {ON_BAD_AUDIO}, got {policy!r}")
    return policy


def source_of(cut) -> str:
    """The file behind ``cut`` (its recording's first source), or the cut id when it has none."""
    rec = getattr(cut, "recording", None)
    if rec is not None and rec.sources:
        return str(rec.sources[0].source)
    return cut.id


def skip_record(cut, error: Exception) -> dict:
    """One line of ``skipped_audio.jsonl``: cut id, file and reason."""
    return {"cut": cut.id, "file": source_of(cut), "reason": str(error)}


def try_load(cut, policy: str = "error", min_samples: int = MIN_SAMPLES) -> tuple[np.ndarray | None, dict | None]:
    """``(audio [S], None)`` for a good cut; ``(None, record)`` for a bad one under ``skip``.

    Under ``error`` a bad cut raises its :class:`~s3kit.audio.AudioError`.
    """
    from s3kit.data.loader import load_cut_audio

    try:
        return load_cut_audio(cut, min_samples), None
    except AudioError as e:
        if policy == "error":
            raise
        return None, skip_record(cut, e)


class BadAudio:
    """The policy of one data stream plus the record of what it skipped.

    Args:
        policy: ``"error"`` or ``"skip"``.
        max_share: the most cuts that may be skipped, as a share of ``total``.
        total: cuts this process reads per pass (a rank's shard under DDP); None when unknown
            (a lazy CutSet), then the share is taken of the distinct cuts seen so far, once at
            least ``1 / max_share`` of them were seen.
    """

    def __init__(self, policy: str = "error", max_share: float = MAX_BAD_SHARE, total: int | None = None):
        self.policy = check_policy(policy)
        if not 0.0 <= max_share <= 1.0:
            raise ValueError(f"max_bad_share must be in [0, 1], got {max_share}")
        self.max_share = max_share
        self.total = total
        self.seen = 0  # cuts read (or tried), counted per pass of the first epoch
        self.skipped: dict[str, dict] = {}
        self.path: Path | None = None
        self._written = 0

    def __len__(self) -> int:
        return len(self.skipped)

    def log_to(self, path: str | Path) -> None:
        """Append skipped cuts to ``path`` (JSON lines), starting with those recorded so far."""
        self.path = Path(path)
        self._written = 0
        if self.skipped or self.path.exists():
            self._flush()

    def _flush(self) -> None:
        if self.path is None:
            return
        new = list(self.skipped.values())[self._written:]
        if not new and self.path.exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        known = set()
        if self.path.exists():  # a resumed run: keep what the killed run wrote, add only new cuts
            known = {json.loads(line)["cut"] for line in self.path.read_text().splitlines() if line.strip()}
        with open(self.path, "a") as f:
            for rec in new:
                if rec["cut"] not in known:
                    f.write(json.dumps(rec) + "\n")
        self._written = len(self.skipped)

    def record(self, records: list[dict], tried: int = 0) -> None:
        """Note ``tried`` cuts read and ``records`` skipped; raises past the share limit."""
        self.seen += tried
        new = [r for r in records if r["cut"] not in self.skipped]
        for r in new:
            self.skipped[r["cut"]] = r
            log.warning("skipping cut %s: %s", r["cut"], r["reason"])
        if new:
            self._flush()
        self.check_share()

    def check_share(self) -> None:
        n = len(self.skipped)
        if n == 0:
            return
        total = self.total
        if total is None:
            if self.seen < 1.0 / max(self.max_share, 1e-9):
                return
            total = self.seen
        if n > self.max_share * total:
            where = f" (listed in {self.path})" if self.path is not None else ""
            raise BadAudioShareError(
                f"skipped {n} of {total} cuts ({100.0 * n / total:.1f} %){where}, more than the allowed "
                f"{100.0 * self.max_share:g} % (max_bad_share): the corpus or its manifest is broken, not one file. "
                f"Run `s3kit data check MANIFEST --out CLEAN` to list every bad file and write a manifest without them, "
                f"or raise max_bad_share. First skipped: {next(iter(self.skipped.values()))['reason']}"
            )


def skipped_path(out_dir: str | Path, rank: int = 0) -> Path:
    """``OUT/skipped_audio.jsonl`` (rank 0) or ``OUT/skipped_audio.rank<r>.jsonl`` (other DDP ranks)."""
    name = SKIPPED_FILE if rank == 0 else SKIPPED_FILE.replace(".jsonl", f".rank{rank}.jsonl")
    return Path(out_dir) / name


def world_size() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("WORLD_SIZE", "1"))


def usable_cuts(cuts, policy: str = "error", max_share: float = MAX_BAD_SHARE, log: str | Path | None = None):
    """``cuts`` without the unusable ones (each decoded once), for analyses that must see the same
    cuts in every model (SpEAT stimuli); under ``error`` the first bad cut raises."""
    from lhotse import CutSet

    bad = BadAudio(policy, max_share, total=len(cuts))
    if log is not None:
        bad.log_to(log)
    kept = []
    for cut in cuts:
        audio, record = try_load(cut, policy)
        bad.record([record] if record else [], tried=1)
        if audio is not None:
            kept.append(cut)
    return CutSet.from_cuts(kept)
