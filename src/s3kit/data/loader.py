"""Batches of waveforms from a lhotse CutSet, sized by total audio duration.

Dimension legend: ``B`` batch, ``S`` samples.

Batches hold up to ``max_duration`` seconds of audio, counted as lhotse and fairseq count it:
utterances × the longest one (padding included), and optionally at most ``max_cuts``
utterances. lhotse's ``DynamicBucketingSampler`` groups cuts of similar length, so memory stays
flat whatever the length spread and little compute is spent on padding. Where the training
step crops every utterance to at most ``length_cap`` seconds (``crop`` here, or a method's own
crop), batches are sized by those cropped lengths, as fairseq sizes by
``min(size, max_sample_size)``: sizing by the full lengths would give fewer, shorter-than-planned
items per batch. Under ``torchrun`` the sampler shards cuts across ranks by itself.

A cut whose audio is unusable stops the loader (``on_bad_audio="error"``) or is dropped from its
batch (``"skip"``, :mod:`s3kit.data.badaudio`); a batch whose every cut is bad is not yielded.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from s3kit.audio import MIN_SAMPLES, SAMPLE_RATE, AudioError, check_waveform
from s3kit.data.badaudio import MAX_BAD_SHARE, BadAudio, check_policy, try_load, world_size


@dataclass
class AudioBatch:
    """``wavs [B, S]`` float32 zero-padded, ``lengths [B]`` samples, the cuts and their ids;
    ``skipped``: records of the sampler's cuts dropped as bad audio (``on_bad_audio="skip"``)."""

    wavs: Tensor
    lengths: Tensor
    cuts: list
    ids: list[str]
    skipped: list[dict] = dataclasses.field(default_factory=list)

    def to(self, device) -> "AudioBatch":
        return AudioBatch(self.wavs.to(device), self.lengths.to(device), self.cuts, self.ids, self.skipped)

    def __len__(self) -> int:
        return len(self.ids)


def _cut_seed(seed: int, epoch: int, cut_id: str) -> int:
    # stable across processes (Python's str hash is salted per process)
    return zlib.crc32(f"{seed}:{epoch}:{cut_id}".encode())


def _check_header(rec, source: str) -> None:
    """The file must be what the manifest says: lhotse would resample a file of another rate and read
    one channel of a file with more, so a stale manifest would pass unnoticed."""
    import soundfile as sf

    path = Path(rec.sources[0].source)
    if not path.is_file():
        raise AudioError(f"{source}: no such file" if not path.exists() else f"{source}: not a regular file")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return  # not a libsndfile format (lhotse may read it another way); load_audio reports failures
    if info.samplerate != rec.sampling_rate:
        raise AudioError(f"{source}: the file is {info.samplerate} Hz but the manifest says {rec.sampling_rate} Hz; "
                         f"re-create the manifest from the files")
    want = len(rec.sources[0].channels)
    if info.channels != want:
        raise AudioError(f"{source}: the file has {info.channels} channel(s) but the manifest says {want}; "
                         f"re-create the manifest from the files")


def load_cut_audio(cut, min_samples: int = MIN_SAMPLES) -> np.ndarray:
    """A cut's audio as float32 mono 16 kHz ``[S]``, with errors that name the source file."""
    source = cut.id
    rec = getattr(cut, "recording", None)
    if rec is not None and rec.sources:
        source = f"{rec.sources[0].source} (cut {cut.id})"
    if rec is not None and rec.sources and rec.sources[0].type == "file":
        _check_header(rec, source)  # against the manifest's own rate, before resampling rewrites it
    if cut.sampling_rate != SAMPLE_RATE:
        cut = cut.resample(SAMPLE_RATE)
    try:
        audio = cut.load_audio()
    except AudioError:
        raise
    except Exception as e:  # lhotse wraps decoder errors in several types
        raise AudioError(f"{source}: unreadable audio ({type(e).__name__}: {e})") from e
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=0)  # lhotse returns [C, S]
    return check_waveform(audio, source, min_samples)


