"""Render model cards into tables, plots and an HTML + Markdown report (see package docstring)."""

from __future__ import annotations

import html
import json
import math
import shutil
from pathlib import Path

LOWER_IS_BETTER = {"per", "wer", "cer", "der", "far"}


def load_cards(run_dir: str | Path) -> list[dict]:
    """Every ``models/*/card.json`` of ``run_dir``, in name order, with ``_dir`` set."""
    run_dir = Path(run_dir)
    paths = sorted((run_dir / "models").glob("*/card.json"))
    if not paths:
        raise FileNotFoundError(f"{run_dir}: no model cards (models/<name>/card.json); is this an s3kit run directory?")
    cards = []
    for p in paths:
        try:
            card = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from e
        card.setdefault("name", p.parent.name)
        card["_dir"] = p.parent
        cards.append(card)
    return cards


def load_sections(run_dir: str | Path) -> list[dict]:
    """Extra report sections written by analysis stages: ``RUN/sections/*.json``, each
    ``{"title", "text"?, "first"?, "tables": [{"title", "header", "rows"}], "plots": [{"caption", "file"}]}``
    (``first``: shown above the model tables, e.g. the demo's findings ledger)."""
    sections = []
    for p in sorted(Path(run_dir).glob("sections/*.json")):
        try:
            sec = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from e
        if not isinstance(sec, dict) or "title" not in sec:
            raise ValueError(f"{p}: a report section is a JSON object with a 'title'")
        sec.setdefault("tables", [])
        sec.setdefault("plots", [])
        for tab in sec["tables"]:
            missing = [k for k in ("title", "header", "rows") if k not in tab]
            if missing:
                raise ValueError(f"{p}: table {tab.get('title', '?')!r} lacks {missing}")
        for plot in sec["plots"]:
            if "file" not in plot:
                raise ValueError(f"{p}: a plot entry lacks 'file'")
        sections.append(sec)
    return sections


def _section_plots(sections: list[dict], plots: Path, run_dir: Path) -> None:
    """Copy each section's plot files (absolute, or relative to ``run_dir``) into ``plots`` and
    point ``file`` at the copy's name; a plot whose file is missing is left out."""
    plots.mkdir(parents=True, exist_ok=True)
    for i, sec in enumerate(sections):
        kept = []
        for plot in sec["plots"]:
            src = Path(plot["file"])
            src = src if src.is_absolute() else run_dir / src
            if src.exists():
                name = f"section{i}_{src.name}"
                shutil.copyfile(src, plots / name)
                kept.append({"caption": plot.get("caption", src.stem), "file": name})
        sec["plots"] = kept


