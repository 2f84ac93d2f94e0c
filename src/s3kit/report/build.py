"""Render model cards into tables, plots and an HTML + Markdown report (see package docstring)."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

LOWER_IS_BETTER = {"per", "wer", "far"}


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


def _tables(cards: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for efficiency, probing and bias."""
    out = []
    eff_rows = []
    for c in cards:
        e = c.get("efficiency")
        if e:
            eff_rows.append([c["name"], f"{e['params'] / 1e6:.2f}", f"{e.get('macs_per_second', 0) / 1e9:.3f}",
                             _fmt(e.get("latency_ms"), 1), _fmt(e.get("rtf"), 4)])
    if eff_rows:
        out.append(("Speed and size (CPU)", ["model", "params (M)", "GMACs / s audio", "latency (ms)", "RTF"], eff_rows))
    tasks = sorted({t for c in cards for t in c.get("probe", {})})
    if tasks:
        header = ["model"] + [f"{t.upper()} {cards_metric(cards, t)}" for t in tasks] + ["updates to best"]
        rows = []
        for c in cards:
            p = c.get("probe", {})
            rows.append([c["name"]] + [_fmt(p[t]["score"]) if t in p else "–" for t in tasks]
                        + [", ".join(f"{t}:{p[t].get('updates_to_best', '–')}" for t in tasks if t in p) or "–"])
        out.append(("Probing (SUPERB protocol, frozen upstream)", header, rows))
    cats = sorted({k for c in cards for k in c.get("bias", {})})
    if cats:
        header = ["model"] + [f"{k} d (p)" for k in cats] + ["isotropy"]
        rows = []
        for c in cards:
            b = c.get("bias", {})
            rows.append([c["name"]] + [f"{_fmt(b[k]['d'])} ({_fmt(b[k]['p'])})" if k in b else "–" for k in cats]
                        + [_fmt(c.get("isotropy"))])
        out.append(("Social bias (SpEAT effect size d, permutation p) and isotropy", header, rows))
    return out


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
                    y = c["probe"][t]["score"]
                    ax.scatter([x], [y])
                    ax.annotate(c["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel("parameters (M)")
            ax.set_ylabel(f"{t.upper()} {cards_metric(cards, t)}")
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
        made.append(_save(fig, plots / "score_vs_params.png", "Downstream score against model size"))
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
    for t, header, rows in tables:
        lines += [f"## {t}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
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
        ".card{border:1px solid #ddd;border-radius:6px;padding:0.5em 1em;margin:0.8em 0}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    parts += _html_sections([s for s in sections if s.get("first")])
    for t, header, rows in tables:
        parts.append(f"<h2>{esc(t)}</h2><table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows]
        parts.append("</tbody></table>")
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
            facts.append(f"{t.upper()}: {p.get('metric', 'score')} {_fmt(p['score'])} (best after {p.get('updates_to_best', '–')} updates)")
        for k, b in sorted(c.get("bias", {}).items()):
            facts.append(f"SpEAT {k}: d = {_fmt(b['d'])} ({b.get('magnitude', '')}), p = {_fmt(b['p'])}")
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


def build_report(run_dir: str | Path, title: str = "s3kit report") -> Path:
    """Write ``RUN/report/index.html`` and ``index.md`` from the run's model cards and extra
    sections (:func:`load_sections`); returns the HTML path."""
    run_dir = Path(run_dir)
    cards = load_cards(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    tables = _tables(cards)
    plots = _plots(cards, out / "plots")
    sections = load_sections(run_dir)
    _section_plots(sections, out / "plots", run_dir)
    (out / "index.md").write_text(_markdown(title, cards, tables, plots, sections))
    page = out / "index.html"
    page.write_text(_html(title, cards, tables, plots, sections))
    return page