class AudioDataset(torch.utils.data.Dataset):
    """Maps a CutSet (one sampler batch) to an :class:`AudioBatch`; crops long cuts when ``crop`` is set."""

    def __init__(self, crop: float | None = None, random_crop: bool = True, seed: int = 0, on_bad_audio: str = "error"):
        self.crop = crop
        self.random_crop = random_crop
        self.seed = seed
        self.epoch = 0
        self.on_bad_audio = check_policy(on_bad_audio)

    def __getitem__(self, cuts) -> AudioBatch:
        wavs, ids, kept, skipped = [], [], [], []
        for cut in cuts:
            if self.crop is not None and cut.duration > self.crop:
                start = 0.0
                if self.random_crop:
                    rng = np.random.default_rng(_cut_seed(self.seed, self.epoch, cut.id))
                    start = float(rng.uniform(0.0, cut.duration - self.crop))
                cut = cut.truncate(offset=start, duration=self.crop, preserve_id=True)
            audio, bad = try_load(cut, self.on_bad_audio)
            if bad is not None:
                skipped.append(bad)
                continue
            wavs.append(torch.from_numpy(audio))
            ids.append(cut.id)
            kept.append(cut)
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long)
        padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True) if wavs else torch.zeros(0, 0)
        return AudioBatch(padded, lengths, kept, ids, skipped)


def _capped_constraint(max_duration: float, max_cuts: int | None, length_cap: float):
    """lhotse's ``TimeConstraint`` (utterances × longest <= ``max_duration``, at most ``max_cuts``)
    with each cut counted as ``min(duration, length_cap)`` seconds."""
    from lhotse.dataset.sampling.base import TimeConstraint

    @dataclass
    class CappedTimeConstraint(TimeConstraint):
        length_cap: float = float("inf")

        def add(self, example) -> None:
            if self.max_duration is not None:
                d = self.measure_length(example)
                self.current += d
                self.longest_seen = max(self.longest_seen, d)
            self.num_cuts += 1

        def measure_length(self, example) -> float:
            return min(example.duration, self.length_cap)

    return CappedTimeConstraint(max_duration=max_duration, max_cuts=max_cuts, length_cap=length_cap)