def _fmt(v, digits=3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 1e5 or (v != 0 and abs(v) < 1e-3):
            return f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(v)


ALPHA = 0.05  # family-wise level of each comparison table (Holm)
NOT_SIGNIFICANT = "n.s."


def pick_reference(cards: list[dict], reference: str | None = None) -> str:
    """The model every other is compared with: ``reference``, else ``teacher`` if there is one,
    else the first card."""
    names = [c["name"] for c in cards]
    if reference is not None:
        if reference not in names:
            raise ValueError(f"reference model {reference!r} has no card; models: {', '.join(names)}")
        return reference
    return "teacher" if "teacher" in names else names[0]


def card_predictions(card: dict, task: str) -> list[dict] | None:
    """Per-item test predictions of ``card`` for ``task`` (``models/NAME/predictions/<task>.jsonl.gz``,
    written by :func:`s3kit.eval.probe.write_predictions`), or None. A file holding several probe
    seeds (rows with a ``seed`` field) gives the rows of its lowest seed: a fixed rule, so no seed
    is picked for its verdict."""
    from s3kit.eval.probe import read_predictions

    path = Path(card["_dir"]) / "predictions" / f"{task}.jsonl.gz"
    if not path.is_file():
        return None
    rows = read_predictions(path)
    seeds = sorted({r["seed"] for r in rows if "seed" in r})
    if len(seeds) > 1:  # several probe seeds in one file: the paired test pairs one probe with one probe
        rows = [r for r in rows if r.get("seed") == seeds[0]]
    return rows


def _score(p: dict) -> str:
    """A card's probe score in house style when it carries its interval, else the bare score."""
    from s3kit.eval.stats import format_score

    if p.get("n") and p.get("ci_low") is not None and p.get("ci_high") is not None:
        return format_score(p["score"], p["ci_low"], p["ci_high"], p["n"])
    return _fmt(p["score"])


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


def _probe_comparison(cards: list[dict], tasks: list[str], ref: str):
    """Each model minus the reference per task, from the cards' per-item predictions: (rows, notes).

    Accuracy: paired bootstrap interval and exact McNemar p; PER / WER: paired utterance bootstrap.
    One Holm family over every cell of the table."""
    from s3kit.eval.probe import compare_items
    from s3kit.eval.stats import holm

    by_name = {c["name"]: c for c in cards}
    ref_items = {t: card_predictions(by_name[ref], t) for t in tasks}
    cells, notes = {}, []
    for c in cards:
        if c["name"] == ref:
            continue
        for t in tasks:
            items, base = (card_predictions(c, t) if t in c.get("probe", {}) else None), ref_items[t]
            if items is None or base is None:
                continue
            try:
                cells[(c["name"], t)] = compare_items(items, base)
            except ValueError as e:
                notes.append(f"{c['name']} {t.upper()}: not compared ({e})")
    if not cells:
        return [], notes
    keys = list(cells)
    for k, q in zip(keys, holm([cells[k].p for k in keys])):
        cells[k] = (cells[k], q)
    rows = []
    for c in cards:
        if c["name"] == ref:
            continue
        row = [c["name"]]
        for t in tasks:
            if (c["name"], t) not in cells:
                row.append("–")
                continue
            r, q = cells[(c["name"], t)]
            mark = f" {NOT_SIGNIFICANT}" if q >= ALPHA else ""
            row.append(f"{r.diff + 0.0:+.3f} [{r.ci_low + 0.0:+.3f}, {r.ci_high + 0.0:+.3f}], Holm p={_p(q)}{mark}")
        rows.append(row)
    return rows, notes


def detectable_accuracy_difference(n: int, p_ref: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest accuracy difference from a reference of accuracy ``p_ref`` that a paired test on ``n``
    items detects with ``power``: the fixed point of ``delta = z sqrt(psi / n)``
    (:func:`s3kit.eval.stats.detectable_difference`) where ``psi = p (1 - q) + q (1 - p)`` is the
    discordant share of two systems with independent errors at ``p = p_ref`` and ``q = p_ref -+ delta``
    (towards 0.5). Unlike ``psi = 2 p (1 - p)`` this stays above 0 for a reference at 0 % or 100 %
    (``delta = z^2 / n`` there)."""
    from s3kit.eval.stats import detectable_difference

    delta = detectable_difference(n, p=0.5, alpha=alpha, power=power)  # from above: never the trivial fixed point 0
    for _ in range(200):
        q = min(1.0, max(0.0, p_ref - delta if p_ref >= 0.5 else p_ref + delta))
        psi = p_ref * (1 - q) + q * (1 - p_ref)
        new = detectable_difference(n, discordant=psi, alpha=alpha, power=power)
        if abs(new - delta) < 1e-9:
            break
        delta = new
    return delta


def _detectable(cards: list[dict], tasks: list[str], ref: str) -> str:
    """The smallest difference each task's test set detects (80 % power, alpha 0.05)."""
    from scipy.stats import norm

    by_name = {c["name"]: c for c in cards}
    parts = []
    for t in tasks:
        p = by_name[ref].get("probe", {}).get(t) or next((c["probe"][t] for c in cards if t in c.get("probe", {})), None)
        if not p or not p.get("n"):
            continue
        if p.get("metric", "accuracy") == "accuracy":
            delta = detectable_accuracy_difference(p["n"], p["score"])
            parts.append(f"{t.upper()} (n={p['n']}): {delta:.3f}")
        elif p.get("ci_low") is not None:
            # no closed form for a corpus error rate: the single-model bootstrap interval gives its
            # standard error; a difference of two independent such rates has sqrt(2) times it
            se = (p["ci_high"] - p["ci_low"]) / (2 * norm.ppf(0.975))
            delta = (norm.ppf(0.975) + norm.ppf(0.8)) * math.sqrt(2) * se
            parts.append(f"{t.upper()} (n={p['n']} utterances): about {delta:.3f}")
    if not parts:
        return ""
    return ("Smallest difference from the reference each test set can detect (80 % power, alpha 0.05, a model "
            "whose errors are independent of the reference's; models that err on the same items are told apart at "
            "smaller differences): " + "; ".join(parts) + ".")


def _tables(cards: list[dict], reference: str | None = None) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """(title, header, rows, notes under the table) for efficiency, probing (scores, then each
    model against the reference) and bias."""
    from s3kit.eval.stats import holm

    out = []
    eff_rows = []
    for c in cards:
        e = c.get("efficiency")
        if e:
            eff_rows.append([c["name"], f"{e['params'] / 1e6:.2f}", f"{e.get('macs_per_second', 0) / 1e9:.3f}",
                             _fmt(e.get("latency_ms"), 1), _fmt(e.get("rtf"), 4)])
    if eff_rows:
        out.append(("Speed and size (CPU)", ["model", "params (M)", "GMACs / s audio", "latency (ms)", "RTF"], eff_rows, []))
    ref = pick_reference(cards, reference)
    tasks = sorted({t for c in cards for t in c.get("probe", {})})
    if tasks:
        header = ["model"] + [f"{t.upper()} {cards_metric(cards, t)} [95 % CI], n" for t in tasks] + ["updates to best"]
        rows = []
        for c in cards:
            p = c.get("probe", {})
            rows.append([c["name"]] + [_score(p[t]) if t in p else "–" for t in tasks]
                        + [", ".join(f"{t}:{p[t].get('updates_to_best', '–')}" for t in tasks if t in p) or "–"])
        notes = ["Score [95 % interval], n = test items: Wilson interval for accuracy, utterance-level bootstrap "
                 "for PER (lower is better)." + _direction_note(cards, tasks)]
        detect = _detectable(cards, tasks, ref)
        comp_rows, comp_notes = _probe_comparison(cards, tasks, ref)
        if not comp_rows:
            notes.append(f"No per-item predictions next to the cards (models/NAME/predictions/<task>.jsonl.gz), "
                         f"so no paired comparison with {ref}.")
        out.append(("Probing (SUPERB protocol, frozen upstream)", header, rows,
                    notes + comp_notes + ([detect] if detect else [])))
        if comp_rows:
            comp_header = ["model"] + [f"{t.upper()}: model − {ref} [95 % CI]" for t in tasks]
            comp_text = (f"Each model minus {ref} on the same test items: accuracy with a paired bootstrap interval and "
                         "the exact McNemar test, PER with the paired utterance-level bootstrap; p Holm-adjusted over "
                         f"the {sum(v != '–' for r in comp_rows for v in r[1:])} comparisons of this table (with several probe "
                         "seeds per model: the lowest seed of each); "
                         f"{NOT_SIGNIFICANT} = not significant at alpha {ALPHA:g} after adjustment (the test set cannot "
                         "tell the two apart)." + _direction_note(cards, tasks))
            out.append((f"Probing: each model against {ref}", comp_header, comp_rows,
                        [comp_text] + ([detect] if detect else [])))
    cats = sorted({k for c in cards for k in c.get("bias", {})})
    if cats:
        header = ["model"] + [f"{k} d [95 % CI] (p, Holm p)" for k in cats] + ["isotropy"]
        shown = [(c["name"], k) for c in cards for k in cats if k in c.get("bias", {}) and c["bias"][k].get("p") is not None]
        adjusted = dict(zip(shown, holm([{c["name"]: c for c in cards}[n]["bias"][k]["p"] for n, k in shown]))) if shown else {}
        rows = []
        for c in cards:
            b = c.get("bias", {})
            cells = []
            for k in cats:
                if k not in b:
                    cells.append("–")
                    continue
                r = b[k]
                ci = f" [{_fmt(r['ci_low'], 2)}, {_fmt(r['ci_high'], 2)}]" if r.get("ci_low") is not None else " [n.a.]"
                q = adjusted.get((c["name"], k))
                test = f"p={_p(r['p'])}, Holm p={_p(q)}" if q is not None else "p n.a."
                mark = f" {NOT_SIGNIFICANT}" if q is None or q >= ALPHA else ""
                cells.append(f"{_fmt(r['d'], 2)}{ci} ({test}){mark}")
            rows.append([c["name"]] + cells + [_fmt(c.get("isotropy"))])
        notes = [f"SpEAT d (bias paper eq. 2) with its bootstrap interval (targets and attributes resampled); p = "
                 f"one-sided permutation test, Holm-adjusted over the {len(shown)} tests of this table; "
                 f"{NOT_SIGNIFICANT} = not significant at alpha {ALPHA:g}. A bias claim needs a small adjusted p and "
                 "an interval that excludes 0 (docs/bias.md)."]
        out.append(("Social bias (SpEAT effect size d, permutation p) and isotropy", header, rows, notes))
        versus = [(c["name"], k, c["bias"][k]["vs_reference"]) for c in cards for k in cats
                  if k in c.get("bias", {}) and c["bias"][k].get("vs_reference")]
        if versus:
            bref = versus[0][2]["reference"]
            q = dict(zip([(n, k) for n, k, _ in versus], holm([v["p"] for _, _, v in versus])))
            rows = []
            for c in cards:
                if c["name"] == bref:
                    continue
                cells = []
                for k in cats:
                    v = c.get("bias", {}).get(k, {}).get("vs_reference")
                    if not v:
                        cells.append("–")
                        continue
                    qq = q[(c["name"], k)]
                    cells.append(f"{v['diff'] + 0.0:+.2f} [{v['ci_low'] + 0.0:+.2f}, {v['ci_high'] + 0.0:+.2f}], "
                                 f"Holm p={_p(qq)}{' ' + NOT_SIGNIFICANT if qq >= ALPHA else ''}")
                rows.append([c["name"]] + cells)
            out.append((f"Social bias: each model against {bref}", ["model"] + [f"{k}: d − d of {bref} [95 % CI]" for k in cats],
                        rows, [f"Difference of the SpEAT d's on the same stimuli, paired bootstrap (one resample of "
                               f"stimuli for both models), two-sided p Holm-adjusted over the {len(versus)} comparisons "
                               f"of this table; {NOT_SIGNIFICANT} = not significant at alpha {ALPHA:g}."]))
    return out


def _direction_note(cards: list[dict], tasks: list[str]) -> str:
    """Which way is better for the further tasks' metrics (DER, MTWV, SF's F1) when the table has any."""
    extra = {cards_metric(cards, t) for t in tasks} - {"accuracy", "per"}
    if not extra:
        return ""
    lower = sorted(m.upper() for m in extra if m in LOWER_IS_BETTER)
    higher = sorted(m.upper() for m in extra if m not in LOWER_IS_BETTER)
    parts = ([f"lower is better for {', '.join(lower)}"] if lower else []) + (
        [f"higher is better for {', '.join(higher)}"] if higher else [])
    text = "; ".join(parts)
    return (" " + text[0].upper() + text[1:] + " (DER: recording-level bootstrap; MTWV: bootstrap over the queries"
            " with a true document).")


def cards_metric(cards: list[dict], task: str) -> str:
    for c in cards:
        if task in c.get("probe", {}):
            return c["probe"][task].get("metric", "score")
    return "score"


def _save(fig, path: Path, caption: str) -> tuple[str, str]:
    """Write ``fig`` as a PNG, close it, and return ``(caption, file name)``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return caption, path.name


def _plots(cards: list[dict], plots: Path) -> list[tuple[str, str]]:
    """(caption, file name) of every plot made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    plots.mkdir(parents=True, exist_ok=True)
    tasks = sorted({t for c in cards for t in c.get("probe", {})})
    # accuracy vs parameters, one panel per task
    with_eff = [c for c in cards if c.get("efficiency")]
    if tasks and with_eff:
        fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2), squeeze=False)
        for ax, t in zip(axes[0], tasks):
            for c in with_eff:
                if t in c.get("probe", {}):
                    x = c["efficiency"]["params"] / 1e6
                    p = c["probe"][t]
                    y = p["score"]
                    if p.get("ci_low") is not None and p.get("ci_high") is not None:  # the 95 % interval
                        ax.errorbar([x], [y], yerr=[[y - p["ci_low"]], [p["ci_high"] - y]], fmt="o", capsize=3)
                    else:
                        ax.scatter([x], [y])
                    ax.annotate(c["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel("parameters (M)")
            ax.set_ylabel(f"{t.upper()} {cards_metric(cards, t)}")
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
        made.append(_save(fig, plots / "score_vs_params.png",
                          "Downstream score against model size (bars: 95 % interval of the score)"))
    # learned layer weights
    weighted = [(c["name"], t, c["probe"][t]["layer_weights"]) for c in cards for t in tasks
                if t in c.get("probe", {}) and c["probe"][t].get("layer_weights")]
    if weighted:
        fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2), squeeze=False)
        for ax, t in zip(axes[0], tasks):
            rows = [(n, w) for n, tt, w in weighted if tt == t]
            width = 0.8 / max(1, len(rows))
            for k, (n, w) in enumerate(rows):
                ax.bar([i + k * width for i in range(len(w))], w, width=width, label=n)
            ax.set_title(t.upper())
            ax.set_xlabel("layer")
            ax.set_ylabel("softmax weight")
            if rows:
                ax.legend(fontsize=7)
        made.append(_save(fig, plots / "layer_weights.png", "Learned layer weights of the probes (index 0 = input of layer 1)"))
    # SpEAT d per model and per layer
    cats = sorted({k for c in cards for k in c.get("bias", {})})
    if cats:
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(cards) * max(1, len(cats)) / 2, 3.2))
        width = 0.8 / len(cats)
        for k, cat in enumerate(cats):
            xs, ds = [], []
            for i, c in enumerate(cards):
                if cat in c.get("bias", {}):
                    xs.append(i + k * width)
                    ds.append(c["bias"][cat]["d"])
            ax.bar(xs, ds, width=width, label=cat)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cards))], [c["name"] for c in cards], rotation=20, fontsize=8)
        for y in (-0.8, -0.5, -0.2, 0.2, 0.5, 0.8):
            ax.axhline(y, color="grey", lw=0.5, ls=":")
        ax.set_ylabel("SpEAT d")
        ax.legend(fontsize=7)
        made.append(_save(fig, plots / "speat_d.png", "SpEAT effect size per model (dotted: 0.2 / 0.5 / 0.8 = small / medium / large)"))
        per_layer = [(c["name"], cat, c["bias"][cat]["per_layer"]) for c in cards for cat in cats
                     if cat in c.get("bias", {}) and c["bias"][cat].get("per_layer")]
        if per_layer:
            fig, ax = plt.subplots(figsize=(5, 3.2))
            for n, cat, ds in per_layer:
                ax.plot(range(len(ds)), ds, marker="o", ms=3, label=f"{n} / {cat}")
            ax.set_xlabel("layer")
            ax.set_ylabel("SpEAT d")
            ax.legend(fontsize=6)
            made.append(_save(fig, plots / "speat_d_per_layer.png", "SpEAT d per layer"))
    # t-SNE images produced by the analysis stage
    for c in cards:
        if c.get("tsne"):
            src = Path(c["_dir"]) / c["tsne"]
            if src.exists():
                name = f"tsne_{c['name']}.png"
                shutil.copyfile(src, plots / name)
                made.append((f"t-SNE of utterance embeddings: {c['name']}", name))
    return made


