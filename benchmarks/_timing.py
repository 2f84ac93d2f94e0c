"""Shared timing for the benchmarks: interleaved rounds in alternating order, warm-up, paired ratios.

A round times every method once; odd rounds run them in reverse order, so load from other
processes and any drift (thermal, caches, allocator) falls on each method alike and no method
always goes first. The ratio of two methods is taken per round (paired) and summarised by its
median, its spread (min-max over rounds) and a 95 % interval of the geometric mean (t interval on
the log ratios).
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def describe_device(device: torch.device | str) -> str:
    """What the benchmark ran on, for its output."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return f"cpu ({cpu}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})"


def interleaved(methods: dict[str, Callable[[], object]], rounds: int, device="cpu", warmup: int = 1,
                round_fn: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each method over ``rounds`` rounds, after ``warmup`` untimed rounds.

    Each call should cover every shape the method is timed on (e.g. a pass over all batches), so
    the warm-up round meets each shape once. ``round_fn(r)`` runs before round ``r`` (untimed).
    """
    names = list(methods)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(-warmup, rounds):
        if round_fn is not None:
            round_fn(r)
        for name in names if r % 2 == 0 else names[::-1]:
            sync(device)
            t0 = time.perf_counter()
            methods[name]()
            sync(device)
            if r >= 0:
                times[name].append(time.perf_counter() - t0)
    return times


_T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23,
         12: 2.18, 15: 2.13, 20: 2.09, 30: 2.04}


def _t975(df: int) -> float:
    if df >= 30:
        return 1.96
    return _T975[max(k for k in _T975 if k <= df)]


def ratio(slow: list[float], fast: list[float]) -> dict:
    """Paired per-round ratio ``slow / fast``: median, min, max, 95 % interval of the geometric mean, n."""
    r = [a / b for a, b in zip(slow, fast)]
    logs = [math.log(x) for x in r]
    n = len(r)
    mean = statistics.fmean(logs)
    half = _t975(n - 1) * statistics.stdev(logs) / math.sqrt(n) if n > 1 else float("nan")
    return {"median": statistics.median(r), "min": min(r), "max": max(r), "lo": math.exp(mean - half),
            "hi": math.exp(mean + half), "n": n,
            # rounds in the given order / in reverse order: they agree within noise unless order matters
            "orders": (statistics.median(r[0::2]), statistics.median(r[1::2]) if n > 1 else float("nan"))}


def fmt_ratio(s: dict) -> str:
    return (f"{s['median']:.2f}x (median of {s['n']} paired rounds, range {s['min']:.2f}-{s['max']:.2f}, "
            f"95 % CI of the geometric mean {s['lo']:.2f}-{s['hi']:.2f}; by run order "
            f"{s['orders'][0]:.2f} / {s['orders'][1]:.2f})")


def fmt_time(t: list[float], scale: float = 1.0, unit: str = "s") -> str:
    """``median [min-max]`` of ``t * scale``."""
    def f(x: float) -> str:
        return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"
    return f"{f(statistics.median(t) * scale)} {unit} [{f(min(t) * scale)}-{f(max(t) * scale)}]"
