"""Speed and size of an upstream: parameters, MACs per second of audio, CPU latency, real-time factor.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions;
one MAC = two FLOPs), so they are exact for the model as it runs, pruned tensors included.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from s3kit.audio import SAMPLE_RATE


@dataclass
class Efficiency:
    params: int  # all parameters of the upstream
    macs_per_second: float  # multiply-accumulates per second of input audio
    latency_ms: float  # median wall time for `seconds` of audio, batch 1
    rtf: float  # real-time factor = latency / audio duration (lower is faster)
    seconds: float
    threads: int

    def to_dict(self) -> dict:
        return asdict(self)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(upstream: nn.Module, seconds: float = 1.0) -> float:
    """MACs of one forward pass over ``seconds`` of audio, divided by ``seconds``.

    Under ``no_grad``, not ``inference_mode``: FlopCounterMode inside inference mode fails on
    weight-norm parametrised convolutions (every transformers positional conv)."""
    from torch.utils.flop_counter import FlopCounterMode

    wav = torch.randn(1, int(seconds * SAMPLE_RATE)) * 0.1
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        upstream(wav)
    return counter.get_total_flops() / 2 / seconds


def measure(upstream: nn.Module, seconds: float = 4.0, repeats: int = 5, threads: int | None = None) -> Efficiency:
    """Median CPU latency of ``upstream`` on ``seconds`` of noise (after one warm-up run)."""
    upstream = upstream.eval().to("cpu")
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        wav = torch.randn(1, int(seconds * SAMPLE_RATE)) * 0.1
        times = []
        with torch.inference_mode():
            upstream(wav)  # warm-up
            for _ in range(repeats):
                t0 = time.perf_counter()
                upstream(wav)
                times.append(time.perf_counter() - t0)
        times.sort()
        latency = times[len(times) // 2]
        return Efficiency(
            params=count_parameters(upstream),
            macs_per_second=count_macs(upstream, 1.0),
            latency_ms=latency * 1000,
            rtf=latency / seconds,
            seconds=seconds,
            threads=torch.get_num_threads(),
        )
    finally:
        torch.set_num_threads(old)
