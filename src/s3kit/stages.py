"""Resumable stages and a small scheduler that runs independent ones side by side.

A *stage* is a named step whose JSON-able result is stored under ``RUN/stages/<name>.json``
together with the settings that made it; a later run with the same settings reuses it
(:class:`Stage`, :func:`run_stage`). A :class:`Job` is a stage with dependencies;
:func:`run_jobs` starts every job whose dependencies have finished on ``workers`` processes
(``workers=1``: one after the other in this process), the ready job with the costliest chain of
jobs waiting for it first (its critical path, :func:`_ranks`). The demo's models are tiny and a
step of theirs runs fastest on one thread, so the demo uses a second core with a second process.

Jobs run in worker processes forked from this one (spawned once CUDA is initialised here, as
a forked child cannot use it; spawning re-imports the ``__main__`` script, which then needs the
``if __name__ == "__main__":`` guard): ``fn`` must be a module-level function and its arguments
picklable; each job starts from the same random state (``seed``) whether it runs alone or
beside another, so a run's numbers do not depend on ``workers``. A worker's output goes to
``RUN/logs/<name>.log``. When a job fails, the running ones finish (their results are kept
for the rerun), nothing new starts, and the error is raised.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


class Stage:
    """A named step whose result (a JSON-able dict) is stored under RUN/stages/<name>.json."""

    def __init__(self, run: Path, name: str, settings: dict):
        self.path = Path(run) / "stages" / f"{name}.json"
        self.name = name
        self.settings = settings

    def done(self) -> dict | None:
        if self.path.exists():
            data = json.loads(self.path.read_text())
            if data.get("settings") == json.loads(json.dumps(self.settings)):
                return data["result"]
        return None

    def finish(self, result: dict, seconds: float) -> dict:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": self.settings, "result": result, "seconds": round(seconds, 1)}, indent=2))
        tmp.replace(self.path)
        return json.loads(json.dumps(result))  # what a rerun reads back (tuples become lists)


def prepare_workdir(workdir: Path, settings: dict, log: Callable[[str], None], name: str) -> None:
    """Keep ``workdir`` when it was made with the same settings (an interrupted training resumes
    from its checkpoint), wipe it when the settings changed (so a trainer does not resume a
    finished run made with other settings)."""
    marker = workdir / ".stage_settings.json"
    wanted = json.dumps(settings, sort_keys=True)
    if workdir.exists() and (not marker.exists() or marker.read_text() != wanted):
        log(f"[{name}] settings changed: starting afresh in {workdir}")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    marker.write_text(wanted)


def run_stage(run: Path, name: str, settings: dict, fn: Callable[[], dict], log, workdir: Path | None = None) -> dict:
    """Run ``fn`` in this process unless the stage finished earlier with the same settings
    (``workdir``: see :func:`prepare_workdir`)."""
    stage = Stage(run, name, settings)
    cached = stage.done()
    if cached is not None:
        log(f"[{name}] done earlier, reusing {stage.path}")
        return cached
    if workdir is not None:
        prepare_workdir(workdir, settings, log, name)
    log(f"[{name}] running")
    t0 = time.perf_counter()
    result = fn()
    log(f"[{name}] finished in {time.perf_counter() - t0:.0f} s")
    return stage.finish(result, time.perf_counter() - t0)


@dataclass
class Job:
    """A stage with dependencies. ``args``: the arguments of ``fn``, or a function of the results
    of the finished jobs (``{name: result}``) that returns them, called when the job starts.
    ``cost``: rough seconds, only to order the ready jobs (:func:`_ranks`)."""

    name: str
    settings: dict
    fn: Callable[..., dict]
    args: tuple | Callable[[dict[str, Any]], tuple] = ()
    deps: tuple[str, ...] = ()
    workdir: Path | None = None
    cost: float = 1.0


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _call(fn: Callable, args: tuple, seed: int, threads: int | None, log_path: str | None) -> dict:
    """Run one job (in a worker process, or in this one): threads, random state, output file."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    _seed_everything(seed)
    if log_path is None:
        return fn(*args)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            return fn(*args)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _start_method() -> str:
    """``fork`` (fast; no ``__main__`` re-import), ``spawn`` once CUDA is initialised in this process."""
    import multiprocessing as mp

    import torch

    if "fork" in mp.get_all_start_methods() and not torch.cuda.is_initialized():
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no tqdm monitor thread whose lock a forked child could inherit held
        return "fork"
    return "spawn"


