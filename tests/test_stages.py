"""The stage scheduler (s3kit.stages): dependencies, reuse, side-by-side workers, failures."""

import json
import os
import time

import pytest

from s3kit.stages import Job, run_jobs


def add(a, b):
    return {"sum": a + b, "pid": os.getpid()}


def slow_pid(seconds):
    t0 = time.time()
    time.sleep(seconds)
    return {"pid": os.getpid(), "start": t0, "end": time.time()}


def draw():
    import torch

    return {"x": torch.rand(3).tolist()}


def boom():
    raise ValueError("broken on purpose")


def test_jobs_run_after_their_dependencies_and_are_reused(tmp_path):
    jobs = [Job("c", {"k": 3}, add, lambda r: (r["a"]["sum"], r["b"]["sum"]), deps=("a", "b")),
            Job("a", {"k": 1}, add, (1, 2)),
            Job("b", {"k": 2}, add, (10, 20), cost=5)]
    log = []
    out = run_jobs(tmp_path, jobs, log.append)
    assert out["c"]["sum"] == 33
    started = [line.split("]")[0][1:] for line in log if line.endswith("running")]
    assert started == ["b", "a", "c"]  # the costlier ready job first, c only after both
    assert json.loads((tmp_path / "stages" / "c.json").read_text())["result"]["sum"] == 33
    log.clear()
    again = run_jobs(tmp_path, jobs, log.append)
    assert again == out and all("reusing" in line for line in log) and len(log) == 3
    jobs[1] = Job("a", {"k": "changed"}, add, (2, 2))  # new settings: a reruns, c reads its new result
    log.clear()
    assert run_jobs(tmp_path, jobs, log.append)["c"]["sum"] == 34
    assert sum(line.endswith("running") for line in log) == 2


def test_a_cheap_job_that_others_wait_for_starts_before_a_costly_leaf(tmp_path):
    jobs = [Job("leaf", {}, add, (0, 0), cost=10), Job("student", {}, add, (0, 1), cost=2),
            Job("probe", {}, add, (0, 2), deps=("student",), cost=9)]
    log = []
    run_jobs(tmp_path, jobs, log.append)
    assert [line.split("]")[0][1:] for line in log] == ["student", "student", "leaf", "leaf", "probe", "probe"]


def test_two_workers_run_independent_jobs_side_by_side_with_the_same_random_state(tmp_path):
    jobs = [Job(f"s{k}", {}, slow_pid, (1.0,)) for k in range(2)] + [Job(f"d{k}", {"k": k}, draw) for k in range(2)]
    out = run_jobs(tmp_path, jobs, lambda s: None, workers=2, seed=7)
    s0, s1 = out["s0"], out["s1"]
    assert s0["pid"] != s1["pid"] != os.getpid()
    assert max(s0["start"], s1["start"]) < min(s0["end"], s1["end"])  # overlapping in time
    serial = run_jobs(tmp_path / "serial", jobs, lambda s: None, workers=1, seed=7)
    # every job starts from the seed: the same numbers in a fresh worker, a reused worker or in-process
    assert out["d0"]["x"] == out["d1"]["x"] == serial["d0"]["x"]
    assert (tmp_path / "logs" / "s0.log").exists()


def test_a_failing_job_lets_the_running_one_finish_and_blocks_its_dependants(tmp_path):
    jobs = [Job("bad", {}, boom, cost=2), Job("slow", {}, slow_pid, (0.5,)),
            Job("after", {}, add, (1, 1), deps=("bad",))]
    log = []
    with pytest.raises(ValueError, match="broken on purpose"):
        run_jobs(tmp_path, jobs, log.append, workers=2)
    assert (tmp_path / "stages" / "slow.json").exists()  # kept for the rerun
    assert not (tmp_path / "stages" / "after.json").exists() and not (tmp_path / "stages" / "bad.json").exists()
    assert any("[bad] failed: ValueError" in line for line in log)


def test_unknown_dependencies_and_cycles_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dependencies"):
        run_jobs(tmp_path, [Job("a", {}, add, (1, 1), deps=("nope",))])
    with pytest.raises(ValueError, match="cycle"):
        run_jobs(tmp_path, [Job("a", {}, add, (1, 1), deps=("b",)), Job("b", {}, add, (1, 1), deps=("a",))])
