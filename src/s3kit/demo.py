"""The main job: from nothing to a model card and report, on the synthetic corpus, on CPU.

Stages (each resumable: a finished stage leaves ``RUN/stages/<name>.json`` and is skipped on
the next run with the same settings; training stages also resume from their last checkpoint):

1. ``corpus``    synthesise the TTS corpus (keywords, commands, sentences, noise, SpEAT sets);
2. ``teacher``   the tiny MelHuBERT teacher shipped in ``s3kit/assets/demo_teacher`` (or, with
                 ``teacher=train``, pretrain one: MFCC k-means targets), plus the same
                 architecture at random initialisation as a control;
3. students      DistilHuBERT, DVCC (on-device KWS student), head+row pruning, Neutral
                 rewiring and M2D-S, each from the teacher (a stage reruns when its code changes);
4. ``probe``     SUPERB-style probes (KS, IC, SID, PR) of every model, plus speed and size;
5. ``bias``      SpEAT d with p-values per model and per layer, isotropy, t-SNE;
6. ``rewiring``  teacher vs rewired: isotropy, t-SNE and low-resource KS with updates-to-best;
7. ``report``    ``RUN/report/index.html`` + ``index.md``: a card per model, tables, plots, and
                 the extra sections of ``RUN/sections/*.json``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from s3kit.config import to_dict


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"
    minutes: float = 12.0  # synthetic corpus size (all subsets)
    seed: int = 0
    teacher: str = "shipped"  # "shipped": s3kit/assets/demo_teacher; "train": pretrain it here
    teacher_steps: int = 1500  # tiny MelHuBERT masked-prediction updates (with teacher=train)
    distil_steps: int = 300
    tasks: list[str] = field(default_factory=lambda: ["ks", "ic", "sid", "pr"])
    probe_updates: int = 300  # per probe (SUPERB's 200k is for real corpora)
    pr_minutes: float = 40.0  # the sentence-heavy PR corpus (80 % sentences); 0: PR on the main corpus
    pr_updates: int = 150  # PR probe updates, on the sentence-heavy PR corpus (docs/pretrain.md)
    probe_lr: float = 1e-3  # KS / IC / SID: SUPERB's 1e-4 is for 200k updates and under-trains in 300 (PR keeps 1e-2)
    bias_tests: str = "gender,native"
    permutations: int = 100_000
    threads: int = 1  # torch intra-op threads: the demo's models are tiny, one thread is fastest
    workers: int = 2  # processes for corpus synthesis
    device: str = "auto"
    stop_after: str | None = None  # a stage name: stop there (e.g. "teacher" to build the teacher only)

    def __post_init__(self):
        if self.teacher not in ("shipped", "train"):
            raise ValueError(f"teacher={self.teacher!r}: 'shipped' or 'train'")


class Stage:
    """A named step whose result (a JSON-able dict) is stored under RUN/stages/<name>.json."""

    def __init__(self, run: Path, name: str, settings: dict):
        self.path = run / "stages" / f"{name}.json"
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
        return result


def _run_stage(run: Path, name: str, settings: dict, fn: Callable[[], dict], log, workdir: Path | None = None) -> dict:
    """Run ``fn`` unless the stage finished earlier with the same settings. ``workdir``: the
    stage's own output directory (training checkpoints): kept when the stage reruns with the same
    settings (an interrupted training resumes), wiped when the settings changed, so the trainer
    does not resume a finished run made with other settings."""
    stage = Stage(run, name, settings)
    cached = stage.done()
    if cached is not None:
        log(f"[{name}] done earlier, reusing {stage.path}")
        return cached
    if workdir is not None:
        marker = workdir / ".stage_settings.json"
        wanted = json.dumps(settings, sort_keys=True)
        if workdir.exists() and (not marker.exists() or marker.read_text() != wanted):
            log(f"[{name}] settings changed: starting afresh in {workdir}")
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        marker.write_text(wanted)
    log(f"[{name}] running")
    t0 = time.perf_counter()
    result = fn()
    log(f"[{name}] finished in {time.perf_counter() - t0:.0f} s")
    return stage.finish(result, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- stages


# PR needs hundreds of sentences: the main corpus has a few dozen, on which every model's PER is
# 0.85-1.0 and the ranking is noise (issue #6; docs/pretrain.md "PR on the synthetic corpus").
# A second, sentence-heavy corpus with the same seed has the same speaker splits.
PR_CORPUS = dict(sentence_share=0.8, keyword_share=0.05, command_share=0.05, noise_share=0.05, speat_share=0.05)


def _wants_pr_corpus(cfg: DemoConfig) -> bool:
    return "pr" in cfg.tasks and cfg.pr_minutes > 0 and cfg.stop_after not in ("corpus", "teacher")


def stage_corpus(run: Path, cfg: DemoConfig) -> dict:
    from s3kit.data.synth import synthesize_corpus

    paths = synthesize_corpus(run / "data", minutes=cfg.minutes, seed=cfg.seed, num_workers=cfg.workers)
    if _wants_pr_corpus(cfg):
        pr = synthesize_corpus(run / "data_pr", minutes=cfg.pr_minutes, seed=cfg.seed, num_workers=cfg.workers,
                               **PR_CORPUS)
        paths.update({f"pr_{s}": pr[f"sentences_{s}"] for s in ("train", "dev", "test")})
    else:  # PR (if probed) on the main corpus's sentences
        paths.update({f"pr_{s}": paths[f"sentences_{s}"] for s in ("train", "dev", "test")})
    return {k: str(v) for k, v in paths.items()}


SHIPPED_TEACHER = Path(__file__).resolve().parent / "assets" / "demo_teacher"


def _teacher_pretrain_config(cfg: DemoConfig):
    from s3kit.methods.pretrain import PretrainConfig

    # SPEC.md "Data": 4 layers, d 192, k-means-100 MFCC targets, 8 % / span-5 masking, 1.5 s crops,
    # batches of 16 x 1.5 s. Dropout off: a 2 M-parameter model trained for minutes does not
    # overfit, and CPU dropout costs a third of the step.
    return PretrainConfig(kind="melhubert", arch="tiny", mask_prob=0.08, mask_span=5, max_frames=75,
                          num_clusters=100, batch_size=16, max_duration=24.0, seed=cfg.seed,
                          model={"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0})


def train_teacher(run: Path, cfg: DemoConfig, data: dict) -> Path:
    """Pretrain the tiny MelHuBERT on every speech subset's train split; returns its upstream dir."""
    from s3kit.data.manifest import load_cuts, save_cuts
    from s3kit.methods.pretrain import default_train_config, load_pretrained, pretrain
    from s3kit.models.melhubert import save_upstream

    out = run / "teacher"
    train = load_cuts(data["sentences_train"]) + load_cuts(data["commands_train"]) + load_cuts(data["keywords_train"])
    manifest = save_cuts(train.to_eager(), out / "train.jsonl.gz")
    tcfg = dataclasses.replace(
        default_train_config("melhubert"), out_dir=str(out), total_steps=cfg.teacher_steps, lr=5e-4,
        optimizer="adamw", warmup=0.08, clip=10.0, log_every=25, val_every=max(50, cfg.teacher_steps // 4),
        save_every=max(50, cfg.teacher_steps // 4), save_at=[], seed=cfg.seed, device=cfg.device,
    )
    result = pretrain(manifest, _teacher_pretrain_config(cfg), tcfg, val_manifest=data["sentences_dev"])
    model, _ = load_pretrained(result.checkpoint)
    val = result.val[-1][1] if result.val else {}
    return save_upstream(out / "upstream", model, steps=cfg.teacher_steps, corpus_minutes=cfg.minutes, seed=cfg.seed,
                         val_loss=val.get("loss"), val_acc_masked=val.get("acc_masked"),
                         description=f"tiny MelHuBERT pretrained {cfg.teacher_steps} steps by s3kit demo")


def stage_teacher(run: Path, cfg: DemoConfig, data: dict) -> dict:
    """The teacher (the shipped checkpoint, or trained here with ``teacher=train``), and the same
    architecture at random initialisation (same fbank statistics) as the control every probe needs."""
    import torch

    from s3kit import checkpoint
    from s3kit.config import from_dict
    from s3kit.models.melhubert import MelHubert, MelHubertConfig, save_upstream

    if cfg.teacher == "shipped":
        if not (SHIPPED_TEACHER / "model.safetensors").exists():
            raise FileNotFoundError(f"{SHIPPED_TEACHER}: the shipped demo teacher is missing; run with teacher=train")
        final = run / "teacher" / "upstream"
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(SHIPPED_TEACHER, final)
    else:
        final = train_teacher(run, cfg, data)
    state, meta = checkpoint.load(final)
    torch.manual_seed(cfg.seed)
    init = MelHubert(from_dict(MelHubertConfig, meta["config"]))
    init.front_end.set_stats(state["front_end.mean"], state["front_end.std"])
    save_upstream(run / "teacher-init" / "upstream", init, description="random init")
    info = {k: meta.get(k) for k in ("steps", "val_loss", "val_acc_masked", "description")}
    return {"teacher": str(final), "teacher_init": str(run / "teacher-init" / "upstream"), **info}


def _write_card(run: Path, name: str, card: dict) -> None:
    d = run / "models" / name
    d.mkdir(parents=True, exist_ok=True)
    path = d / "card.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update(card)
    path.write_text(json.dumps(old, indent=2))


def stage_probe(run: Path, cfg: DemoConfig, data: dict, models: dict[str, dict]) -> dict:
    """Speed/size and SUPERB-style probes of every model; fills the model cards."""
    from s3kit.eval.efficiency import measure
    from s3kit.eval.probe import ProbeConfig, run_probe, write_predictions
    from s3kit.upstream import load_upstream

    subsets = {"ks": "keywords", "ic": "commands", "sid": "keywords", "pr": "pr"}
    results = {}
    for name, info in models.items():
        up = load_upstream(info["upstream"])
        card = {"name": name, "description": info["description"], "source": info["source"],
                "efficiency": measure(up, seconds=2.0, repeats=3).to_dict(), "probe": {}}
        for task in cfg.tasks:
            sub = subsets[task]
            train, dev, test = (data[f"{sub}_{s}"] for s in ("train", "dev", "test"))
            if task == "sid":  # speaker identity needs the same speakers in train and test
                train, dev, test = _sid_splits(run, data)
            updates = cfg.pr_updates if task == "pr" else cfg.probe_updates
            pc = ProbeConfig(max_updates=updates, eval_every=max(25, updates // 6), seed=cfg.seed,
                             lr=None if task == "pr" else cfg.probe_lr,
                             cache_dir=str(run / "cache" / "features"), device=cfg.device, progress=False)
            r = run_probe(up, task, train, dev, test, pc)
            write_predictions(r.predictions, run / "models" / name / "predictions" / f"{task}.jsonl.gz")  # paired tests
            card["probe"][task] = {"metric": r.metric, "score": r.test, "n": r.n, "ci_low": r.ci_low, "ci_high": r.ci_high,
                                   "dev": r.dev, "updates_to_best": r.updates_to_best, "layer_weights": r.layer_weights}
        _write_card(run, name, card)
        results[name] = card["probe"]
    return results


def _sid_splits(run: Path, data: dict) -> tuple[str, str, str]:
    """Speaker ID over the keyword clips of the *train* speakers, split by take (SUPERB SID
    splits VoxCeleb1 utterances of the same 1 251 speakers)."""
    from s3kit.data.manifest import load_cuts, save_cuts

    out = run / "data" / "sid"
    paths = tuple(out / f"sid_{s}.jsonl.gz" for s in ("train", "dev", "test"))
    if all(p.exists() for p in paths):
        return tuple(str(p) for p in paths)
    from lhotse import CutSet

    by_speaker: dict[str, list] = {}
    for c in sorted(load_cuts(data["keywords_train"]), key=lambda c: c.id):
        if c.supervisions and c.supervisions[0].speaker:  # silence / noise clips have no speaker
            by_speaker.setdefault(c.supervisions[0].speaker, []).append(c)
    parts = {"train": [], "dev": [], "test": []}
    for clips in by_speaker.values():  # per speaker: last clip -> test, one before -> dev, rest -> train
        if len(clips) < 3:
            continue
        parts["test"].append(clips[-1])
        parts["dev"].append(clips[-2])
        parts["train"] += clips[:-2]

    for (split, items), p in zip(parts.items(), paths):
        save_cuts(CutSet.from_cuts(items), p)
    return tuple(str(p) for p in paths)


# Training fractions of the low-resource table. The paper's 1 %, 5 %, 10 % of SUPERB KS are
# 500-5 000 clips; of the demo's ~150 training clips they would be 2-15, so the demo scales them up.
DEMO_FRACTIONS = (0.1, 0.25, 1.0)


def stage_rewiring(run: Path, cfg: DemoConfig, data: dict, models: dict[str, dict]) -> dict:
    """The rewiring paper's §3.3 analyses, teacher vs rewired: isotropy and t-SNE of the keyword
    test clips, and KS probes on fractions of the training set with updates-to-best (its Table 2),
    written as a report section (RUN/sections/rewiring.json)."""
    from s3kit.eval.probe import ProbeConfig
    from s3kit.methods.rewire import analyse, summarise_low_resource

    out = run / "rewiring"
    pc = ProbeConfig(max_updates=cfg.probe_updates, eval_every=max(25, cfg.probe_updates // 6), seed=cfg.seed,
                     lr=cfg.probe_lr, cache_dir=str(run / "cache" / "features"), device=cfg.device, progress=False)
    rep = analyse({"teacher": models["teacher"]["upstream"], "rewired": models["rewired"]["upstream"]}, out,
                  geometry_cuts=data["keywords_test"], label="keyword", task="ks", train=data["keywords_train"],
                  dev=data["keywords_dev"], test=data["keywords_test"], fractions=DEMO_FRACTIONS, probe_cfg=pc,
                  seeds=(cfg.seed, cfg.seed + 1), progress=False)
    geo = rep["geometry"]
    rows = [[f"{r['fraction']:.0%}", r["model"], str(r["num_train"]), f"{r['test']:.3f}", f"{r['updates_to_best']:.0f}"]
            for r in summarise_low_resource(rep["table2"])]
    section = {
        "title": "Rewiring: isotropy and low-resource keyword spotting (teacher vs rewired)",
        "text": "Isotropy (log10 IS, Mu & Viswanath; higher is more isotropic) and mean pairwise cosine of "
                "utterance embeddings (all layers averaged, then frames) of the keyword test clips. The KS "
                f"probe is trained on a stratified fraction of the training clips; scores and updates-to-best "
                f"are means over seeds {cfg.seed} and {cfg.seed + 1}.",
        "tables": [
            {"title": "Geometry of the keyword test clips", "header": ["model", "log10 isotropy", "mean cosine"],
             "rows": [[n, f"{g['log10_isotropy']:.2f}", f"{g['mean_cosine']:.3f}"] for n, g in geo.items()]},
            {"title": "Low-resource KS (the paper's Table 2)",
             "header": ["train fraction", "model", "clips", "KS accuracy", "updates to best"], "rows": rows},
        ],
        # paths relative to the run directory, so the report still finds them after the run moves
        "plots": [{"caption": f"t-SNE of keyword test clips: {n}", "file": f"rewiring/{g['tsne']}"} for n, g in geo.items()],
    }
    (run / "sections").mkdir(parents=True, exist_ok=True)
    (run / "sections" / "rewiring.json").write_text(json.dumps(section, indent=2))
    return {"geometry": {n: {k: g[k] for k in ("log10_isotropy", "mean_cosine")} for n, g in geo.items()},
            "table2": rows}


def _code_key(fn: Callable) -> str:
    """A short hash of a stage function's own source: a finished stage reruns when that function
    changes (edits to the modules it calls are not tracked; delete RUN/stages/<name>.json then)."""
    import hashlib
    import inspect

    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):  # no source on disk (e.g. byte-compiled only): key on the bytecode
        source = fn.__code__.co_code.hex() + " ".join(fn.__code__.co_names)
    return hashlib.sha1(source.encode()).hexdigest()[:12]


def stage_bias(run: Path, cfg: DemoConfig, data: dict, models: dict[str, dict]) -> dict:
    from s3kit.eval.bias import bias

    names = list(models)
    report = bias([models[n]["upstream"] for n in names], data["speat"], run / "bias", tests=cfg.bias_tests,
                  n_permutations=cfg.permutations, n_bootstrap=2000, layer_permutations=10_000, layer_bootstrap=500,
                  seed=cfg.seed, device=cfg.device, tsne=True, names=names,
                  reference="teacher" if "teacher" in names else None)
    versus = {(c["upstream"], c["test"]): c for c in report.get("comparisons", [])}  # d minus the teacher's
    out = {}
    for name, entry in zip(names, report["upstreams"]):
        card = {"bias": {}, "isotropy": entry["isotropy"].get("log10_isotropy") if isinstance(entry["isotropy"], dict) else None}
        for test, res in entry["results"].items():
            agg = res.get("aggregate", res)
            card["bias"][test] = {"d": agg.get("d"), "p": agg.get("p_value", agg.get("p")), "ci_low": agg.get("ci_low"),
                                  "ci_high": agg.get("ci_high"), "magnitude": agg.get("magnitude"),
                                  "per_layer": [l.get("d") for l in res.get("per_layer", [])],
                                  "vs_reference": versus.get((name, test))}
        src = run / "bias" / f"tsne_{name}.png"
        if src.exists():
            dst = run / "models" / name / "tsne.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            card["tsne"] = "tsne.png"
        _write_card(run, name, card)
        out[name] = card
    return out


# ----------------------------------------------------------------------------- driver


def demo(cfg: DemoConfig = DemoConfig(), log: Callable[[str], None] = print) -> Path:
    """Run every stage (reusing finished ones) and return the report's HTML path."""
    import torch

    from s3kit.report import build_report

    torch.set_num_threads(cfg.threads)
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    (run / "demo.json").write_text(json.dumps(to_dict(cfg), indent=2))
    t0 = time.perf_counter()
    data = _run_stage(run, "corpus", {"minutes": cfg.minutes, "seed": cfg.seed,
                                      "pr_corpus": {**PR_CORPUS, "minutes": cfg.pr_minutes} if _wants_pr_corpus(cfg) else None},
                      lambda: stage_corpus(run, cfg), log)
    teacher = _run_stage(run, "teacher", {"teacher": cfg.teacher, "steps": cfg.teacher_steps, "seed": cfg.seed},
                         lambda: stage_teacher(run, cfg, data), log)
    if cfg.stop_after in ("corpus", "teacher"):
        return run / "teacher"
    models = {
        "mfcc": {"upstream": "mfcc", "description": "MFCC (13 coefficients), the classical baseline", "source": "s3kit.features.MFCC"},
        "teacher-init": {"upstream": teacher["teacher_init"], "description": "tiny MelHuBERT at random initialisation (control)",
                         "source": "s3kit.methods.pretrain.build_model('melhubert', 'tiny')"},
        "teacher": {"upstream": teacher["teacher"], "description": teacher.get("description") or "tiny MelHuBERT teacher",
                    "source": "s3kit pretrain melhubert --arch tiny"},
    }
    versions = {}  # what each model is: later stages rerun when a student is remade
    for name, make in STUDENTS:
        student_settings = {"steps": cfg.distil_steps, "seed": cfg.seed, "teacher": teacher["teacher"],
                            "code": _code_key(make)}
        result = _run_stage(run, name, student_settings, lambda make=make: make(run, cfg, data, teacher), log,
                            workdir=run / name)
        models[name] = result
        versions[name] = student_settings["code"]
    settings = {"tasks": cfg.tasks, "updates": cfg.probe_updates, "pr_updates": cfg.pr_updates, "lr": cfg.probe_lr,
                "models": {n: versions.get(n, m["upstream"]) for n, m in sorted(models.items())}, "seed": cfg.seed,
                "code": _code_key(stage_probe)}
    _run_stage(run, "probe", settings, lambda: stage_probe(run, cfg, data, models), log)
    _run_stage(run, "bias", {**settings, "tests": cfg.bias_tests, "permutations": cfg.permutations,
                             "code": _code_key(stage_bias)},
               lambda: stage_bias(run, cfg, data, models), log)
    if "rewired" in models and "ks" in cfg.tasks:
        _run_stage(run, "rewiring", {"updates": cfg.probe_updates, "lr": cfg.probe_lr, "seed": cfg.seed,
                                     "rewired": versions["rewired"], "code": _code_key(stage_rewiring)},
                   lambda: stage_rewiring(run, cfg, data, models), log)
    page = build_report(run, title="s3kit demo: tiny teacher, its students, and what they keep")
    log(f"[report] {page}  ({time.perf_counter() - t0:.0f} s in all)")
    return page


def _train_cfg(run: Path, name: str, cfg: DemoConfig, **changes):
    from s3kit.train import TrainConfig

    steps = changes.pop("total_steps", cfg.distil_steps)
    base = dict(out_dir=str(run / name / "train"), total_steps=steps, lr=2e-4, warmup=0.07, log_every=25,
                val_every=max(50, steps // 3), save_every=max(50, steps // 3), seed=cfg.seed, device=cfg.device)
    base.update(changes)
    return TrainConfig(**base)


def student_distilhubert(run: Path, cfg: DemoConfig, data: dict, teacher: dict) -> dict:
    """DistilHuBERT scaled to the 4-layer teacher: a 1-layer student (the paper keeps 2 of 12)
    initialised from the teacher, with heads predicting teacher layers 2, 3, 4 (the paper: 4, 8, 12)."""
    from s3kit.config import build
    from s3kit.methods.distilhubert import DistilConfig, distill

    d = build(DistilConfig, {
        "layers": 1, "targets": [2, 3, 4], "batch_size": 24, "max_duration": 48.0,
        "train": {"out_dir": str(run / "distilhubert" / "train"), "total_steps": cfg.distil_steps,
                  "log_every": 25, "val_every": max(50, cfg.distil_steps // 3), "save_every": max(50, cfg.distil_steps // 3),
                  "seed": cfg.seed, "device": cfg.device},
    })
    result = distill(teacher["teacher"], data["sentences_train"], d, val_manifest=data["sentences_dev"])
    return {"upstream": str(result.checkpoint), "source": "s3kit distill distilhubert layers=1 targets=[2,3,4]",
            "description": f"DistilHuBERT student: teacher front end + 1 layer, heads for layers 2-4, "
                           f"{cfg.distil_steps} steps (heads dropped)"}


def student_dvcc(run: Path, cfg: DemoConfig, data: dict, teacher: dict) -> dict:
    """The on-device KWS student (`small`: 3 layers, d 256, 1.6 M, 64-d fbank, no CNN) distilled
    with the dual-view cross-correlation loss on time-averaged teacher features (learned weights
    over all teacher layers). The teacher-codebook term needs a wav2vec 2.0 teacher; a MelHuBERT
    has none, so this is the paper's "DVCC w/o T-codebook" row."""
    from s3kit.config import build
    from s3kit.methods.dvcc import DVCCConfig, distill_dvcc

    d = build(DVCCConfig, {
        "student": "small", "loss": "dvcc", "codebook": "none", "batch_size": 32, "max_duration": 32.0,
        "stats_cuts": 500,
        "train": {"out_dir": str(run / "dvcc" / "train"), "total_steps": cfg.distil_steps, "lr": 2e-4,
                  "log_every": 25, "val_every": max(50, cfg.distil_steps // 3),
                  "save_every": max(50, cfg.distil_steps // 3), "seed": cfg.seed, "device": cfg.device},
    })
    result = distill_dvcc(teacher["teacher"], data["keywords_train"], d, val_manifest=data["keywords_dev"])
    return {"upstream": str(result.checkpoint), "source": "s3kit distill dvcc student=small codebook=none",
            "description": f"on-device KWS student (1.6 M, fbank input) distilled with DVCC, {cfg.distil_steps} steps"}


def student_pruned(run: Path, cfg: DemoConfig, data: dict, teacher: dict) -> dict:
    """Half the heads and half the FFN rows of every layer removed by L1 score (bias paper §3.2,
    after Lin et al.), then fine-tuned to match the unpruned teacher's hidden states."""
    from s3kit.data.loader import make_loader
    from s3kit.methods import prune
    from s3kit.train import train
    from s3kit.upstream import load_upstream

    original = load_upstream(teacher["teacher"])
    model = load_upstream(teacher["teacher"])
    heads, width = prune.heads_per_layer(model)[0], prune.ffn_widths(model)[0]
    prune.prune_lowest_heads(model, per_layer=heads // 2)
    prune.prune_lowest_rows(model, per_layer=width // 2, min_rows=1)
    method = prune.PruneFinetune(prune.DistillFromOriginal(model, original))
    loader = make_loader(data["sentences_train"], max_duration=24.0, shuffle=True, seed=cfg.seed, crop=2.0)
    train(method, loader, _train_cfg(run, "pruned", cfg, lr=1e-4))
    out = prune.save_pruned(run / "pruned" / "upstream", model)
    return {"upstream": str(out), "source": "s3kit.methods.prune (head + row pruning) + fine-tuning",
            "description": f"teacher with {heads - heads // 2} of {heads} heads and {width - width // 2} of {width} FFN "
                           f"rows per layer kept, fine-tuned {cfg.distil_steps} steps"}


def student_rewired(run: Path, cfg: DemoConfig, data: dict, teacher: dict) -> dict:
    """Contrastive rewiring of the teacher on the synthetic sentences with Neutral positives (each
    sentence and its monotone TTS rendering). Twin positives barely move this small teacher: its
    utterance vectors are already spread, so InfoNCE on masked twins reaches ~0 within ten
    updates and the isotropy score even drops (docs/rewire.md); Neutral raises it, as in §3.3."""
    from s3kit.methods.rewire import RewireConfig, rewire

    steps = max(20, cfg.distil_steps // 5)
    # lr 1e-6 is the paper's for a 317 M-parameter model; a 2 M one needs a larger step to move in minutes
    rcfg = RewireConfig(mode="neutral", updates=steps, train=_train_cfg(run, "rewired", cfg, total_steps=steps, lr=5e-5,
                                                                        warmup=0, schedule="constant", optimizer="adamw", clip=None))
    out = rewire(teacher["teacher"], data["sentences_train"], rcfg, out_dir=run / "rewired",
                 neutral_manifest=data.get("sentences_neutral_train"))
    return {"upstream": str(out), "source": "s3kit rewire neutral",
            "description": f"teacher rewired with InfoNCE on Neutral positives (tau 0.04), {steps} updates"}


def student_m2ds(run: Path, cfg: DemoConfig, data: dict, teacher: dict) -> dict:
    """M2D-S (Table 5 (e)): a small ViT on noisy log-mel patches, M2D against its EMA target plus
    distillation of the teacher's layer 3 of 4 (the paper's layer 9 of 12) on clean speech."""
    from s3kit.config import build
    from s3kit.methods.m2ds import M2DSConfig, pretrain_m2ds

    steps = cfg.distil_steps
    # recipes/m2ds_demo.yaml: the paper's recipe scaled to minutes (the paper's EMA time constant
    # alone is ~20k updates)
    m = build(M2DSConfig, {
        "arch": "small", "batch_size": 16, "ema_start": 0.995, "ema_end": 0.999, "norm_max_cuts": 500,
        "teacher_layer": 3,
        "train": {"out_dir": str(run / "m2ds" / "train"), "total_steps": steps, "lr": 1e-3, "warmup": 0.06,
                  "amp": False, "log_every": 20, "val_every": max(50, steps // 3), "save_every": max(50, steps // 3),
                  "seed": cfg.seed, "device": cfg.device},
    })
    result, _ = pretrain_m2ds(data["sentences_train"], data["noise"], teacher["teacher"], m,
                              cache_dir=run / "m2ds" / "teacher_cache", progress=True)
    return {"upstream": str(result.checkpoint), "source": "s3kit pretrain m2ds --recipe recipes/m2ds_demo.yaml",
            "description": f"M2D-S small ViT (80x4 patches), {steps} steps on noisy synthetic speech, "
                           f"distilling the teacher's layer 3"}


# (name, function(run, cfg, data, teacher) -> {"upstream", "description", "source"}) of the
# student stages: every method that applies to the demo teacher.
STUDENTS: list[tuple[str, Callable]] = [
    ("distilhubert", student_distilhubert),
    ("dvcc", student_dvcc),
    ("pruned", student_pruned),
    ("rewired", student_rewired),
    ("m2ds", student_m2ds),
]