class AudioLoader:
    """Iterable over :class:`AudioBatch`; each ``iter()`` is one epoch (the epoch counter advances).

    ``bad_audio`` (:class:`~s3kit.data.badaudio.BadAudio`) holds the policy for unusable cuts and
    what was skipped; ``policy_set`` is False when the caller left the policy to the consumer (the
    trainer then applies ``TrainConfig.on_bad_audio``).
    """

    def __init__(self, cuts, max_duration: float, shuffle: bool, seed: int, max_cuts: int | None,
                 crop: float | None, drop_last: bool, num_workers: int, num_buckets: int,
                 length_cap: float | None = None, on_bad_audio: str | None = None,
                 max_bad_share: float = MAX_BAD_SHARE):
        from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler

        self.cuts = cuts
        self.dataset = AudioDataset(crop=crop, random_crop=shuffle, seed=seed)
        self.policy_set = on_bad_audio is not None
        try:  # this process's share of the cuts: lhotse shards them across DDP ranks
            total = max(1, len(cuts) // world_size())
        except TypeError:
            total = None
        self.bad_audio = BadAudio("error", max_bad_share, total)
        self.set_bad_audio(on_bad_audio or "error", max_bad_share)
        kw = dict(max_duration=max_duration, max_cuts=max_cuts, shuffle=shuffle, drop_last=drop_last, seed=seed)
        if shuffle:
            try:  # an eager CutSet knows its size; a lazy one (CutSet.from_jsonl_lazy) does not
                num_buckets = max(1, min(num_buckets, len(cuts) // 2))
            except TypeError:
                pass
            if length_cap is not None:
                kw["constraint"] = _capped_constraint(max_duration, max_cuts, length_cap)
                kw.pop("max_duration"), kw.pop("max_cuts")
            with warnings.catch_warnings():  # lhotse warns that eager CutSets save no memory: fine here
                warnings.simplefilter("ignore", UserWarning)
                self.sampler = DynamicBucketingSampler(cuts, num_buckets=num_buckets, **kw)
        else:  # evaluation: keep manifest order so outputs line up with the manifest
            self.sampler = SimpleCutSampler(cuts, **kw)
            if length_cap is not None:
                self.sampler.time_constraint = _capped_constraint(max_duration, max_cuts, length_cap)
        self.num_workers = num_workers
        self.epoch = 0

    def set_bad_audio(self, policy: str, max_share: float = MAX_BAD_SHARE) -> None:
        """Set the policy for unusable cuts (before iterating: worker processes copy it)."""
        self.dataset.on_bad_audio = check_policy(policy)
        self.bad_audio.policy = policy
        self.bad_audio.max_share = max_share

    def batch_sizes(self, max_batches: int = 200) -> list[int]:
        """Utterances per batch of the first ``max_batches`` batches of an epoch (no audio is
        read): the effective batch size, for the logs."""
        self.sampler.set_epoch(self.epoch)
        return [len(b) for b in itertools.islice(iter(self.sampler), max_batches)]

    def describe(self, max_batches: int = 200) -> str:
        """``"12.0 utterances per batch (min 3, max 12) over the first 200 batches"``."""
        sizes = self.batch_sizes(max_batches)
        if not sizes:
            return "no batches"
        return (f"{sum(sizes) / len(sizes):.1f} utterances per batch (min {min(sizes)}, max {max(sizes)}) "
                f"over the first {len(sizes)} batches")

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        self.dataset.epoch = self.epoch
        first_epoch = self.epoch == 0
        self.epoch += 1
        if self.num_workers == 0:
            batches = (self.dataset[batch_cuts] for batch_cuts in self.sampler)
        else:
            batches = torch.utils.data.DataLoader(
                self.dataset, sampler=self.sampler, batch_size=None, num_workers=self.num_workers,
                persistent_workers=False,
            )
        for batch in batches:
            # recorded here, in the main process, so the count survives worker processes
            self.bad_audio.record(batch.skipped, tried=(len(batch) + len(batch.skipped)) if first_epoch else 0)
            if len(batch):
                yield batch


def make_loader(
    cuts,
    max_duration: float = 60.0,
    shuffle: bool = True,
    seed: int = 0,
    max_cuts: int | None = None,
    crop: float | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
    num_buckets: int = 10,
    on_bad_audio: str | None = None,
    max_bad_share: float = MAX_BAD_SHARE,
    skipped_log: str | Path | None = None,
    length_cap: float | None = None,
) -> AudioLoader:
    """Duration-batched loader over ``cuts`` (a CutSet or a manifest path).

    Args:
        max_duration: seconds of audio per batch (utterances × the longest, after cropping).
        shuffle: bucket by length and shuffle (training); False keeps manifest order (evaluation).
        crop: cut utterances longer than this many seconds to a (seeded, random when shuffling) window.
        max_cuts: cap on utterances per batch.
        on_bad_audio: ``"error"`` stops at an unusable cut; ``"skip"`` drops it (see
            :mod:`s3kit.data.badaudio`). None: ``"error"``, unless the loader feeds
            :func:`s3kit.train.trainer.train`, which applies ``TrainConfig.on_bad_audio``.
        max_bad_share: with ``"skip"``, stop once more than this share of the cuts was skipped.
        skipped_log: list skipped cuts in this JSON-lines file (the trainer sets
            ``out_dir/skipped_audio.jsonl`` itself).
        length_cap: size batches as if every utterance were cropped to at most this many seconds
            (default ``crop``): for a method that crops its batches itself.
    """
    from s3kit.data.manifest import load_cuts

    if isinstance(cuts, (str, Path)):
        cuts = load_cuts(cuts)
    if crop is not None:
        if crop * SAMPLE_RATE < MIN_SAMPLES:
            raise ValueError(f"crop={crop} s is shorter than one analysis window")
        if crop > max_duration:
            raise ValueError(f"crop={crop} s is longer than max_duration={max_duration} s")
        length_cap = crop if length_cap is None else min(length_cap, crop)
    if length_cap is not None and length_cap <= 0:
        raise ValueError(f"length_cap must be > 0 s, got {length_cap}")
    longest = min(max((c.duration for c in cuts), default=0.0), length_cap or float("inf"))
    if longest > max_duration:
        raise ValueError(
            f"max_duration={max_duration} s is shorter than the longest utterance ({longest:.1f} s); "
            f"raise max_duration or set crop"
        )
    loader = AudioLoader(cuts, max_duration, shuffle, seed, max_cuts, crop, drop_last, num_workers, num_buckets,
                         length_cap, on_bad_audio, max_bad_share)
    if skipped_log is not None:
        loader.bad_audio.log_to(skipped_log)
    return loader


# ----------------------------------------------------------------------------- inference batching


@dataclass(frozen=True)
class BatchPlan:
    """How inference over variable-length audio is batched (see :func:`inference_plan`).

    max_duration: seconds of audio per batch (a longer utterance goes alone).
    max_cuts: utterances per batch (1: one utterance at a time, no padding).
    """

    device: str
    max_duration: float
    max_cuts: int | None

    def describe(self) -> str:
        if self.max_cuts == 1:
            return f"{self.device}: one utterance per batch (no padding)"
        return f"{self.device}: length-sorted batches of <= {self.max_duration:g} s of audio"


def inference_plan(device, max_duration: float = 120.0, max_cuts: int | None = None,
                   cpu_batch_seconds: float | None = None) -> BatchPlan:
    """The batching for inference on ``device``, by this rule:

    * CPU: one utterance per batch. Measured on a 2-core CPU (issue 18, ``benchmarks/extract.py``):
      batches of even length-sorted utterances run slower than the utterances one at a time (a
      batch's activations leave the cache: HuBERT's CNN at 0.83x of the loop with 8 s of audio
      per batch, 0.39x with 60 s; a 4-layer, 192-wide HuBERT with a 64-channel CNN still at
      0.94x with 16 s), and one utterance has no padding.
    * CPU, for an upstream that sets ``cpu_batch_seconds`` (s3kit's small fbank / log-mel models:
      :attr:`s3kit.upstream.base.Upstream.cpu_batch_seconds`): length-sorted batches of up to
      that many seconds (or ``max_duration`` if shorter).
    * CUDA (any non-CPU device): length-sorted batches of up to ``max_duration`` seconds, which
      keep the device busy with little padding.

    ``max_cuts`` overrides the utterances per batch on any device.
    """
    kind = torch.device(device).type
    if max_cuts is None and kind == "cpu":
        if cpu_batch_seconds:
            return BatchPlan(device=str(device), max_duration=min(float(max_duration), float(cpu_batch_seconds)),
                             max_cuts=None)
        max_cuts = 1
    return BatchPlan(device=str(device), max_duration=float(max_duration), max_cuts=max_cuts)


def cpu_batch_seconds_of(model) -> float | None:
    """The model's ``cpu_batch_seconds`` (None when it has none)."""
    return getattr(model, "cpu_batch_seconds", None)


@dataclass
class PaddingStats:
    """Samples of real audio and of padding over the batches of :func:`sorted_batches`."""

    audio: int = 0
    padding: int = 0
    batches: int = 0

    @property
    def share(self) -> float:
        """Fraction of the batched samples that is padding."""
        total = self.audio + self.padding
        return self.padding / total if total else 0.0


def sorted_batches(cuts, plan: BatchPlan, stats: PaddingStats | None = None, bad_audio: BadAudio | None = None):
    """Every cut once, longest first, grouped into :class:`AudioBatch` es under ``plan``.

    Neighbours in length share a batch, so padding is small; the caller restores the manifest
    order from ``batch.ids``. Longest first: a batch that does not fit in memory fails at once.
    No lhotse sampler, which would shard the cuts across ranks under ``torchrun``.
    ``bad_audio`` (:class:`~s3kit.data.badaudio.BadAudio`): what to do with unusable cuts (None:
    stop at the first); with ``skip`` they are recorded there and a batch keeps only the good
    ones (a batch with none left is still yielded, empty, so callers can count progress).
    """
    order = sorted(cuts, key=lambda c: (-c.duration, c.id))
    dataset = AudioDataset(on_bad_audio=bad_audio.policy if bad_audio is not None else "error")
    group, seconds = [], 0.0
    for cut in order:
        full = plan.max_cuts is not None and len(group) >= plan.max_cuts
        if group and (full or seconds + cut.duration > plan.max_duration):
            yield _collated(dataset, group, stats, bad_audio)
            group, seconds = [], 0.0
        group.append(cut)
        seconds += cut.duration
    if group:
        yield _collated(dataset, group, stats, bad_audio)


def _collated(dataset: AudioDataset, group: list, stats: PaddingStats | None, bad_audio: BadAudio | None) -> AudioBatch:
    batch = dataset[group]
    if bad_audio is not None:
        bad_audio.record(batch.skipped, tried=len(group))
    if stats is not None and len(batch):
        real = int(batch.lengths.sum())
        stats.audio += real
        stats.padding += batch.wavs.numel() - real
        stats.batches += 1
    return batch
