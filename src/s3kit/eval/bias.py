"""SpEAT bias study of one or more upstreams on a stimulus set (bias paper Table 3 / Figure 1).

Dimension legend: ``N`` stimuli, ``L`` layers, ``D`` features.

Stimuli are lhotse cuts whose first supervision carries ``concept`` and ``group`` labels
(``s3kit.data.manifest``), or a CSV ``path,concept,group``. The reading is deliberately loose so
that any labelling in the paper's spirit works:

* **attributes**: a cut whose ``concept`` or ``group`` is a positive-valence name
  (``positive``, ``pleasant``) is in A; a negative one (``negative``, ``unpleasant``) in B;
* **targets** of a test (``TESTS``; paper Table 1: Gender female/male, Native US/Korean,
  Age young/old): a non-attribute cut whose ``group`` (or ``concept``) is one of the test's X or Y
  names; when ``concept`` names a test category (``gender``, ``age``, ``native``) the cut only
  counts for that test.

A test whose X, Y, A or B is empty is skipped with a note; at least one test must run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s3kit.eval.isotropy import isotropy_summary, log10_isotropy
from s3kit.eval.speat import N_BOOTSTRAP, N_PERMUTATIONS, speat_layers

POSITIVE = frozenset({"positive", "pleasant", "positive_valence", "pos", "attribute_a"})
NEGATIVE = frozenset({"negative", "unpleasant", "negative_valence", "neg", "attribute_b"})
# SpEAT role labels (``s3kit.data.recipes.speat`` CSVs may put the role in ``group``).
ROLE_X = frozenset({"target_x"})
ROLE_Y = frozenset({"target_y"})


@dataclass(frozen=True)
class BiasTest:
    """One SpEAT category: X and Y target-group names (lower case) and concept names selecting it."""

    name: str
    x: frozenset[str]
    y: frozenset[str]
    categories: frozenset[str]

    @property
    def label(self) -> str:
        return f"{self.name} ({sorted(self.x)[0]} vs {sorted(self.y)[0]})"


# Paper Table 1: X is the group expected to be closer to positive valence.
TESTS = {
    "gender": BiasTest("gender", frozenset({"female", "woman", "f"}), frozenset({"male", "man", "m"}),
                       frozenset({"gender", "sex", "male_female", "female_male"})),
    "age": BiasTest("age", frozenset({"young", "younger"}), frozenset({"old", "older"}),
                    frozenset({"age", "young_old"})),
    "native": BiasTest("native", frozenset({"us", "american", "native", "us_english", "en-us", "en_us"}),
                       frozenset({"korean", "non-native", "nonnative", "non_native", "foreign", "accented"}),
                       frozenset({"native", "nationality", "accent", "us_korean", "us_foreign"})),
}
DEFAULT_TESTS = ("gender", "age", "native")
# Targets labelled only by role (group target_x / target_y) that no chosen test claims.
ROLES = BiasTest("roles", ROLE_X, ROLE_Y, frozenset())
LAYER_PERMUTATIONS = 100_000  # per-layer tests: fewer draws than the headline to keep L x tests fast
LAYER_BOOTSTRAP = 2_000


def parse_tests(spec: str | list[str] | tuple[str, ...]) -> list[BiasTest]:
    """``"gender,age,native"`` or items ``name=xgroup/ygroup`` for a custom test -> BiasTests."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    tests = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if "=" in item:
            name, _, groups = item.partition("=")
            x, sep, y = groups.partition("/")
            if not sep or not x or not y:
                raise ValueError(f"custom bias test {item!r}: write it as name=xgroup/ygroup, e.g. accent=us/indian")
            tests.append(BiasTest(name.strip(), frozenset({x.strip().lower()}), frozenset({y.strip().lower()}),
                                  frozenset({name.strip().lower()})))
        elif item.lower() in TESTS:
            tests.append(TESTS[item.lower()])
        else:
            raise ValueError(f"unknown bias test {item!r}: choose from {', '.join(TESTS)} or write name=xgroup/ygroup")
    if not tests:
        raise ValueError("no bias tests given")
    return tests


