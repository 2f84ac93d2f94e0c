"""Find every unusable cut of a manifest before a long run (``s3kit data check``).

Each cut is decoded once (in parallel threads: libsndfile releases the GIL) and checked for:

========================  =====================================================================
problem                   meaning
========================  =====================================================================
``missing``               the recording's file does not exist
``unreadable``            libsndfile cannot open or decode it (corrupt or truncated stream)
``truncated``             the file ends before the cut does (fewer samples than the manifest says)
``empty``                 0 samples
``too_short``             fewer samples than ``min_duration`` (one model receptive field)
``non_finite``            NaN or Inf samples
``silent``                peak amplitude at or below ``silence_peak`` (all zeros by default)
``clipped``               more than ``max_clipped`` of the samples at full scale
``sample_rate``           the file's rate differs from the manifest's
``channels``              the file's channel count differs from the manifest's
``duration``              the file's length differs from the manifest's by more than ``duration_tolerance``
========================  =====================================================================

A cut with any problem is *bad*: :func:`check_cuts` lists it, ``--out`` writes the manifest
without it. Training runs skip such cuts by themselves (``on_bad_audio="skip"``,
:mod:`s3kit.data.badaudio`), but finding them up front costs one decoding pass, not a failed run.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from s3kit.audio import MIN_SAMPLES, SAMPLE_RATE, AudioError

PROBLEMS = ("missing", "unreadable", "truncated", "empty", "too_short", "non_finite", "silent", "clipped",
            "sample_rate", "channels", "duration")
CLIP_LEVEL = 0.999  # |x| at or above this (of full scale 1.0) counts as clipped: 16-bit full scale is 32767/32768


@dataclass(frozen=True)
class CheckConfig:
    min_duration: float = MIN_SAMPLES / SAMPLE_RATE  # seconds; one 25 ms window (raise it to a model's receptive field)
    silence_peak: float = 0.0  # a cut whose peak |x| is at most this is silent (0: all zeros)
    max_clipped: float = 0.01  # share of full-scale samples above which a cut counts as clipped
    duration_tolerance: float = 0.025  # seconds (lhotse's default tolerance for duration checks)

    def __post_init__(self):
        if self.min_duration < 0 or self.silence_peak < 0 or self.duration_tolerance < 0:
            raise ValueError("min_duration, silence_peak and duration_tolerance must be >= 0")
        if not 0.0 <= self.max_clipped <= 1.0:
            raise ValueError(f"max_clipped must be in [0, 1], got {self.max_clipped}")


@dataclass(frozen=True)
class Problem:
    cut: str
    file: str
    problem: str  # one of PROBLEMS
    reason: str


@dataclass
class CheckReport:
    """``problems``: every problem found, in manifest order; ``bad``: ids of cuts with any."""

    n_cuts: int
    seconds: float
    problems: list[Problem] = field(default_factory=list)

    @property
    def bad(self) -> list[str]:
        return list(dict.fromkeys(p.cut for p in self.problems))

    @property
    def clean(self) -> bool:
        return not self.problems

    def counts(self) -> Counter:
        return Counter(p.problem for p in self.problems)


def _file_of(cut) -> tuple[str | None, str]:
    """(path when the audio is a plain file, else None; a name for the report)."""
    rec = getattr(cut, "recording", None)
    if rec is None or not rec.sources:
        return None, cut.id
    src = rec.sources[0]
    return (src.source if src.type == "file" else None), str(src.source)


def check_cut(cut, cfg: CheckConfig = CheckConfig()) -> list[Problem]:
    """Every problem of one cut (an empty list for a good one); decodes its audio once."""
    path, name = _file_of(cut)
    found: list[Problem] = []

    def add(problem: str, reason: str) -> None:
        found.append(Problem(cut.id, name, problem, reason))

    if path is None:  # URL, memory or command sources: lhotse reads them; report what fails
        from s3kit.data.loader import load_cut_audio

        try:
            wav = load_cut_audio(cut, min_samples=1)[:, None]
        except AudioError as e:
            add("unreadable", str(e))
            return found
        sr, channels, file_frames = SAMPLE_RATE, None, None
    else:
        import soundfile as sf

        p = Path(path)
        if not p.is_file():
            add("missing", "no such file" if not p.exists() else "not a regular file")
            return found
        rec = cut.recording
        try:
            with sf.SoundFile(str(p)) as f:
                sr, channels, file_frames = f.samplerate, f.channels, f.frames
                start = int(round(cut.start * sr))
                want = int(round(cut.duration * sr))
                if start:
                    f.seek(min(start, file_frames))
                wav = f.read(frames=want, dtype="float32", always_2d=True)  # (S, C)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
            add("unreadable", f"libsndfile cannot decode it ({e}): the file is truncated or corrupt; re-encode or drop it")
            return found
        if sr != rec.sampling_rate:
            add("sample_rate", f"the file is {sr} Hz, the manifest says {rec.sampling_rate} Hz")
        if channels != len(rec.sources[0].channels):
            add("channels", f"the file has {channels} channel(s), the manifest says {len(rec.sources[0].channels)}")
        file_seconds = file_frames / sr
        if abs(file_seconds - rec.duration) > cfg.duration_tolerance:
            add("duration", f"the file lasts {file_seconds:.3f} s, the manifest says {rec.duration:.3f} s")
        if file_frames > 0 and len(wav) + int(round(cfg.duration_tolerance * sr)) < want:
            add("truncated", f"{len(wav)} of the cut's {want} samples could be read (the file ends at "
                             f"{file_seconds:.3f} s, the cut at {cut.end:.3f} s)")
    if wav.size == 0:
        add("empty", "0 samples")
        return found
    seconds = len(wav) / sr
    if seconds < cfg.min_duration:
        add("too_short", f"{seconds * 1000:.1f} ms is shorter than min_duration {cfg.min_duration * 1000:.1f} ms")
    finite = np.isfinite(wav)
    if not finite.all():
        add("non_finite", f"{int((~finite).sum())} NaN or Inf samples")
        wav = np.where(finite, wav, 0.0)
    peak = float(np.abs(wav).max())
    if peak <= cfg.silence_peak:
        add("silent", "all samples are zero" if peak == 0 else f"peak {peak:.2e} <= silence_peak {cfg.silence_peak}")
    clipped = float((np.abs(wav) >= CLIP_LEVEL).mean())
    if clipped > cfg.max_clipped:
        add("clipped", f"{100 * clipped:.1f} % of the samples are at full scale (max_clipped {100 * cfg.max_clipped:g} %)")
    return found


def check_cuts(cuts, cfg: CheckConfig = CheckConfig(), jobs: int = 4, progress: bool = True) -> CheckReport:
    """Check every cut of ``cuts`` (a CutSet or manifest path) with ``jobs`` threads."""
    from tqdm.auto import tqdm

    from s3kit.data.manifest import load_cuts

    if isinstance(cuts, (str, Path)):
        cuts = load_cuts(cuts)
    cuts = list(cuts)
    report = CheckReport(n_cuts=len(cuts), seconds=float(sum(c.duration for c in cuts)))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for found in tqdm(pool.map(lambda c: check_cut(c, cfg), cuts), total=len(cuts), desc="check",
                          unit="cut", disable=not progress):
            report.problems.extend(found)
    return report


def write_report(report: CheckReport, path: str | Path) -> Path:
    """``path``: one JSON line per problem ``{cut, file, problem, reason}``, written atomically."""
    from s3kit.checkpoint import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps(asdict(p)) + "\n" for p in report.problems))
    return path


def summary_table(report: CheckReport) -> str:
    """A markdown table: each problem kind, how many cuts have it, and a first example."""
    bad = len(report.bad)
    lines = [f"{report.n_cuts} cuts ({report.seconds / 3600:.2f} h) checked: {bad} bad, {report.n_cuts - bad} good", ""]
    if report.clean:
        return lines[0]
    lines += ["| problem | cuts | first cut | its file | reason |", "|---|---|---|---|---|"]
    first: dict[str, Problem] = {}
    for p in report.problems:
        first.setdefault(p.problem, p)
    counts = report.counts()
    for kind in PROBLEMS:
        if kind in counts:
            p = first[kind]
            lines.append(f"| {kind} | {counts[kind]} | {p.cut} | {p.file} | {p.reason} |")
    return "\n".join(lines)


def clean_cuts(cuts, report: CheckReport):
    """``cuts`` without the cuts ``report`` found bad."""
    from lhotse import CutSet

    bad = set(report.bad)
    return CutSet.from_cuts(c for c in cuts if c.id not in bad)
