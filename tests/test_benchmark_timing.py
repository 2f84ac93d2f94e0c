"""The benchmarks' shared timing protocol (benchmarks/_timing.py)."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _timing import interleaved, ratio  # noqa: E402


def test_interleaved_alternates_order_and_skips_warmup():
    calls = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    # warm-up round -1 (odd: reversed), then rounds 0 (a, b), 1 (b, a), 2 (a, b)
    assert calls == ["b", "a", "a", "b", "b", "a", "a", "b"]
    assert [len(v) for v in times.values()] == [3, 3]


def test_ratio_is_paired_per_round():
    slow, fast = [2.0, 4.0, 3.0, 6.0], [1.0, 2.0, 2.0, 2.0]  # per-round ratios 2, 2, 1.5, 3
    s = ratio(slow, fast)
    assert s["median"] == pytest.approx(2.0) and (s["min"], s["max"]) == (1.5, 3.0) and s["n"] == 4
    geo = math.exp(sum(map(math.log, [2, 2, 1.5, 3])) / 4)
    assert s["lo"] < geo < s["hi"]
    assert s["orders"] == (pytest.approx(1.75), pytest.approx(2.5))  # rounds 0, 2 and 1, 3