def _markdown(title: str, cards: list[dict], tables, plots, sections=()) -> str:
    lines = [f"# {title}", ""]
    lines += _markdown_sections([s for s in sections if s.get("first")])
    for t, header, rows, notes in tables:
        lines += [f"## {t}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
        lines += [n + "\n" for n in notes]
    lines += _markdown_sections([s for s in sections if not s.get("first")])
    lines += ["## Model cards", ""]
    for c in cards:
        lines += [f"### {c['name']}", "", c.get("description", ""), ""]
        if c.get("source"):
            lines += [f"Made by: `{c['source']}`", ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{cap}](plots/{f})\n\n{cap}\n" for cap, f in plots]
    return "\n".join(lines)


def _markdown_sections(sections) -> list[str]:
    """Markdown of extra sections (``first: true`` ones go above the model tables)."""
    lines = []
    for sec in sections:
        lines += [f"## {sec['title']}", ""]
        if sec.get("text"):
            lines += [sec["text"], ""]
        for tab in sec["tables"]:
            lines += [f"### {tab['title']}", "", "| " + " | ".join(tab["header"]) + " |", "|" + "---|" * len(tab["header"])]
            lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in tab["rows"]]
            lines.append("")
        lines += [f"![{p['caption']}](plots/{p['file']})\n\n{p['caption']}\n" for p in sec["plots"]]
    return lines