class _InProcess:
    """An executor that runs each job at submission, in this process (``workers=1``)."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(e)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def digest(value) -> str:
    """A short hash (12 hex digits) of a JSON-able ``value`` (keys sorted)."""
    import hashlib

    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _chained_settings(jobs: dict[str, Job], known: dict[str, Any]) -> dict[str, dict]:
    """Each job's stored settings: its own plus a digest of each dependency's (a given result's
    digest for the ``known`` ones), so a job reruns whenever anything upstream of it would."""
    out: dict[str, dict] = {}

    def chained(name: str, path: tuple[str, ...]) -> dict:
        if name in out:
            return out[name]
        if name in path:
            raise ValueError(f"run_jobs: dependency cycle among {sorted(path[path.index(name):])}")
        job = jobs[name]
        after = {d: digest(known[d]) if d not in jobs else digest(chained(d, (*path, name))) for d in job.deps}
        out[name] = {**job.settings, "after": after} if after else dict(job.settings)
        return out[name]

    for name in jobs:
        chained(name, ())
    return out


def _ranks(jobs: dict[str, Job]) -> dict[str, float]:
    """Each job's cost plus the costliest chain of jobs that wait for it (its critical path):
    the scheduler starts the ready job with the longest path first, so a student that the
    probes wait for goes before a probe of a model that is already there."""
    waiting: dict[str, list[str]] = {n: [] for n in jobs}
    for job in jobs.values():
        for d in job.deps:
            if d in waiting:
                waiting[d].append(job.name)
    rank: dict[str, float] = {}

    def of(name: str) -> float:
        if name not in rank:
            rank[name] = jobs[name].cost + max((of(w) for w in waiting[name]), default=0.0)
        return rank[name]

    for name in jobs:
        of(name)
    return rank


def run_jobs(run: Path, jobs: list[Job], log: Callable[[str], None] = print, workers: int = 1, seed: int = 0,
             threads: int | None = 1, results: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``jobs`` (each a :class:`Job`) respecting their ``deps``; ``results``: those already
    known (e.g. earlier stages run by hand), by name. Returns every job's result by name.

    A job is reused when its stage finished earlier with the same settings and the same settings
    upstream (:func:`_chained_settings`)."""
    import multiprocessing as mp

    results = dict(results or {})
    names = {j.name for j in jobs}
    if len(names) != len(jobs):
        raise ValueError("run_jobs: two jobs share a name")
    unknown = sorted({d for j in jobs for d in j.deps} - names - set(results))
    if unknown:
        raise ValueError(f"run_jobs: unknown dependencies {unknown}")
    pending = {j.name: j for j in jobs}
    settings = _chained_settings(pending, results)
    rank = _ranks(pending)
    parallel = workers > 1
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context(_start_method())) if parallel else _InProcess()
    running: dict[Future, tuple[Job, Stage, float]] = {}
    failure: BaseException | None = None
    try:
        while pending or running:
            progressed = True
            while progressed and failure is None:  # reuse finished stages, start ready ones
                progressed = False
                ready = sorted((j for j in pending.values() if all(d in results for d in j.deps)),
                               key=lambda j: -rank[j.name])
                for job in ready:
                    stage = Stage(run, job.name, settings[job.name])
                    cached = stage.done()
                    if cached is not None:
                        log(f"[{job.name}] done earlier, reusing {stage.path}")
                        results[job.name] = cached
                        del pending[job.name]
                        progressed = True
                        continue
                    if len(running) >= workers:
                        continue
                    if job.workdir is not None:
                        prepare_workdir(Path(job.workdir), settings[job.name], log, job.name)
                    args = job.args(results) if callable(job.args) else job.args
                    log_path = str(Path(run) / "logs" / f"{job.name}.log") if parallel else None
                    log(f"[{job.name}] running" + (f" (log: {log_path})" if log_path else ""))
                    del pending[job.name]
                    running[pool.submit(_call, job.fn, args, seed, threads, log_path)] = (job, stage, time.perf_counter())
                    progressed = True
            if not running:
                if failure is not None:
                    raise failure
                if pending:
                    raise RuntimeError(f"run_jobs: {sorted(pending)} cannot start")
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                job, stage, t0 = running.pop(future)
                try:
                    result = future.result()
                except BaseException as e:  # noqa: BLE001 - the others finish first, then it is raised
                    log(f"[{job.name}] failed: {type(e).__name__}: {e}"
                        + (f" (log: {Path(run) / 'logs' / f'{job.name}.log'})" if parallel else ""))
                    failure = failure or e
                    continue
                seconds = time.perf_counter() - t0
                results[job.name] = stage.finish(result, seconds)
                log(f"[{job.name}] finished in {seconds:.0f} s")
        return results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
