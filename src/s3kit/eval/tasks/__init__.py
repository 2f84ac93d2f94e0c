"""SUPERB SD, SF and QbE and M2D-S's non-speech linear evaluation (ENV / MUS), one module each,
all callable like the other probes: ``run_probe(upstream, task, train, dev, test, cfg)``.

What ``train`` / ``dev`` / ``test`` mean per task:

* ``qbe``: ``train`` = the searched documents, ``dev`` / ``test`` = the query sets (zero-shot:
  nothing is trained; the dev set picks the layer);
* ``sd``, ``sf``, ``env``, ``mus``: the usual three splits.
"""

from __future__ import annotations

from s3kit.eval.probe import ProbeConfig

EXTRA_TASKS = ("qbe", "sd", "sf", "env", "mus")


def task_options(task: str):
    """The default options dataclass of one of :data:`EXTRA_TASKS` (``QbEConfig()``, ``SDConfig()``, ...)."""
    if task == "qbe":
        from s3kit.eval.tasks.qbe import QbEConfig

        return QbEConfig()
    if task == "sd":
        from s3kit.eval.tasks.sd import SDConfig

        return SDConfig()
    if task == "sf":
        from s3kit.eval.tasks.sf import SFConfig

        return SFConfig()
    if task in ("env", "mus"):
        from s3kit.eval.tasks.linear import LinearEvalConfig

        return LinearEvalConfig()
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(EXTRA_TASKS)}")


def run_task(upstream, task: str, train, dev, test, cfg: ProbeConfig = ProbeConfig(), options=None):
    """Run one of :data:`EXTRA_TASKS`; ``options`` is the task's own config dataclass
    (:class:`~s3kit.eval.tasks.qbe.QbEConfig`, ...; defaults when None). ``cfg.lr_sweep`` trains
    at every lr of ``cfg.lr_grid`` and keeps the best on dev (QbE has no learning rate)."""
    import dataclasses

    if cfg.lr_sweep and task != "qbe":
        runs = [_run_one(upstream, task, train, dev, test, dataclasses.replace(cfg, lr=lr, lr_sweep=False), options)
                for lr in cfg.lr_grid]
        best = runs[0]
        for r in runs[1:]:
            if (r.dev > best.dev) if r.higher_is_better else (r.dev < best.dev):
                best = r
        best.sweep = [{"lr": r.lr, "dev": r.dev, "test": r.test, "updates_to_best": r.updates_to_best} for r in runs]
        return best
    return _run_one(upstream, task, train, dev, test, cfg, options)


def _run_one(upstream, task: str, train, dev, test, cfg: ProbeConfig, options):
    if task == "qbe":
        from s3kit.eval.tasks.qbe import QbEConfig, run_qbe

        return run_qbe(upstream, train, dev, test, cfg, options or QbEConfig())
    if task == "sd":
        from s3kit.eval.tasks.sd import SDConfig, run_sd

        return run_sd(upstream, train, dev, test, cfg, options or SDConfig())
    if task == "sf":
        from s3kit.eval.tasks.sf import SFConfig, run_sf

        return run_sf(upstream, train, dev, test, cfg, options or SFConfig())
    if task in ("env", "mus"):
        from s3kit.eval.tasks.linear import LinearEvalConfig, run_linear_eval

        return run_linear_eval(upstream, task, train, dev, test, cfg, options or LinearEvalConfig())
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(EXTRA_TASKS)}")