def _html(title: str, cards: list[dict], tables, plots, sections=()) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}figure{margin:1em 0}img{max-width:100%}"
        ".card{border:1px solid #ddd;border-radius:6px;padding:0.5em 1em;margin:0.8em 0}"
        ".note{font-size:0.9em;color:#444;max-width:900px}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    parts += _html_sections([s for s in sections if s.get("first")])
    for t, header, rows, notes in tables:
        parts.append(f"<h2>{esc(t)}</h2><table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows]
        parts.append("</tbody></table>")
        parts += [f"<p class='note'>{esc(n)}</p>" for n in notes]
    parts += _html_sections([s for s in sections if not s.get("first")])
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f"<figure><img src='plots/{esc(f)}' alt='{esc(cap)}'><figcaption>{esc(cap)}</figcaption></figure>" for cap, f in plots]
    parts.append("<h2>Model cards</h2>")
    for c in cards:
        parts.append(f"<div class='card' id='card-{esc(c['name'])}'><h3>{esc(c['name'])}</h3><p>{esc(c.get('description', ''))}</p>")
        if c.get("source"):
            parts.append(f"<p>Made by: <code>{esc(c['source'])}</code></p>")
        facts = []
        e = c.get("efficiency")
        if e:
            facts.append(f"{e['params'] / 1e6:.2f} M parameters, RTF {e.get('rtf', 0):.4f} on CPU")
        for t, p in sorted(c.get("probe", {}).items()):
            facts.append(f"{t.upper()}: {p.get('metric', 'score')} {_score(p)} (best after {p.get('updates_to_best', '–')} updates)")
        for k, b in sorted(c.get("bias", {}).items()):
            ci = f" [{_fmt(b['ci_low'], 2)}, {_fmt(b['ci_high'], 2)}]" if b.get("ci_low") is not None else ""
            facts.append(f"SpEAT {k}: d = {_fmt(b['d'], 2)}{ci} ({b.get('magnitude', '')}), p = {_fmt(b['p'])} (unadjusted)")
        if c.get("isotropy") is not None:
            facts.append(f"isotropy {_fmt(c['isotropy'])}")
        parts.append("<ul>" + "".join(f"<li>{esc(f)}</li>" for f in facts) + "</ul></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_sections(sections) -> list[str]:
    """HTML of extra sections (``first: true`` ones go above the model tables)."""
    esc = html.escape
    parts = []
    for sec in sections:
        parts.append(f"<h2>{esc(sec['title'])}</h2>")
        if sec.get("text"):
            parts.append(f"<p>{esc(sec['text'])}</p>")
        for tab in sec["tables"]:
            parts.append(f"<h3>{esc(tab['title'])}</h3><table><thead><tr>"
                         + "".join(f"<th>{esc(str(h))}</th>" for h in tab["header"]) + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in r) + "</tr>" for r in tab["rows"]]
            parts.append("</tbody></table>")
        parts += [f"<figure><img src='plots/{esc(p['file'])}' alt='{esc(p['caption'])}'>"
                  f"<figcaption>{esc(p['caption'])}</figcaption></figure>" for p in sec["plots"]]
    return parts


def build_report(run_dir: str | Path, title: str = "s3kit report", reference: str | None = None) -> Path:
    """Write ``RUN/report/index.html`` and ``index.md`` from the run's model cards and extra
    sections (:func:`load_sections`); returns the HTML path. Every probe score shows its interval;
    with per-item predictions next to the cards, each model is compared with ``reference``
    (default: ``teacher`` if present, else the first model; :func:`pick_reference`)."""
    run_dir = Path(run_dir)
    cards = load_cards(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    tables = _tables(cards, reference)
    plots = _plots(cards, out / "plots")
    sections = load_sections(run_dir)
    _section_plots(sections, out / "plots", run_dir)
    (out / "index.md").write_text(_markdown(title, cards, tables, plots, sections))
    page = out / "index.html"
    page.write_text(_html(title, cards, tables, plots, sections))
    return page
