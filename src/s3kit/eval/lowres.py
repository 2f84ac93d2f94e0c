"""Low-resource probing with evidence (rewiring paper §3.3, Table 2): scores at fractions of a
task's training set, each with its 95 % interval, and each model against a reference (the model
before rewiring) per fraction with a paired test, Holm-adjusted over the fractions.

Dimension legend: ``N`` test items, ``S`` seeds, ``F`` training fractions.

A *row* is one probe run (:func:`low_resource`): ``{fraction, model, seed, task, metric,
higher_is_better, test, dev, updates_to_best, updates, num_train, lr, n, ci_low, ci_high}``, and
its per-item results (:func:`s3kit.eval.probe.predict`) either in the row as ``predictions`` or
given separately as dicts carrying ``fraction``, ``model`` and ``seed`` next to the item fields.

What each number comes with (SPEC "Evaluation: Evidence", :mod:`s3kit.eval.stats`):

* a score over several seeds: the mean with the t interval over the seeds' scores
  (:func:`~s3kit.eval.stats.seed_summary`), each seed's score listed; one seed: that run's
  interval over test items (Wilson for accuracy, utterance bootstrap for PER / WER);
* a model minus the reference at one fraction: paired on the same test items *and* seeds. One
  seed: :func:`~s3kit.eval.probe.compare_items` (accuracy: exact McNemar p, paired bootstrap
  interval). Several seeds: each item's results are pooled over the seeds (errors / attempts) and
  the items are resampled jointly for both models (paired utterance bootstrap), so the interval
  covers other test items with the seeds fixed; every seed's own comparison is kept too;
* the fractions form one family per (model, task): Holm-adjusted p, ``n.s.`` at 0.05.
"""

from __future__ import annotations

import dataclasses
import math

FRACTIONS = (0.01, 0.05, 0.1)  # rewiring paper §3.1: 1 %, 5 %, 10 % of each task's training set
ALPHA = 0.05  # a Holm-adjusted p at or above it is marked "n.s."


def low_resource(upstreams: dict, task: str, train, dev, test, fractions=FRACTIONS, probe_cfg=None,
                 seeds=(0,)) -> list[dict]:
    """Probe every upstream on ``task`` with each training ``fraction`` and seed: one row each
    (module docstring), the test score's ``n`` / ``ci_low`` / ``ci_high`` and per-item
    ``predictions`` included."""
    from s3kit.eval.probe import ProbeConfig, run_probe

    probe_cfg = probe_cfg if probe_cfg is not None else ProbeConfig()
    rows = []
    for fraction in fractions:
        for name, up in upstreams.items():
            for seed in seeds:
                r = run_probe(up, task, train, dev, test, dataclasses.replace(probe_cfg, fraction=fraction, seed=seed))
                rows.append({"fraction": fraction, "model": name, "seed": seed, "task": task, "metric": r.metric,
                             "higher_is_better": r.higher_is_better, "test": r.test, "dev": r.dev,
                             "updates_to_best": r.updates_to_best, "updates": r.updates, "num_train": r.num_train,
                             "lr": r.lr, "n": r.n, "ci_low": r.ci_low, "ci_high": r.ci_high,
                             "predictions": r.predictions})
    return rows