def load_stimuli(path: str | Path):
    """Stimulus cuts from a manifest (``*.jsonl.gz``), a stimulus CSV (path, concept, group; read by
    ``s3kit.data.recipes.speat``), or a directory of CSVs or of manifests (all concatenated, cut
    ids prefixed with the file stem so a clip listed in two sets stays two stimuli)."""
    from lhotse import CutSet

    from s3kit.data.manifest import load_cuts
    from s3kit.data.recipes.speat import prepare_speat

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: stimuli not found; pass a SpEAT CSV (path,concept,group), a manifest, "
                                "or a folder of them (`s3kit synth` writes manifests/speat.jsonl.gz)")
    if path.is_dir():
        csvs, manifests = sorted(path.glob("*.csv")), sorted(path.glob("*.jsonl.gz"))
        if csvs:
            sets = prepare_speat(path)
        elif manifests:
            sets = {m.name[: -len(".jsonl.gz")]: load_cuts(m) for m in manifests}
        else:
            raise FileNotFoundError(f"{path}: no *.csv stimulus lists or *.jsonl.gz manifests inside")
    elif path.suffix == ".csv":
        sets = prepare_speat(path)
    else:
        return load_cuts(path)
    if len(sets) == 1:
        return next(iter(sets.values()))
    return CutSet.from_cuts(c.with_id(f"{stem}:{c.id}") for stem, cuts in sets.items() for c in cuts)


def stimulus_sets(cuts, tests: list[BiasTest]) -> tuple[dict[str, tuple[list[int], list[int]]], list[int], list[int]]:
    """Row indices of each test's X and Y, and of attributes A (positive) and B (negative).

    A target cut goes to the first test that claims it; role-labelled targets no test claims
    go to ``roles`` (present in the result only when non-empty).
    """
    from s3kit.data.manifest import get_label

    tests = [*tests, ROLES]
    targets = {t.name: ([], []) for t in tests}
    categories = {c for t in (*tests, *TESTS.values()) for c in t.categories}
    A, B = [], []
    for i, cut in enumerate(cuts):
        concept = str(get_label(cut, "concept", "") or "").strip().lower()
        group = str(get_label(cut, "group", "") or "").strip().lower()
        tokens = {concept, group} - {""}
        if tokens & POSITIVE:
            A.append(i)
            continue
        if tokens & NEGATIVE:
            B.append(i)
            continue
        for t in tests:
            if concept in categories and concept not in t.categories:
                continue
            if tokens & t.x:
                targets[t.name][0].append(i)
                break
            if tokens & t.y:
                targets[t.name][1].append(i)
                break
    if not any(targets[ROLES.name]):
        del targets[ROLES.name]
    return targets, A, B


def _stimulus_label(concept, group) -> str:
    concept, group = str(concept or ""), str(group or "")
    roles = ROLE_X | ROLE_Y | {"attribute_a", "attribute_b"}
    categories = {c for t in TESTS.values() for c in t.categories} | {"valence"}
    if concept and concept.lower() not in categories and concept.lower() not in roles:
        return concept
    return group or concept or "?"


def _common(labels: list[str], rows: list[int]) -> str:
    """The most frequent label among ``rows`` (names a target group in tables)."""
    from collections import Counter

    return Counter(labels[i] for i in rows).most_common(1)[0][0]


def _display_name(spec: str, taken: set[str]) -> str:
    p = Path(spec)
    name = p.name or spec
    if p.is_dir() and p.parent.name and name in taken:
        name = f"{p.parent.name}/{name}"
    base, k = name, 2
    while name in taken:
        name, k = f"{base}#{k}", k + 1
    taken.add(name)
    return name


def _step_of(spec: str) -> int | None:
    """Training step recorded in an s3kit checkpoint's config.json, if any (Figure 1 x-axis)."""
    cfg = Path(spec) / "config.json"
    if not cfg.is_file():
        return None
    try:
        meta = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    for key in ("step", "global_step"):
        if isinstance(meta.get(key), int):
            return meta[key]
    return None


