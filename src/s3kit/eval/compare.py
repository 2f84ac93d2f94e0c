"""Paired comparison of probe runs of several upstreams on the same test items (``s3kit compare``).

Dimension legend: ``N`` test items, ``M`` comparisons in the table.

Each run directory is what ``s3kit probe --out DIR`` wrote; the comparison reads its
``predictions.jsonl.gz`` (every test item of every task, fraction and seed). For each probe of the
reference run (task, fraction, seed), every other run's probe with the same key is compared with
it on the same items (:func:`s3kit.eval.probe.compare_items`): model minus reference, for
accuracies with a paired bootstrap interval and the exact McNemar p, for PER / WER / DER with the
paired utterance-level bootstrap, for SF's slot-type F1 and QbE's MTWV with the paired bootstrap
over utterances / queries. The p-values of the whole table are Holm-adjusted (one family), and a
row whose adjusted p is not below ``alpha`` is marked ``n.s.``: the test set cannot tell the two
models apart there. Runs scored on different test items are refused, naming the first mismatch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

ALPHA = 0.05  # family-wise error rate of the table (after Holm)
NOT_SIGNIFICANT = "n.s."
# metric names of the tasks outside probe.TASKS (s3kit.eval.tasks), and by kind of per-item result
EXTRA_METRICS = {"sd": "der", "sf": "slot_type_f1", "qbe": "mtwv", "env": "accuracy", "mus": "accuracy"}
KIND_METRICS = {"accuracy": "accuracy", "rate": "error rate", "f1": "slot_type_f1", "detection": "mtwv"}


@dataclass
class ProbeRun:
    """The per-item predictions of one ``s3kit probe`` output directory."""

    name: str
    path: Path
    upstream: str
    probes: dict[tuple[str, float, int], list[dict]]  # (task, fraction, seed) -> items in test order


def load_run(run_dir: str | Path, name: str | None = None) -> ProbeRun:
    """Read ``run_dir/predictions.jsonl.gz`` into a :class:`ProbeRun` (name: the directory's name)."""
    from s3kit.eval.probe import read_predictions

    path = Path(run_dir)
    rows = read_predictions(path / "predictions.jsonl.gz")
    if not rows:
        raise ValueError(f"{path / 'predictions.jsonl.gz'}: no test items")
    probes: dict[tuple[str, float, int], list[dict]] = {}
    upstreams = set()
    for row in rows:
        missing = [k for k in ("task", "fraction", "seed", "id") if k not in row]
        if missing:
            raise ValueError(f"{path / 'predictions.jsonl.gz'}: a row lacks {missing}; write it with `s3kit probe`")
        upstreams.add(str(row.get("upstream", "?")))
        probes.setdefault((row["task"], float(row["fraction"]), int(row["seed"])), []).append(row)
    return ProbeRun(name or path.resolve().name, path, "/".join(sorted(upstreams)), probes)


def _unique_names(paths: list[Path]) -> list[str]:
    names, taken = [], set()
    for p in paths:
        name = p.resolve().name
        if name in taken and p.resolve().parent.name:
            name = f"{p.resolve().parent.name}/{name}"
        base, k = name, 2
        while name in taken:
            name, k = f"{base}#{k}", k + 1
        taken.add(name)
        names.append(name)
    return names


def _pick_reference(runs: list[ProbeRun], reference: str | None) -> ProbeRun:
    if reference is None:
        return runs[0]
    hits = [r for r in runs if r.name == reference] or [r for r in runs if r.upstream == reference]
    if len(hits) != 1:
        have = ", ".join(f"{r.name} ({r.upstream})" for r in runs)
        what = "matches several runs" if hits else "matches no run"
        raise ValueError(f"--reference {reference!r} {what}; runs: {have}. Give a run directory's name.")
    return hits[0]


def _check_same_items(a: ProbeRun, b: ProbeRun, key, items_a: list[dict], items_b: list[dict]) -> None:
    """Same cut ids in the same order, and the same reference labels: else name the first mismatch."""
    where = f"{a.name} vs {b.name}, task {key[0]} fraction {key[1]:g} seed {key[2]}"
    if len(items_a) != len(items_b):
        raise ValueError(f"compare {where}: {len(items_a)} and {len(items_b)} test items; the runs must be scored "
                         "on the same test set")
    for k, (x, y) in enumerate(zip(items_a, items_b)):
        if x["id"] != y["id"]:
            raise ValueError(f"compare {where}: test item {k} differs ({x['id']!r} vs {y['id']!r}); the runs must be "
                             "scored on the same test set")
        if x.get("reference") != y.get("reference"):
            raise ValueError(f"compare {where}: test item {x['id']!r} has reference {x.get('reference')!r} in one run "
                             f"and {y.get('reference')!r} in the other; the runs must use the same labels")


def compare_runs(run_dirs: list[str | Path], reference: str | None = None, alpha: float = ALPHA,
                 seed: int = 0) -> dict:
    """Every run against the reference run (default: the first) on every probe they share.

    Returns ``{"reference", "alpha", "runs": [{name, path, upstream}], "rows": [...], "skipped": [...]}``;
    each row: task, metric, fraction, seed, model, reference, n, the two scores with their 95 %
    intervals, ``diff`` (model minus reference) with ``ci_low``, ``ci_high``, the test used, ``p``,
    the Holm-adjusted ``p_holm`` over all rows and ``significant`` (``p_holm < alpha``).
    """
    from s3kit.eval.probe import TASKS, compare_items, item_kind, score_interval
    from s3kit.eval.stats import holm

    paths = [Path(p) for p in run_dirs]
    if len(paths) < 2:
        raise ValueError("compare: give at least two probe run directories")
    runs = [load_run(p, n) for p, n in zip(paths, _unique_names(paths))]
    ref = _pick_reference(runs, reference)
    rows, skipped = [], []
    for run in runs:
        if run is ref:
            continue
        for key in sorted(ref.probes):
            if key not in run.probes:
                skipped.append(f"{run.name}: no {key[0]} probe at fraction {key[1]:g}, seed {key[2]}")
                continue
            items_m, items_r = run.probes[key], ref.probes[key]
            _check_same_items(run, ref, key, items_m, items_r)
            res = compare_items(items_m, items_r, seed=seed)
            iv_m, iv_r = score_interval(items_m, seed=seed), score_interval(items_r, seed=seed)
            task = key[0]
            spec = TASKS.get(task)
            kind = item_kind(items_m)
            accuracy = kind == "accuracy"
            rows.append({
                "task": task, "metric": spec.metric if spec else EXTRA_METRICS.get(task, KIND_METRICS[kind]),
                "higher_is_better": kind != "rate", "fraction": key[1], "seed": key[2],
                "model": run.name, "reference": ref.name, "n": res.n,
                "score": iv_m.as_dict(), "reference_score": iv_r.as_dict(),
                "diff": res.diff, "ci_low": res.ci_low, "ci_high": res.ci_high,
                "test": "exact McNemar" if accuracy else "paired bootstrap", "p": res.p,
            })
        for key in sorted(set(run.probes) - set(ref.probes)):
            skipped.append(f"{run.name}: {key[0]} probe at fraction {key[1]:g}, seed {key[2]} has no reference probe")
    if not rows:
        raise ValueError("compare: the runs share no probe (task, fraction, seed) with the reference: "
                         + "; ".join(skipped))
    for row, p in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = p
        row["significant"] = p < alpha
    return {"reference": ref.name, "alpha": alpha, "seed": seed,
            "runs": [{"name": r.name, "path": str(r.path), "upstream": r.upstream} for r in runs],
            "rows": rows, "skipped": skipped}


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


def _d(x: float) -> str:
    return f"{x + 0.0:+.3f}"  # + 0.0 turns -0.0 (a negated zero difference) into 0.0


def compare_markdown(report: dict) -> str:
    """The comparison table (one row per model and probe) with a legend."""
    from s3kit.eval.stats import format_score

    ref = report["reference"]
    lines = [
        f"# Paired comparison against {ref}", "",
        f"Each row: a model minus the reference `{ref}` on the same test items. Accuracy: the difference with a "
        "95 % paired bootstrap interval, p from the exact McNemar test; PER / WER / DER: the paired utterance-level "
        "bootstrap (difference, interval, p); slot-type F1 / MTWV: the paired bootstrap over utterances / queries."
        f" Holm-adjusted p over the {len(report['rows'])} rows of the table; "
        f"`{NOT_SIGNIFICANT}` marks a difference not significant at alpha = {report['alpha']:g} after adjustment "
        "(the test set cannot tell the two models apart). Scores: value [95 % CI], n = test items.", "",
        "| task | fraction | seed | model | model score | reference score | difference [95 % CI] | test | p | Holm p | |",
        "|---|---:|---:|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in report["rows"]:
        arrow = "↑" if r["higher_is_better"] else "↓"
        s, t = r["score"], r["reference_score"]
        lines.append(
            f"| {r['task']} {r['metric']} {arrow} | {r['fraction']:g} | {r['seed']} | {r['model']} | "
            f"{format_score(s['value'], s['ci_low'], s['ci_high'], s['n'])} | "
            f"{format_score(t['value'], t['ci_low'], t['ci_high'], t['n'])} | "
            f"{_d(r['diff'])} [{_d(r['ci_low'])}, {_d(r['ci_high'])}] | {r['test']} | {_p(r['p'])} | "
            f"{_p(r['p_holm'])} | {'' if r['significant'] else NOT_SIGNIFICANT} |")
    for note in report["skipped"]:
        lines.append(f"\n- skipped: {note}")
    return "\n".join(lines) + "\n"


def write_compare(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """``compare.json`` and ``compare.md`` in ``out_dir``."""
    from s3kit.checkpoint import write_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "compare.json", "markdown": out / "compare.md"}

    def safe(x):
        if isinstance(x, dict):
            return {k: safe(v) for k, v in x.items()}
        if isinstance(x, list):
            return [safe(v) for v in x]
        return None if isinstance(x, float) and not math.isfinite(x) else x

    write_atomic(paths["json"], json.dumps(safe(report), indent=2))
    write_atomic(paths["markdown"], compare_markdown(report))
    return paths
