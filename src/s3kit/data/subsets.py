"""Seeded subsets and splits of a CutSet: stratified fractions (the 1 % / 5 % / 10 % low-resource
settings) and speaker-disjoint train/dev/test splits.

Both keep the input order of the cuts they keep, and the same ``seed`` always picks the same cuts.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from s3kit.data.manifest import get_label


def _label(cut, key: str):
    value = get_label(cut, key)
    if value is None:
        raise ValueError(f"cut {cut.id!r} has no {key!r} label; stratify by a key every cut has (or key=None)")
    return value if isinstance(value, (str, int, float)) else repr(value)  # dicts (intent) -> a hashable form


def stratified_quota(counts: dict, fraction: float) -> dict:
    """How many items to keep per class: ``round(fraction * N)`` in total, shared between classes
    in proportion to their size by the largest-remainder method (exact when ``fraction * n_c`` is whole).

    counts: ``{class: n_c}``. Every class with ``fraction * n_c >= 0.5`` keeps at least its floor.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction}: must be in (0, 1]")
    total = int(round(fraction * sum(counts.values())))
    exact = {c: fraction * n for c, n in counts.items()}
    quota = {c: int(np.floor(v)) for c, v in exact.items()}
    # Hand the remaining items to the largest remainders; ties go to the larger class, then by name.
    order = sorted(counts, key=lambda c: (-(exact[c] - quota[c]), -counts[c], str(c)))
    for c in order[: total - sum(quota.values())]:
        quota[c] += 1
    return quota


def stratified_subset(cuts, fraction: float, key: str | None = "keyword", seed: int = 0):
    """A seeded ``fraction`` of ``cuts`` with each ``key`` class kept in proportion.

    ``key=None`` draws a plain random subset. Returns a CutSet of ``round(fraction * len(cuts))`` cuts.
    """
    from lhotse import CutSet

    cuts = list(cuts)
    groups: dict = defaultdict(list)
    for i, cut in enumerate(cuts):
        groups[_label(cut, key) if key else ""].append(i)
    quota = stratified_quota({c: len(ix) for c, ix in groups.items()}, fraction)
    rng = np.random.default_rng(seed)
    keep = []
    for c in sorted(groups, key=str):  # a fixed class order so the draw depends on the seed only
        ix = groups[c]
        keep.extend(np.asarray(ix)[rng.permutation(len(ix))[: quota[c]]].tolist())
    return CutSet.from_cuts(cuts[i] for i in sorted(keep))


def speaker_disjoint_split(cuts, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, key: str = "speaker"):
    """Split ``cuts`` into ``len(fractions)`` CutSets that share no speaker.

    Speakers are shuffled with ``seed`` and each goes, whole, to the split furthest below its
    target cut count (``fraction * N``), so the split sizes approach ``fractions``. Raises when a
    split with a positive fraction would get no speaker (too few speakers).
    """
    from lhotse import CutSet

    fractions = np.asarray(fractions, dtype=np.float64)
    if (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"fractions={fractions.tolist()}: must be >= 0 and sum to 1")
    cuts = list(cuts)
    by_speaker: dict = defaultdict(list)
    for i, cut in enumerate(cuts):
        by_speaker[_label(cut, key)].append(i)
    speakers = sorted(by_speaker, key=str)
    speakers = [speakers[i] for i in np.random.default_rng(seed).permutation(len(speakers))]
    target = fractions * len(cuts)
    counts = np.zeros(len(fractions))
    members: list[list[int]] = [[] for _ in fractions]
    for spk in speakers:
        deficit = np.where(fractions > 0, target - counts, -np.inf)
        k = int(np.argmax(deficit))
        members[k].extend(by_speaker[spk])
        counts[k] += len(by_speaker[spk])
    empty = [k for k in range(len(fractions)) if fractions[k] > 0 and not members[k]]
    if empty:
        raise ValueError(
            f"{len(speakers)} speakers cannot fill {len(fractions)} speaker-disjoint splits {fractions.tolist()}; "
            f"split(s) {empty} got none. Use fewer splits or more speakers."
        )
    return tuple(CutSet.from_cuts(cuts[i] for i in sorted(m)) for m in members)