def _json_safe(x):
    """NaN (e.g. a skipped bootstrap) -> null, so bias.json is strict JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _fmt(x: float, digits: int = 2) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def write_markdown(report: dict, path: Path) -> None:
    """Headline table (paper Table 3 layout: upstreams x tests) plus per-layer tables."""
    tests = list(report["tests"])
    lines = ["# SpEAT bias", "",
             f"Stimuli: `{report['stimuli']}`. d = eq. (2) of the bias paper on time-averaged, layer-averaged "
             f"embeddings; p = one-sided permutation test; CI = {int(report['settings']['level'] * 100)} % "
             "percentile bootstrap; |d| 0.2 / 0.5 / 0.8 = small / medium / large.", ""]
    for name, t in report["tests"].items():
        lines.append(f"- **{name}**: X = {t['x']} ({t['n_x']}), Y = {t['y']} ({t['n_y']}); "
                     f"A = positive ({report['n_a']}), B = negative ({report['n_b']})")
    for note in report.get("skipped", []):
        lines.append(f"- skipped: {note}")
    lines += ["", "| upstream | " + " | ".join(tests) + " | log10 IS |",
              "|---|" + "---|" * (len(tests) + 1)]
    for up in report["upstreams"]:
        cells = []
        for t in tests:
            r = up["results"][t]["aggregate"]
            cells.append(f"{_fmt(r['d'])} (p={_fmt_p(r['p_value'])}, [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}], "
                         f"{r['magnitude']})")
        lines.append(f"| {up['name']} | " + " | ".join(cells) + f" | {_fmt(up['isotropy']['log10_isotropy'], 1)} |")
    for up in report["upstreams"]:
        lines += ["", f"## {up['name']}: d per layer", "",
                  "| layer | " + " | ".join(f"{t} d (p)" for t in tests) + " | log10 IS |",
                  "|---|" + "---|" * (len(tests) + 1)]
        for l in range(up["num_layers"]):
            cells = [f"{_fmt(up['results'][t]['per_layer'][l]['d'])} ({_fmt_p(up['results'][t]['per_layer'][l]['p_value'])})"
                     for t in tests]
            lines.append(f"| {up['layers'][l]} | " + " | ".join(cells)
                         + f" | {_fmt(up['isotropy_per_layer'][l], 1)} |")
    path.write_text("\n".join(lines) + "\n")


def plot_layers(report: dict, path: Path) -> None:
    """d per layer: one panel per test, one line per upstream, 0.2 / 0.5 / 0.8 guides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests = list(report["tests"])
    fig, axes = plt.subplots(1, len(tests), figsize=(4.2 * len(tests), 3.4), squeeze=False, sharey=True)
    for ax, t in zip(axes[0], tests):
        for up in report["upstreams"]:
            d = [r["d"] for r in up["results"][t]["per_layer"]]
            ax.plot(up["layers"], d, marker="o", ms=3, label=up["name"])
        for y in (-0.8, -0.5, -0.2, 0.0, 0.2, 0.5, 0.8):
            ax.axhline(y, color="grey", lw=0.5, ls="-" if y == 0 else ":")
        ax.set_title(t)
        ax.set_xlabel("layer")
    axes[0][0].set_ylabel("SpEAT d")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_across(report: dict, path: Path) -> None:
    """Headline d across upstreams (bias paper Figure 1 when they are checkpoints of one run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ups = report["upstreams"]
    steps = [u.get("step") for u in ups]
    use_steps = all(s is not None for s in steps)
    x = steps if use_steps else list(range(len(ups)))
    fig, ax = plt.subplots(figsize=(max(4.5, 0.6 * len(ups) + 2), 3.4))
    for t in report["tests"]:
        r = [u["results"][t]["aggregate"] for u in ups]
        d = np.array([v["d"] for v in r])
        err = np.array([[v["d"] - v["ci_low"], v["ci_high"] - v["d"]] for v in r]).T
        ax.errorbar(x, d, yerr=None if np.isnan(err).any() else err, marker="o", ms=4, capsize=3, label=t)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_ylabel("SpEAT d")
    if use_steps:
        ax.set_xlabel("training step")
    else:
        ax.set_xticks(x)
        ax.set_xticklabels([u["name"] for u in ups], rotation=30, ha="right", fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bias(upstreams: list[str], stimuli: str | Path, out: str | Path, tests: str | list[str] = ",".join(DEFAULT_TESTS),
         n_permutations: int = N_PERMUTATIONS, n_bootstrap: int = N_BOOTSTRAP,
         layer_permutations: int = LAYER_PERMUTATIONS, layer_bootstrap: int = LAYER_BOOTSTRAP, level: float = 0.95,
         seed: int = 0, max_duration: float = 60.0, device: str = "auto", tsne: bool = False,
         names: list[str] | None = None, on_bad_audio: str = "error", max_bad_share: float = 0.01) -> dict:
    """SpEAT d / p / CI per test, aggregated over layers and per layer, plus isotropy, for each
    upstream (names or paths for ``s3kit.upstream.load_upstream``) on ``stimuli``.

    Writes ``bias.json``, ``bias.md``, ``d_per_layer.png`` (and ``d_across_upstreams.png`` for
    several upstreams, ``tsne_<name>.png`` with ``tsne``) under ``out``; returns the JSON dict.
    ``names``: display names of the upstreams (default: from their paths).
    ``on_bad_audio="skip"``: unusable stimuli are left out before the tests are formed (the same
    stimuli for every upstream) and listed in ``out/skipped_audio.jsonl``; the default stops.
    """
    from s3kit.data.manifest import get_label
    from s3kit.eval.embed import utterance_embeddings
    from s3kit.upstream import load_upstream

    if isinstance(upstreams, (str, Path)):
        upstreams = [str(upstreams)]
    if not upstreams:
        raise ValueError("bias: give at least one upstream")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = parse_tests(tests)
    cuts = load_stimuli(stimuli)
    if on_bad_audio == "skip":
        from s3kit.data.badaudio import skipped_path, usable_cuts

        cuts = usable_cuts(cuts, on_bad_audio, max_bad_share, log=skipped_path(out))
    targets, A, B = stimulus_sets(cuts, chosen)
    if not A or not B:
        raise ValueError(f"{stimuli}: need positive and negative attribute stimuli (concept or group "
                         f"'positive'/'negative'), found {len(A)} positive and {len(B)} negative")
    # Plot / table label of each stimulus: its concept unless that is a role or category name.
    labels = [_stimulus_label(get_label(c, "concept", ""), get_label(c, "group", "")) for c in cuts]
    run, skipped = [], []
    for t in chosen + ([ROLES] if ROLES.name in targets else []):
        ix, iy = targets[t.name]
        if len(ix) < 2 or len(iy) < 2:
            skipped.append(f"{t.name}: {len(ix)} X ({'/'.join(sorted(t.x))}) and {len(iy)} Y "
                           f"({'/'.join(sorted(t.y))}) stimuli; need at least 2 of each")
        else:
            run.append(t)
    if not run:
        raise ValueError(f"{stimuli}: no bias test has stimuli for both groups: " + "; ".join(skipped))
    report = {
        "stimuli": str(stimuli),
        "tests": {t.name: {"x": _common(labels, targets[t.name][0]), "y": _common(labels, targets[t.name][1]),
                           "n_x": len(targets[t.name][0]), "n_y": len(targets[t.name][1])} for t in run},
        "n_a": len(A), "n_b": len(B), "skipped": skipped,
        "settings": dict(n_permutations=n_permutations, n_bootstrap=n_bootstrap, layer_permutations=layer_permutations,
                         layer_bootstrap=layer_bootstrap, level=level, seed=seed),
        "upstreams": [],
    }
    taken: set[str] = set()
    if names is not None and len(names) != len(upstreams):
        raise ValueError(f"bias: {len(names)} names for {len(upstreams)} upstreams")
    for i, spec in enumerate(upstreams):
        name = names[i] if names is not None else _display_name(str(spec), taken)
        upstream = load_upstream(spec)
        emb = utterance_embeddings(upstream, cuts, max_duration=max_duration, device=device)  # (N, L, D)
        entry = {"name": name, "upstream": str(spec), "num_layers": emb.shape[1], "layers": list(range(emb.shape[1])),
                 "step": _step_of(str(spec)), "results": {}}
        for t in run:
            ix, iy = targets[t.name]
            entry["results"][t.name] = speat_layers(
                emb[ix], emb[iy], emb[A], emb[B], n_permutations=n_permutations, n_bootstrap=n_bootstrap, seed=seed,
                level=level, layer_permutations=layer_permutations, layer_bootstrap=layer_bootstrap).to_dict()
        # Isotropy of all stimuli's utterance embeddings: layer mean (headline) and each layer.
        entry["isotropy"] = isotropy_summary(emb.mean(1)).to_dict()
        entry["isotropy_per_layer"] = [log10_isotropy(emb[:, l]) for l in range(emb.shape[1])]
        if tsne:
            from s3kit.eval.tsne import tsne_plot

            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
            tsne_plot(emb.mean(1), labels, out / f"tsne_{safe}.png", title=f"{name}: stimuli (layer mean)", seed=seed)
        report["upstreams"].append(entry)
        del upstream
    (out / "bias.json").write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    write_markdown(report, out / "bias.md")
    plot_layers(report, out / "d_per_layer.png")
    if len(report["upstreams"]) > 1:
        plot_across(report, out / "d_across_upstreams.png")
    return report
