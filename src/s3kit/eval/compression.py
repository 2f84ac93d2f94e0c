"""Compression study (bias paper §3.3, Figures 2 / 3, Table 4): prune or distil a model step by
step and record, after every step, size, sparsity, speed, a probe score and SpEAT d.

Methods: ``head``, ``row``, ``weight`` (iterative pruning with fine-tuning, :mod:`s3kit.methods.prune`)
and ``distill`` (DistilHuBERT students of several depths predicting two teacher layers; the
paper's 2 / 4 / 6-layer students predicting layers 4 and 12 of a 12-layer teacher, scaled to
shallower teachers).

Outputs under ``out``: ``study.json`` and ``study.csv`` (one row per evaluated model),
``d_vs_removed.png`` (Figure 2: SpEAT d against parameters removed per pruning method, the
unpruned d dashed), ``distill_d.png`` (Figure 3: d of the base model and each student) and
``table.md`` (Table 4: probe score of the base, the middle and the sparsest model per method).
Each pruned model is a checkpoint that ``s3kit.load_upstream`` reads.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from s3kit.methods import prune
from s3kit.eval.efficiency import measure
from s3kit.methods.prune import HeadPruneConfig, RowPruneConfig, WeightPruneConfig

METHODS = ("head", "row", "weight", "distill")
PAPER_TEACHER_LAYERS = 12  # the bias paper's students predict layers 4 and 12 of 12-layer models


@dataclass(frozen=True)
class StudyConfig:
    """Options of :func:`study`. Schedules default to the paper's; ``steps_per_prune`` sets every
    fine-tuning interval at once (CPU demos), ``max_prunes`` stops each method early."""

    methods: tuple[str, ...] = ("head", "row", "weight", "distill")
    head: HeadPruneConfig = field(default_factory=HeadPruneConfig)
    row: RowPruneConfig = field(default_factory=RowPruneConfig)
    weight: WeightPruneConfig = field(default_factory=WeightPruneConfig)
    steps_per_prune: int | None = None
    max_prunes: int | None = None
    loss: Literal["auto", "pretrain", "distill"] = "auto"
    batch_size: int = 4  # bias paper §3.3: batch 4 (MelHuBERT), 12 (wav2vec 2.0)
    max_duration: float = 60.0
    clip: float = 10.0  # reference runner's gradient clipping
    distill_layers: tuple[int, ...] = (2, 4, 6)
    distill_targets: tuple[int, ...] = (4, 12)
    distill_steps: int = 200_000  # DistilHuBERT §3.1
    distill_lr: float = 2e-4  # bias paper §3.3
    distill_batch_size: int = 24
    tests: str = "gender,age,native"
    n_permutations: int = 10_000
    n_bootstrap: int = 0
    probe_updates: int | None = None  # None: the task's s3prl default
    latency_seconds: float = 4.0
    latency_repeats: int = 5
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    on_bad_audio: Literal["error", "skip"] = "skip"  # the fine-tuning / distillation data (s3kit.data.badaudio)
    max_bad_share: float = 0.01  # evaluation data (probe splits, SpEAT stimuli) always stops on a bad file

    def __post_init__(self):
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown compression methods {bad}; choose from {', '.join(METHODS)}")
        if self.steps_per_prune is not None and self.steps_per_prune < 0:
            raise ValueError(f"steps_per_prune must be >= 0, got {self.steps_per_prune}")


@dataclass
class Evaluation:
    """Inputs of every evaluation: SpEAT stimuli and probe manifests (either may be absent)."""

    stimuli: Any = None
    probe_task: str | None = None
    probe_data: dict[str, Any] | None = None
    out: Path = Path(".")


# ============================================================================ the model under study


@dataclass
class Subject:
    """A model to compress: the trainable model (with its pretraining head when available), the
    fine-tuning loss factory, and how it is shown as an upstream."""

    model: nn.Module
    kind: str  # "pretrain" or "distill": the fine-tuning loss
    pretrain_cfg: Any = None
    units: Any = None
    normalize: bool | None = None

    def upstream(self, name: str = "pruned"):
        return prune.as_upstream(self.model, name=name, normalize=self.normalize)

    def loss_method(self, teacher: nn.Module) -> nn.Module:
        from s3kit.methods import pretrain as pt

        if self.kind == "pretrain":
            if self.pretrain_cfg.kind == "wav2vec2":
                return pt.Wav2Vec2Pretraining(self.model, self.pretrain_cfg)
            return pt.MaskedPrediction(self.model, self.units, self.pretrain_cfg)
        return prune.DistillFromOriginal(self.upstream("student"), teacher)


def _units_for(ckpt: Path, cuts):
    from s3kit.methods.pretrain import load_units

    for cand in (ckpt.parent.parent / "targets" / "units.safetensors", ckpt / "targets" / "units.safetensors"):
        if cand.exists():
            units = load_units(cand)
            if all(c.id in units.ids for c in cuts):
                return units
    return None


def load_subject(model: str | Path, cuts, loss: str = "auto") -> Subject:
    """The model at ``model``: a pretraining checkpoint keeps its own loss (``loss="auto"`` or
    ``"pretrain"``; HuBERT / MelHuBERT need the run's k-means units for every training cut),
    anything else ``s3kit.load_upstream`` reads is fine-tuned by distillation from its unpruned self."""
    path = Path(str(model))
    meta = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
    if meta.get("model_kind") and loss != "distill":
        from s3kit.config import from_dict
        from s3kit.methods.pretrain import PretrainConfig, load_pretrained

        net, meta = load_pretrained(path)
        method_cfg = dict((meta.get("config") or {}).get("method") or {})
        pcfg = from_dict(PretrainConfig, {k: v for k, v in method_cfg.items() if k in {f.name for f in dataclasses.fields(PretrainConfig)}},
                         where=f"{path}/config.json")
        pcfg = dataclasses.replace(pcfg, kind=meta["model_kind"])
        units = None if pcfg.kind == "wav2vec2" else _units_for(path, cuts)
        if pcfg.kind == "wav2vec2" or units is not None:
            return Subject(net, "pretrain", pcfg, units)
        if loss == "pretrain":
            raise ValueError(f"{path}: no k-means units covering the fine-tuning manifest (looked in "
                             f"{path.parent.parent / 'targets'}); use loss=distill or the pretraining manifest")
    elif loss == "pretrain":
        raise ValueError(f"{path}: not an s3kit pretraining checkpoint, so its pretraining loss is unavailable; use loss=distill")
    from s3kit.upstream import load_upstream

    up = load_upstream(path) if path.exists() or meta else load_upstream(str(model))
    prune.encoder_of(up)  # clear error for unsupported upstreams
    return Subject(up, "distill", normalize=getattr(up, "normalize", None))


# ============================================================================ evaluation


def _embed_speat(upstream, ev: Evaluation, cfg: StudyConfig) -> dict[str, dict[str, float]]:
    from s3kit.eval.bias import load_stimuli, parse_tests, stimulus_sets
    from s3kit.eval.embed import utterance_embeddings
    from s3kit.eval.speat import speat

    if ev.stimuli is None:
        return {}
    cuts = load_stimuli(ev.stimuli) if isinstance(ev.stimuli, (str, Path)) else ev.stimuli
    targets, A, B = stimulus_sets(cuts, parse_tests(cfg.tests))
    emb = utterance_embeddings(upstream, cuts, max_duration=cfg.max_duration, device=cfg.device, progress=False).mean(1)
    out = {}
    for name, (ix, iy) in targets.items():
        if len(ix) >= 2 and len(iy) >= 2 and A and B:
            r = speat(emb[ix], emb[iy], emb[A], emb[B], n_permutations=cfg.n_permutations,
                      n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
            out[name] = {"d": r.d, "p": r.p_value}
    return out


def _probe(upstream, ev: Evaluation, cfg: StudyConfig) -> float | None:
    if not ev.probe_task:
        return None
    from s3kit.eval.probe import ProbeConfig, run_probe

    pc = ProbeConfig(max_updates=cfg.probe_updates, device=cfg.device, progress=False, seed=cfg.seed,
                     cache_dir=str(ev.out / "feature_cache"))
    res = run_probe(upstream, ev.probe_task, ev.probe_data["train"], ev.probe_data["dev"], ev.probe_data["test"], pc)
    return float(res.test)


def evaluate(model: nn.Module, base: dict, ev: Evaluation, cfg: StudyConfig, **info) -> dict:
    """One study row: params (and removed), heads, FFN widths, sparsity, MACs / s, CPU latency,
    probe score and SpEAT d per test of ``model`` (an upstream)."""
    model.eval()
    enc = prune.encoder_of(model)
    device = next(model.parameters()).device
    eff = measure(model, seconds=cfg.latency_seconds, repeats=cfg.latency_repeats)
    model.to(device)
    zeros = int(round(prune.zero_fraction(enc) * prune.prunable_count(enc)))
    params = eff.params
    removed = max(0, base.get("params", params) - params + zeros - base.get("zeros", zeros))
    row = {**info, "params": params, "params_removed": removed,
           "sparsity": removed / max(1, base.get("prunable", prune.prunable_count(enc))),
           "heads": sum(prune.heads_per_layer(enc)), "ffn": sum(prune.ffn_widths(enc)),
           "macs_per_second": eff.macs_per_second, "latency_ms": eff.latency_ms,
           "probe": _probe(model, ev, cfg), "speat": _embed_speat(model, ev, cfg)}
    return row


# ============================================================================ pruning runs


def _loader(cuts, cfg: StudyConfig, seed: int):
    from s3kit.data.loader import make_loader

    return make_loader(cuts, max_duration=cfg.max_duration, max_cuts=cfg.batch_size, shuffle=True, seed=seed)


def _finetune(subject: Subject, teacher, cuts, steps: int, lr: float, out: Path, cfg: StudyConfig,
              masks=None, offset: int = 0, callbacks=()) -> Path | None:
    """Fine-tune for ``steps`` updates with a fresh Adam (constant lr); returns the checkpoint."""
    from s3kit.train.trainer import TrainConfig, train

    if steps <= 0:
        return None
    method = prune.PruneFinetune(subject.loss_method(teacher), masks, offset)
    tc = TrainConfig(out_dir=str(out), total_steps=steps, lr=lr, warmup=0, schedule="constant", betas=(0.9, 0.999),
                     eps=1e-8, clip=cfg.clip, log_every=max(1, min(50, steps)), val_every=10**9,
                     save_every=10**9, keep_last=1, seed=cfg.seed + offset, device=cfg.device, progress=cfg.progress,
                     on_bad_audio=cfg.on_bad_audio, max_bad_share=cfg.max_bad_share)
    res = train(method, _loader(cuts, cfg, cfg.seed + offset), tc, resume=False,
                callbacks=[lambda s, logs: cb(offset + s, logs) for cb in callbacks])
    return res.checkpoint


def _structured(method: str, subject: Subject, teacher, cuts, base, ev, cfg, out: Path) -> list[dict]:
    enc = prune.encoder_of(subject.model)
    L = len(prune.layer_parts(enc))
    if method == "head":
        sc = cfg.head
        sched, total = prune.head_schedule(sc, L, max(prune.heads_per_layer(enc)))
        lr = sc.lr
    else:
        sc = cfg.row
        sched, total = prune.row_schedule(sc, max(prune.ffn_widths(enc)))
        lr = sc.lr
    if cfg.max_prunes is not None:
        sched = sched[: cfg.max_prunes]
    steps = [s for s, _ in sched] + [total]
    if cfg.steps_per_prune is not None:
        steps = [cfg.steps_per_prune * (i + 1) for i in range(len(sched) + 1)]
    rows = []
    first = steps[0] if cfg.steps_per_prune is None else 0
    if first:
        _finetune(subject, teacher, cuts, first, lr, out / "finetune-00", cfg)
    for k, (_, target) in enumerate(sched):
        if method == "head":
            prune.prune_lowest_heads(enc, per_layer=max(1, min(prune.heads_per_layer(enc)) - target))
        else:
            prune.prune_lowest_rows(enc, per_layer=max(prune.ffn_widths(enc)) - target, min_rows=target)
        gap = steps[k + 1] - steps[k] if cfg.steps_per_prune is None else cfg.steps_per_prune
        ckpt = _finetune(subject, teacher, cuts, gap, lr, out / f"finetune-{k + 1:02d}", cfg, offset=steps[k])
        if ckpt is None:
            ckpt = prune.save_pruned(out / f"prune-{k + 1:02d}", subject.upstream())
        rows.append(evaluate(subject.upstream(f"{method}-{k + 1}"), base, ev, cfg, method=method, step=k + 1,
                             train_step=steps[k] + gap, checkpoint=str(ckpt)))
        _print_row(rows[-1])
    return rows


def _weight(subject: Subject, teacher, cuts, base, ev, cfg: StudyConfig, out: Path) -> list[dict]:
    wc = cfg.weight
    if cfg.steps_per_prune is not None:  # a demo: every interval at once, never wait more than one more interval
        n = max(1, cfg.steps_per_prune)
        wc = dataclasses.replace(wc, interval=n, window=min(wc.window, max(1, n // 2)),
                                 max_wait=n if wc.max_wait is None else wc.max_wait)
    levels = prune.sparsity_levels(wc.schedule)
    if cfg.max_prunes is not None:
        levels = levels[: cfg.max_prunes]
    enc = prune.encoder_of(subject.model)
    masks = prune.WeightMasks(enc)
    trigger = prune.PlateauTrigger(wc)
    record = [lambda s, logs: trigger.update(s, logs["loss"])]
    step, rows, chunk = 0, [], max(1, wc.interval // 5)
    # the first prune follows `interval` steps of fine-tuning (reference: first prune at 25k)
    for k, level in enumerate(levels):
        seg = 0
        while not trigger.ready(step):
            n = max(wc.interval - (step - trigger.last_prune), chunk)
            _finetune(subject, teacher, cuts, n, wc.lr, out / f"finetune-{k:02d}-{seg:02d}", cfg, masks, step, record)
            step += n
            seg += 1
        masks.prune_to(level)
        trigger.pruned(step)
        ckpt = prune.save_pruned(out / f"prune-{k + 1:02d}", subject.upstream())
        rows.append(evaluate(subject.upstream(f"weight-{level:g}"), base, ev, cfg, method="weight", step=k + 1,
                             train_step=step, target_sparsity=level, checkpoint=str(ckpt)))
        _print_row(rows[-1])
    return rows


def _scaled(values, teacher_layers: int, hi: int) -> list[int]:
    """Paper layer numbers (of a 12-layer teacher) scaled to ``teacher_layers``, deduplicated."""
    f = teacher_layers / PAPER_TEACHER_LAYERS
    return sorted({min(hi, max(1, round(v * f))) for v in values})


def _distill(model_path, cuts, base, ev, cfg: StudyConfig, out: Path) -> tuple[list[dict], str | None]:
    from s3kit.methods.distilhubert import DistilConfig, distill
    from s3kit.models.melhubert import MelHubertUpstream
    from s3kit.train.trainer import TrainConfig
    from s3kit.upstream import load_upstream
    from s3kit.upstream.hf import HFUpstream

    teacher_path = Path(str(model_path))
    meta = json.loads((teacher_path / "config.json").read_text()) if (teacher_path / "config.json").exists() else {}
    if meta.get("model_kind") in ("hubert", "wav2vec2"):
        from s3kit.methods.pretrain import export_transformers

        teacher_path = export_transformers(teacher_path, out / "teacher_transformers")
    elif meta.get("pruned"):  # per-layer widths differ: no student config copies them
        return [], f"distill: {model_path} is a pruned model; DistilHuBERT needs an unpruned teacher; skipped"
    # transformers dirs / hub ids, s3kit MelHuBERT checkpoints (pretraining or save_upstream)
    teacher = load_upstream(teacher_path)
    if isinstance(teacher, HFUpstream):
        L = teacher.model.config.num_hidden_layers
    elif isinstance(teacher, MelHubertUpstream):
        L = teacher.encoder.config.num_layers
    else:
        return [], (f"distill: {model_path} is a {type(teacher).__name__}; DistilHuBERT needs a transformers "
                    f"HuBERT / wav2vec 2.0 / WavLM or an s3kit MelHuBERT teacher; skipped")
    depths = _scaled(cfg.distill_layers, L, max(1, L - 1))
    targets = tuple(_scaled(cfg.distill_targets, L, L))
    rows = []
    for depth in depths:
        dc = DistilConfig(layers=depth, targets=targets, batch_size=cfg.distill_batch_size, max_duration=cfg.max_duration,
                          train=TrainConfig(out_dir=str(out / f"L{depth}"), total_steps=cfg.distill_steps,
                                            lr=cfg.distill_lr, seed=cfg.seed, device=cfg.device,
                                            progress=cfg.progress, save_every=10**9, log_every=50,
                                            on_bad_audio=cfg.on_bad_audio, max_bad_share=cfg.max_bad_share))
        res = distill(str(teacher_path), cuts, dc)
        up = load_upstream(res.checkpoint)
        rows.append(evaluate(up, base, ev, cfg, method="distill", step=depth, layers=depth,
                             targets=list(targets), checkpoint=str(res.checkpoint)))
        _print_row(rows[-1])
    return rows, None


def _print_row(row: dict) -> None:
    d = ", ".join(f"{t} d={v['d']:.2f}" for t, v in row["speat"].items())
    probe = "" if row["probe"] is None else f", probe {100 * row['probe']:.1f}"
    print(f"[{row['method']} {row['step']}] params {row['params'] / 1e6:.2f}M (removed {row['params_removed']:,}, "
          f"sparsity {row['sparsity']:.2f}), latency {row['latency_ms']:.1f} ms{probe}{(', ' + d) if d else ''}", flush=True)


def study(model: str | Path, manifest, out: str | Path, cfg: StudyConfig = StudyConfig(), stimuli=None,
          probe_task: str | None = None, probe_data: dict | None = None) -> dict:
    """Run the compression study of ``model`` (see module docstring) fine-tuning on ``manifest``;
    ``stimuli`` (SpEAT CSV / manifest) and ``probe_task`` + ``probe_data`` ({train, dev, test}
    manifests) are evaluated after every step. Returns the ``study.json`` dict."""
    from s3kit.data.manifest import load_cuts

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    cuts = load_cuts(manifest) if isinstance(manifest, (str, Path)) else manifest
    ev = Evaluation(stimuli=stimuli, probe_task=probe_task, probe_data=probe_data, out=out)
    if probe_task and not probe_data:
        raise ValueError(f"probe {probe_task!r} needs train / dev / test manifests")
    original = load_subject(model, cuts, cfg.loss)
    base_up = original.upstream("base")
    enc = prune.encoder_of(base_up)
    base = {"params": sum(p.numel() for p in base_up.parameters()), "prunable": prune.prunable_count(enc),
            "zeros": int(round(prune.zero_fraction(enc) * prune.prunable_count(enc)))}
    base_row = evaluate(base_up, base, ev, cfg, method="base", step=0)
    _print_row(base_row)
    report = {"model": str(model), "manifest": str(manifest), "loss": original.kind,
              "config": _cfg_dict(cfg), "base": base_row, "rows": [], "notes": []}
    teacher = load_subject(model, cuts, "distill").upstream("teacher").eval().requires_grad_(False)
    for method in cfg.methods:
        mdir = out / method
        if method == "distill":
            rows, note = _distill(model, cuts, base, ev, cfg, mdir)
            if note:
                report["notes"].append(note)
                print(note)
        else:
            subject = load_subject(model, cuts, cfg.loss)  # a fresh copy per method
            if method == "weight":
                rows = _weight(subject, teacher, cuts, base, ev, cfg, mdir)
            else:
                rows = _structured(method, subject, teacher, cuts, base, ev, cfg, mdir)
        report["rows"].extend(rows)
        _write(report, out)
    _write(report, out)
    return report


def _cfg_dict(cfg: StudyConfig) -> dict:
    from s3kit.config import to_dict

    return to_dict(cfg)


# ============================================================================ outputs


def _write(report: dict, out: Path) -> None:
    from s3kit.checkpoint import write_atomic

    write_atomic(out / "study.json", json.dumps(report, indent=2, default=str) + "\n")
    write_atomic(out / "study.csv", to_csv(report))
    write_atomic(out / "table.md", table(report))
    plot_pruning(report, out / "d_vs_removed.png")
    if any(r["method"] == "distill" for r in report["rows"]):
        plot_distill(report, out / "distill_d.png")


def _tests(report: dict) -> list[str]:
    names = list(report["base"]["speat"])
    for r in report["rows"]:
        names += [t for t in r["speat"] if t not in names]
    return names


def to_csv(report: dict) -> str:
    tests = _tests(report)
    cols = ["method", "step", "train_step", "params", "params_removed", "sparsity", "heads", "ffn",
            "macs_per_second", "latency_ms", "probe"] + [f"d_{t}" for t in tests] + ["checkpoint"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in [report["base"], *report["rows"]]:
        w.writerow([r.get(c, "") if not c.startswith("d_") else r["speat"].get(c[2:], {}).get("d", "") for c in cols])
    return buf.getvalue()


def _middle(rows: list[dict], method: str, base: dict) -> dict | None:
    """Table 4's "middle sparsity" model: half the heads (72 of 144), half the FFN rows (1536 of
    3072), weight sparsity 0.4; the 2-layer student for distillation."""
    if not rows:
        return None
    if method == "head":
        key = lambda r: abs(r["heads"] - base["heads"] / 2)  # noqa: E731
    elif method == "row":
        key = lambda r: abs(r["ffn"] - base["ffn"] / 2)  # noqa: E731
    elif method == "weight":
        key = lambda r: abs(r.get("target_sparsity", r["sparsity"]) - 0.4)  # noqa: E731
    else:
        key = lambda r: r.get("layers", 0)  # noqa: E731
    return min(rows, key=key)


def table(report: dict) -> str:
    """Markdown Table 4: probe score and SpEAT d of the base, middle and sparsest model per method."""
    base = report["base"]
    tests = _tests(report)

    def probe(r):
        return "–" if r is None or r.get("probe") is None else f"{100 * r['probe']:.1f}"

    def d(r, t):
        return "–" if r is None or t not in r["speat"] else f"{r['speat'][t]['d']:.2f}"

    head = ["method", "params (M)", "latency (ms)", "probe base", "probe middle / sparsest"] + [f"d {t} base → middle / sparsest" for t in tests]
    lines = [f"Model: `{report['model']}` (fine-tuning loss: {report['loss']})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in METHODS:
        rows = [r for r in report["rows"] if r["method"] == method]
        if not rows:
            continue
        mid = _middle(rows, method, base)
        last = rows[-1] if method != "distill" else mid
        cells = [method, f"{base['params'] / 1e6:.2f} → {mid['params'] / 1e6:.2f} / {last['params'] / 1e6:.2f}",
                 f"{base['latency_ms']:.0f} → {mid['latency_ms']:.0f} / {last['latency_ms']:.0f}",
                 probe(base), f"{probe(mid)} / {probe(last)}"]
        cells += [f"{d(base, t)} → {d(mid, t)} / {d(last, t)}" for t in tests]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Middle = half the heads, half the FFN rows, weight sparsity 0.4, or the shallowest student "
              "(bias paper Table 4); sparsest = the last step. Probe in % (PER: lower is better)."]
    for n in report.get("notes", []):
        lines.append(f"- {n}")
    return "\n".join(lines) + "\n"


def plot_pruning(report: dict, path: Path) -> None:
    """Figure 2: SpEAT d vs parameters removed, one panel per pruning method, unpruned d dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in ("head", "row", "weight") if any(r["method"] == m for r in report["rows"])]
    tests = _tests(report)
    fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(4.2 * max(1, len(methods)), 3.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, method in zip(axes[0], methods or ["none"]):
        rows = [report["base"]] + [r for r in report["rows"] if r["method"] == method]
        for i, t in enumerate(tests):
            pts = [(r["params_removed"] / 1e6, r["speat"][t]["d"]) for r in rows if t in r["speat"]]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, color=colors[i % len(colors)], label=t)
            if t in report["base"]["speat"]:
                ax.axhline(report["base"]["speat"][t]["d"], ls="--", lw=0.9, color=colors[i % len(colors)])
        ax.set_title(f"{method} pruning")
        ax.set_xlabel("parameters removed (M)")
        ax.set_ylabel("SpEAT d")
        if tests:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_distill(report: dict, path: Path) -> None:
    """Figure 3: SpEAT d of the base model and each distilled depth, grouped by test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [report["base"]] + sorted((r for r in report["rows"] if r["method"] == "distill"), key=lambda r: r["layers"])
    labels = ["base"] + [str(r["layers"]) for r in rows[1:]]
    tests = _tests(report)
    fig, ax = plt.subplots(figsize=(1.2 + 1.4 * max(1, len(tests)), 3.2))
    width = 0.8 / max(1, len(rows))
    for j, (r, lab) in enumerate(zip(rows, labels)):
        ys = [r["speat"].get(t, {}).get("d", math.nan) for t in tests]
        ax.bar([i + j * width for i in range(len(tests))], ys, width, label=lab)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tests))])
    ax.set_xticklabels(tests)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel("SpEAT d")
    ax.legend(title="layers", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