def _none(x):
    """NaN -> None, so summaries are strict JSON."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _key(fraction, model, task, seed) -> tuple:
    return float(fraction), str(model), task, int(seed)


def items_by_run(rows: list[dict], predictions=None) -> dict[tuple, list[dict]]:
    """``{(fraction, model, task, seed): [item, ...]}`` from the rows' own ``predictions`` and the
    separate per-item dicts ``predictions`` (each with ``fraction``, ``model``, ``seed`` and, when
    the rows hold several tasks, ``task``)."""
    out: dict[tuple, list[dict]] = {}
    tasks = {r["task"] for r in rows}
    for r in rows:
        if r.get("predictions"):
            out[_key(r["fraction"], r["model"], r["task"], r["seed"])] = list(r["predictions"])
    for item in predictions or ():
        missing = [k for k in ("fraction", "model", "seed") if k not in item]
        if missing:
            raise ValueError(f"low-resource predictions: an item lacks {missing}; each needs fraction, model and seed")
        task = item.get("task")
        if task is None:
            if len(tasks) != 1:
                raise ValueError(f"low-resource predictions: the rows hold tasks {sorted(tasks)}; each item needs 'task'")
            task = next(iter(tasks))
        out.setdefault(_key(item["fraction"], item["model"], task, item["seed"]), []).append(item)
    return out


def _run_interval(row: dict, items: list[dict] | None) -> tuple[float | None, float | None, int | None]:
    """One run's interval over test items: the row's own, else computed from its items."""
    from s3kit.eval.probe import score_interval

    if _none(row.get("ci_low")) is not None and _none(row.get("ci_high")) is not None and row.get("n"):
        return float(row["ci_low"]), float(row["ci_high"]), int(row["n"])
    if items:
        iv = score_interval(items)
        return iv.ci_low, iv.ci_high, iv.n
    return None, None, row.get("n") or None


def summarise_low_resource(rows: list[dict], predictions=None) -> list[dict]:
    """One entry per (fraction, model, task), in fraction order, models in first-seen order:
    ``{fraction, model, task, metric, higher_is_better, num_train, test, test_std, ci_low, ci_high,
    interval, n, n_seeds, per_seed, updates_to_best, updates_to_best_ci_low, updates_to_best_ci_high}``.

    ``test`` is the mean over seeds; ``ci_low`` / ``ci_high`` its 95 % interval: the t interval
    over seeds (``interval="seeds"``), or for one seed that run's interval over its ``n`` test items
    (``interval="items"``: Wilson / utterance bootstrap; None when neither the row nor per-item
    results give it). ``per_seed``: each seed's score with its own interval. ``test_std`` is the
    sample sd over seeds (None for one seed)."""
    from s3kit.eval.stats import metric_bounds, seed_summary

    by_run = items_by_run(rows, predictions)
    models = list(dict.fromkeys(r["model"] for r in rows))
    tasks = sorted({r["task"] for r in rows})
    out = []
    for fraction in sorted({r["fraction"] for r in rows}):
        for model in models:
            for task in tasks:
                sel = [r for r in rows if r["fraction"] == fraction and r["model"] == model and r["task"] == task]
                if not sel:
                    continue
                per_seed = []
                for r in sel:
                    lo, hi, n = _run_interval(r, by_run.get(_key(fraction, model, task, r["seed"])))
                    per_seed.append({"seed": r["seed"], "test": float(r["test"]), "ci_low": lo, "ci_high": hi, "n": n})
                test = seed_summary([r["test"] for r in sel], bounds=metric_bounds(sel[0]["metric"]))
                upd = seed_summary([r["updates_to_best"] for r in sel], bounds=metric_bounds("updates"))
                if len(sel) > 1:
                    lo, hi, kind = test.ci_low, test.ci_high, "seeds"
                else:
                    lo, hi, kind = per_seed[0]["ci_low"], per_seed[0]["ci_high"], "items"
                out.append({"fraction": fraction, "model": model, "task": task, "metric": sel[0]["metric"],
                            "higher_is_better": sel[0]["higher_is_better"], "num_train": sel[0].get("num_train"),
                            "test": test.mean, "test_std": _none(test.sd), "ci_low": _none(lo), "ci_high": _none(hi),
                            "interval": kind if _none(lo) is not None else None,
                            "n": per_seed[0]["n"], "n_seeds": len(sel), "per_seed": per_seed,
                            "updates_to_best": upd.mean, "updates_to_best_ci_low": _none(upd.ci_low),
                            "updates_to_best_ci_high": _none(upd.ci_high)})
    return out


def pool_seeds(runs: list[list[dict]]) -> list[dict]:
    """Per-item results of one model over ``S`` seeds on the same ``N`` items, pooled into ``N``
    items ``{id, errors, ref_length}``: accuracy -> wrong answers out of ``S`` attempts, PER / WER
    -> summed edits over summed reference lengths. The pooled rate is the mean over seeds."""
    ids = [i["id"] for i in runs[0]]
    for run in runs[1:]:
        if [i["id"] for i in run] != ids:
            raise ValueError("low-resource: the seeds of one model were scored on different test items")
    acc = "correct" in runs[0][0]
    pooled = []
    for k, cut in enumerate(ids):
        if acc:
            pooled.append({"id": cut, "errors": sum(not run[k]["correct"] for run in runs), "ref_length": len(runs)})
        else:
            pooled.append({"id": cut, "errors": sum(run[k]["errors"] for run in runs),
                           "ref_length": sum(run[k]["ref_length"] for run in runs)})
    return pooled


def paired_seeds(runs_a: list[list[dict]], runs_b: list[list[dict]], seed: int = 0):
    """Model A minus model B over the same seeds and test items (:class:`~s3kit.eval.stats.PairedBootstrap`,
    in the metric's own units: accuracy or error rate). One seed: :func:`~s3kit.eval.probe.compare_items`
    (accuracy: exact McNemar p). Several: the paired utterance bootstrap of the seed-pooled items
    (:func:`pool_seeds`), resampling items jointly for both models."""
    from s3kit.eval.probe import compare_items
    from s3kit.eval.stats import PairedBootstrap

    if len(runs_a) != len(runs_b) or not runs_a:
        raise ValueError(f"low-resource: need the same seeds for both models, got {len(runs_a)} and {len(runs_b)}")
    if len(runs_a) == 1:
        return compare_items(runs_a[0], runs_b[0], seed=seed)
    r = compare_items(pool_seeds(runs_a), pool_seeds(runs_b), seed=seed)
    if "correct" in runs_a[0][0]:  # pooled errors: A minus B on accuracy is B minus A on errors
        return PairedBootstrap(-r.diff, -r.ci_high, -r.ci_low, r.p, r.n, 1 - r.rate_a, 1 - r.rate_b)
    return r


def compare_low_resource(rows: list[dict], predictions=None, reference: str | None = None,
                         seed: int = 0) -> list[dict]:
    """Each model minus ``reference`` (default: the first model of ``rows``, the model before
    rewiring) at each fraction and task, paired on the seeds both have per-item results for:
    ``{fraction, model, reference, task, metric, higher_is_better, diff, ci_low, ci_high, p, p_holm,
    significant, test, n, seeds, per_seed}`` (``per_seed``: each seed's own comparison). ``p_holm``
    is Holm-adjusted over the fractions of one (model, task); ``significant`` is ``p_holm < 0.05``.
    Fractions without per-item results for both models are left out (nothing to pair)."""
    from s3kit.eval.probe import compare_items
    from s3kit.eval.stats import holm

    by_run = items_by_run(rows, predictions)
    models = list(dict.fromkeys(r["model"] for r in rows))
    reference = models[0] if reference is None else reference
    if reference not in models:
        raise ValueError(f"low-resource: reference {reference!r} is not among the models {models}")
    tasks = sorted({r["task"] for r in rows})
    out = []
    for model in models:
        if model == reference:
            continue
        for task in tasks:
            family = []
            for fraction in sorted({r["fraction"] for r in rows}):
                seeds = sorted({int(r["seed"]) for r in rows if r["fraction"] == fraction and r["task"] == task
                                and r["model"] == model and _key(fraction, model, task, r["seed"]) in by_run
                                and _key(fraction, reference, task, r["seed"]) in by_run})
                if not seeds:
                    continue
                runs_m = [by_run[_key(fraction, model, task, s)] for s in seeds]
                runs_r = [by_run[_key(fraction, reference, task, s)] for s in seeds]
                res = paired_seeds(runs_m, runs_r, seed=seed)
                acc = "correct" in runs_m[0][0]
                name = ("exact McNemar" if acc else "paired bootstrap") if len(seeds) == 1 else \
                    f"paired bootstrap over items, {len(seeds)} seeds pooled"
                sel = next(r for r in rows if r["model"] == model and r["task"] == task)
                per_seed = []
                for s, a, b in zip(seeds, runs_m, runs_r):
                    c = compare_items(a, b, seed=seed)
                    per_seed.append({"seed": s, "diff": c.diff, "ci_low": c.ci_low, "ci_high": c.ci_high, "p": c.p})
                family.append({"fraction": fraction, "model": model, "reference": reference, "task": task,
                               "metric": sel["metric"], "higher_is_better": sel["higher_is_better"],
                               "diff": res.diff, "ci_low": res.ci_low, "ci_high": res.ci_high, "p": res.p,
                               "test": name, "n": res.n, "seeds": seeds, "per_seed": per_seed})
            for entry, adj in zip(family, holm([e["p"] for e in family]) if family else []):
                entry["p_holm"] = adj
                entry["significant"] = adj < ALPHA
            out += family
    return out


# ----------------------------------------------------------------------------- rendering


def _k(n: float) -> str:
    return f"{n / 1000:.3g}k" if n >= 1000 else f"{n:.0f}"


def _pct(x) -> str:
    return f"{100 * x:.2f}"


def score_cell(entry: dict) -> str:
    """``85.00 [21.47, 148.53], 2 seeds`` or ``94.00 [81.39, 98.45], n=38`` (percent), ``[n.a.]``
    when no interval exists."""
    if entry["n_seeds"] > 1:
        unit = f"{entry['n_seeds']} seeds"
    else:
        unit = f"n={entry['n']}" if entry["n"] else "1 seed"
    if entry["ci_low"] is None:
        return f"{_pct(entry['test'])} [n.a.], {unit}"
    return f"{_pct(entry['test'])} [{_pct(entry['ci_low'])}, {_pct(entry['ci_high'])}], {unit}"


def updates_cell(entry: dict) -> str:
    """``9.2k [8.1k, 10.3k]``: updates-to-best, mean [t interval] over seeds (the lower bound shown
    at 0 at least: no run converges before its first update)."""
    if entry["updates_to_best_ci_low"] is None:
        return _k(entry["updates_to_best"])
    return (f"{_k(entry['updates_to_best'])} [{_k(max(0.0, entry['updates_to_best_ci_low']))}, "
            f"{_k(entry['updates_to_best_ci_high'])}]")


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


def difference_cells(c: dict) -> list[str]:
    """``[diff [CI] (points), p (test), Holm p or "n.s."]`` of one comparison."""
    mark = _p(c["p_holm"]) if c["significant"] else f"n.s. ({_p(c['p_holm'])})"
    d, lo, hi = (100 * c[k] + 0.0 for k in ("diff", "ci_low", "ci_high"))  # + 0.0: no "-0.00"
    return [f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}], n={c['n']}",
            f"{_p(c['p'])} ({c['test']})", mark]


def table2(rows: list[dict], predictions=None, reference: str | None = None) -> str:
    """Markdown in the layout of the paper's Table 2 (one row per fraction and model: the test
    metric in % with its 95 % interval, ⌚ = probe updates to the best dev score, mean [t interval]
    over seeds), then each model minus ``reference`` per fraction with its paired test and the
    Holm-adjusted p (``n.s.``: not significant at 0.05)."""
    summary = summarise_low_resource(rows, predictions)
    tasks = sorted({r["task"] for r in summary})
    first = {t: next(r for r in summary if r["task"] == t) for t in tasks}
    head = "| Tr. | Model | " + " | ".join(
        f"{t.upper()} {first[t]['metric']} {'↑' if first[t]['higher_is_better'] else '↓'} [95 % CI] | ⌚"
        for t in tasks) + " |"
    lines = [head, "|---|---|" + "---:|---:|" * len(tasks)]
    for fraction, model in dict.fromkeys((r["fraction"], r["model"]) for r in summary):
        cells = []
        for t in tasks:
            sel = [r for r in summary if r["fraction"] == fraction and r["model"] == model and r["task"] == t]
            cells += [score_cell(sel[0]), updates_cell(sel[0])] if sel else ["", ""]
        lines.append(f"| {fraction * 100:g}% | {model} | " + " | ".join(cells) + " |")
    seeds = max(r["n_seeds"] for r in summary)
    lines += ["", "Scores in %; interval: " + ("the t interval of the mean over seeds" if seeds > 1 else
              "Wilson (accuracy) or utterance bootstrap (PER / WER) over the test items") + "; ⌚ updates to "
              "the best dev score" + (" (mean [t interval] over seeds)." if seeds > 1 else ".")]
    comps = compare_low_resource(rows, predictions, reference)
    if comps:
        lines += ["", "| Tr. | Task | Model − reference | Δ points [95 % CI], n | p (test) | Holm p over fractions |",
                  "|---|---|---|---:|---:|---:|"]
        for c in comps:
            lines.append(f"| {c['fraction'] * 100:g}% | {c['task'].upper()} | {c['model']} − {c['reference']} | "
                         + " | ".join(difference_cells(c)) + " |")
        lines += ["", "Paired on the same test items and seeds; n.s. = not significant at 0.05 after Holm's "
                  "adjustment over the fractions."]
    return "\n".join(lines) + "\n"


def section_tables(rows: list[dict], predictions=None, reference: str | None = None) -> list[dict]:
    """The low-resource tables as report-section tables (``{"title", "header", "rows"}``,
    :func:`s3kit.report.build.load_sections`): scores with intervals, and each model minus the
    reference per fraction with its paired test (left out when there are no per-item results)."""
    summary = summarise_low_resource(rows, predictions)
    tables = [{"title": "Low-resource probes (the rewiring paper's Table 2), % with 95 % interval",
               "header": ["train fraction", "task", "model", "train items", "score [95 % CI]", "updates to best"],
               "rows": [[f"{r['fraction']:.0%}", r["task"].upper(), r["model"], str(r["num_train"]), score_cell(r),
                         updates_cell(r)] for r in summary]}]
    comps = compare_low_resource(rows, predictions, reference)
    if comps:
        tables.append({"title": "Low-resource: each model minus the reference, paired test, Holm over fractions",
                       "header": ["train fraction", "task", "comparison", "Δ points [95 % CI], n", "p (test)",
                                  "Holm p"],
                       "rows": [[f"{c['fraction']:.0%}", c["task"].upper(), f"{c['model']} − {c['reference']}",
                                 *difference_cells(c)] for c in comps]})
    return tables


def strip_predictions(rows: list[dict]) -> list[dict]:
    """The rows without their per-item results (those go to a predictions file)."""
    return [{k: _none(v) for k, v in r.items() if k != "predictions"} for r in rows]


def flat_predictions(rows: list[dict]) -> list[dict]:
    """The rows' per-item results as flat dicts ``{fraction, model, task, seed, **item}``
    (:func:`s3kit.eval.probe.write_predictions`; :func:`items_by_run` reads them back)."""
    return [{"fraction": r["fraction"], "model": r["model"], "task": r["task"], "seed": r["seed"], **item}
            for r in rows for item in r.get("predictions") or ()]


__all__ = ["ALPHA", "FRACTIONS", "compare_low_resource", "flat_predictions", "items_by_run", "low_resource",
           "paired_seeds", "pool_seeds", "section_tables", "strip_predictions", "summarise_low_resource", "table2"]
