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
"""

from __future__ import annotations

import itertools
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from s3kit.audio import MIN_SAMPLES, SAMPLE_RATE, AudioError, check_waveform


@dataclass
class AudioBatch:
    """``wavs [B, S]`` float32 zero-padded, ``lengths [B]`` samples, the cuts and their ids."""

    wavs: Tensor
    lengths: Tensor
    cuts: list
    ids: list[str]

    def to(self, device) -> "AudioBatch":
        return AudioBatch(self.wavs.to(device), self.lengths.to(device), self.cuts, self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def _cut_seed(seed: int, epoch: int, cut_id: str) -> int:
    # stable across processes (Python's str hash is salted per process)
    return zlib.crc32(f"{seed}:{epoch}:{cut_id}".encode())


def load_cut_audio(cut, min_samples: int = MIN_SAMPLES) -> np.ndarray:
    """A cut's audio as float32 mono 16 kHz ``[S]``, with errors that name the source file."""
    if cut.sampling_rate != SAMPLE_RATE:
        cut = cut.resample(SAMPLE_RATE)
    source = cut.id
    rec = getattr(cut, "recording", None)
    if rec is not None and rec.sources:
        source = f"{rec.sources[0].source} (cut {cut.id})"
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

    def __init__(self, crop: float | None = None, random_crop: bool = True, seed: int = 0):
        self.crop = crop
        self.random_crop = random_crop
        self.seed = seed
        self.epoch = 0

    def __getitem__(self, cuts) -> AudioBatch:
        wavs, ids, kept = [], [], []
        for cut in cuts:
            if self.crop is not None and cut.duration > self.crop:
                start = 0.0
                if self.random_crop:
                    rng = np.random.default_rng(_cut_seed(self.seed, self.epoch, cut.id))
                    start = float(rng.uniform(0.0, cut.duration - self.crop))
                cut = cut.truncate(offset=start, duration=self.crop, preserve_id=True)
            wavs.append(torch.from_numpy(load_cut_audio(cut)))
            ids.append(cut.id)
            kept.append(cut)
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long)
        padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
        return AudioBatch(padded, lengths, kept, ids)


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
    """Iterable over :class:`AudioBatch`; each ``iter()`` is one epoch (the epoch counter advances)."""

    def __init__(self, cuts, max_duration: float, shuffle: bool, seed: int, max_cuts: int | None,
                 crop: float | None, drop_last: bool, num_workers: int, num_buckets: int,
                 length_cap: float | None = None):
        from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler

        self.cuts = cuts
        self.dataset = AudioDataset(crop=crop, random_crop=shuffle, seed=seed)
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
        self.epoch += 1
        if self.num_workers == 0:
            for batch_cuts in self.sampler:
                yield self.dataset[batch_cuts]
            return
        loader = torch.utils.data.DataLoader(
            self.dataset, sampler=self.sampler, batch_size=None, num_workers=self.num_workers, persistent_workers=False
        )
        yield from loader


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
    length_cap: float | None = None,
) -> AudioLoader:
    """Duration-batched loader over ``cuts`` (a CutSet or a manifest path).

    Args:
        max_duration: seconds of audio per batch (utterances × the longest, after cropping).
        shuffle: bucket by length and shuffle (training); False keeps manifest order (evaluation).
        crop: cut utterances longer than this many seconds to a (seeded, random when shuffling) window.
        max_cuts: cap on utterances per batch.
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
    return AudioLoader(cuts, max_duration, shuffle, seed, max_cuts, crop, drop_last, num_workers, num_buckets,
                       length_cap)
