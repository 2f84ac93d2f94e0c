"""The main job: from nothing to a model card and report, on the synthetic corpus, on CPU.

Stages (each resumable: a finished stage leaves ``RUN/stages/<name>.json`` and is skipped on
the next run with the same settings and the same stages upstream; training stages also resume
from their last checkpoint). After the teacher, independent stages run side by side on
``workers`` processes (:mod:`s3kit.stages`; each worker's output in ``RUN/logs/<stage>.log``),
the longest ready one first:

1. ``corpus``    synthesise the TTS corpus (keywords, commands, sentences, noise, SpEAT sets);
2. ``teacher``   the tiny MelHuBERT teacher shipped in ``s3kit/assets/demo_teacher`` (or, with
                 ``teacher=train``, pretrain one: MFCC k-means targets), plus the same
                 architecture at random initialisation as a control;
3. students      ``distilhubert``, ``dvcc`` (on-device KWS student), ``pruned`` (head + row
                 pruning), ``rewired`` (Neutral rewiring), ``m2ds`` and plain ``m2d`` (its
                 control), each from the teacher (a stage reruns when its code changes);
4. ``probe-NAME`` SUPERB-style probes (KS, IC, SID, PR) of one model with ``probe_seeds`` seeds,
                 plus speed and size; per-item results in ``models/NAME/predictions/<task>.jsonl.gz``;
   ``task-sets``, ``tasks-NAME``  the further tasks ``extra_tasks`` (QbE, SD, speaking style,
                 ENV, MUS; SF on request) on their synthetic sets (``RUN/data/tasks``),
                 ``extra_task_seeds`` seeds, into the same cards and prediction files;
5. ``bias``      SpEAT d with p-values per model and per layer, isotropy, t-SNE;
6. ``rewiring``  teacher vs rewired: isotropy, t-SNE and low-resource KS with updates-to-best;
7. ``kws-ROW``   the DVCC comparison, one row each: no-KD baseline, DVCC, teacher vs scratch
                 codebook, fine-tuned and scored on clean and noisy keyword clips;
8. ``findings``  the ledger (``report/findings.json``): each seed paper's claims with the effect
                 measured here, its interval, Holm-adjusted p and a computed verdict;
9. ``report``    ``RUN/report/index.html`` + ``index.md``: the ledger first, a card per model
                 (``models/NAME/card.json``, written from the stages' results), tables, plots,
                 and the extra sections of ``RUN/sections/*.json``.
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
    """The demo's settings; defaults are the ``full`` preset (sized for evidence, docs/data.md),
    :data:`PRESETS` has the ``smoke`` one (a few dozen clips, for the test suite)."""

    out: str = "runs/demo"
    preset: str = "full"  # recorded only: demo_config(preset) applies PRESETS[preset]
    minutes: float = 12.0  # audio budget of what has no explicit size below (noise clips)
    seed: int = 0
    # corpus sizes per split (train, dev, test): docs/data.md gives the interval width each buys
    keywords_per_class: tuple[int, int, int] = (60, 40, 40)  # 12 KS classes
    commands_per_intent: tuple[int, int, int] = (20, 8, 8)  # 31 intents
    sentences: tuple[int, int, int] = (600, 300, 300)  # PR, distillation, rewiring (neutral: train only)
    test_speakers: int = 12
    dev_speakers: int = 5
    sid_clips: int = 10  # SID: dev and test clips per (training) speaker
    speat_targets: int = 48  # stimuli per SpEAT target group
    speat_attributes: int = 50  # stimuli per attribute group (the 25 WEAT words, twice, in other voices)
    speat_controls: int = 30  # stimuli per group of the planted / balanced SpEAT controls
    teacher: str = "shipped"  # "shipped": s3kit/assets/demo_teacher; "train": pretrain it here
    teacher_steps: int = 1500  # tiny MelHuBERT masked-prediction updates (with teacher=train)
    distil_steps: int = 300
    tasks: list[str] = field(default_factory=lambda: ["ks", "ic", "sid", "pr"])
    probe_seeds: int = 3  # each probe trained with seeds seed .. seed + probe_seeds - 1
    probe_updates: int = 300  # per probe (SUPERB's 200k is for real corpora)
    pr_minutes: float = 0.0  # > 0: PR on a second, sentence-heavy corpus of this size instead of `sentences`
    pr_updates: int = 150  # PR probe updates (docs/pretrain.md)
    probe_lr: float = 1e-3  # KS / IC / SID: SUPERB's 1e-4 is for 200k updates and under-trains in 300 (PR keeps 1e-2)
    # the `tasks` stage (docs/probe.md): SF is left out by default (its F1 stays 0 in a demo budget)
    extra_tasks: list[str] = field(default_factory=lambda: ["qbe", "sd", "style", "env", "mus"])
    extra_task_seeds: int = 1
    extra_task_updates: int = 300  # per probe of sd / sf / style (env / mus train to their own epochs)
    extra_task_sets: str = "demo"  # set sizes: "demo" or "tiny" (the smoke preset)
    kws_steps: int = 200  # KWS fine-tuning updates per row of the DVCC comparison
    kws_batch: int = 32  # clips per KWS fine-tuning update (a row costs ~0.7 s per update on one core)
    kws_distil_steps: int = 150  # codebook distillation updates of the w/ T-codebook and scratch rows (~1 s each)
    bias_tests: str = "gender,native"
    permutations: int = 100_000
    bootstrap: int = 2000  # resamples behind every interval of the findings ledger
    threads: int = 1  # torch intra-op threads: the demo's models are tiny, one thread is fastest
    workers: int = 2  # processes: corpus synthesis, and stages run side by side (s3kit.stages; 1 = one after the other)
    device: str = "auto"
    stop_after: str | None = None  # a stage name: stop there (e.g. "teacher" to build the teacher only)

    def __post_init__(self):
        if self.teacher not in ("shipped", "train"):
            raise ValueError(f"teacher={self.teacher!r}: 'shipped' or 'train'")
        if self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r}: choose one of {sorted(PRESETS)}")
        if self.extra_task_seeds < 1:
            raise ValueError(f"extra_task_seeds={self.extra_task_seeds}: need at least 1")
        unknown = sorted(set(self.extra_tasks) - set(EXTRA_TASK_SETS["demo"]))
        if unknown:
            raise ValueError(f"extra_tasks: unknown {unknown}; choose from {sorted(EXTRA_TASK_SETS['demo'])}")
        if self.extra_task_sets not in EXTRA_TASK_SETS:
            raise ValueError(f"extra_task_sets={self.extra_task_sets!r}: choose one of {sorted(EXTRA_TASK_SETS)}")
        if self.probe_seeds < 1:
            raise ValueError(f"probe_seeds={self.probe_seeds}: need at least 1")


# The smoke preset: every stage on a corpus of a few dozen clips with a handful of updates, so the
# test suite runs the whole demo (its numbers mean nothing; the ledger's verdicts are inconclusive).
PRESETS: dict[str, dict] = {
    "full": {},
    "smoke": dict(minutes=0.5, keywords_per_class=(6, 1, 2), commands_per_intent=(1, 1, 1), sentences=(12, 4, 4),
                  test_speakers=5, dev_speakers=4, sid_clips=1, speat_targets=4, speat_attributes=4, speat_controls=4,
                  distil_steps=2, probe_seeds=2, probe_updates=4, pr_updates=2, kws_steps=2, kws_distil_steps=2,
                  permutations=100, bootstrap=100, workers=1, extra_task_updates=4, extra_task_sets="tiny"),
}

# The `tasks` stage's synthetic sets: (builder in s3kit.data.synth_tasks, its size arguments) per size.
EXTRA_TASK_SETS: dict[str, dict[str, tuple[str, dict]]] = {
    # QbE: 8 terms x 3 held-out voices = 24 test queries with a true document (4 terms gave 12)
    "demo": {"qbe": ("synthesize_qbe", {"terms_per_split": 8}), "sd": ("synthesize_sd", {}), "style": ("synthesize_style", {}),
             "env": ("synthesize_sounds", {"kind": "env"}), "mus": ("synthesize_sounds", {"kind": "mus"}),
             "sf": ("synthesize_slots", {})},
    "tiny": {"qbe": ("synthesize_qbe", {"terms_per_split": 2, "docs_per_term": 1, "negative_docs": 2, "query_voices": 1}),
             "sd": ("synthesize_sd", {"mixtures": (4, 2, 2)}), "style": ("synthesize_style", {"per_split": (8, 4, 4)}),
             "env": ("synthesize_sounds", {"kind": "env", "per_class": (2, 1, 1), "seconds": 1.0}),
             "mus": ("synthesize_sounds", {"kind": "mus", "per_class": (2, 1, 1), "seconds": 1.0}),
             "sf": ("synthesize_slots", {"per_split": (8, 4, 4)})},
}


def demo_config(preset: str = "full", **changes) -> DemoConfig:
    """A :class:`DemoConfig` with a preset's values, then ``changes``."""
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}: choose one of {sorted(PRESETS)}")
    return DemoConfig(**{**PRESETS[preset], "preset": preset, **changes})


def _run_stage(run: Path, name: str, settings: dict, fn: Callable[[], dict], log, workdir: Path | None = None) -> dict:
    """:func:`s3kit.stages.run_stage`: run ``fn`` in this process unless the stage finished earlier
    with the same settings (``workdir``: kept to resume, wiped when the settings changed)."""
    from s3kit.stages import run_stage

    return run_stage(run, name, settings, fn, log, workdir)


# ----------------------------------------------------------------------------- stages


# PR needs hundreds of sentences: the main corpus has a few dozen, on which every model's PER is
# 0.85-1.0 and the ranking is noise (issue #6; docs/pretrain.md "PR on the synthetic corpus").
# A second, sentence-heavy corpus with the same seed has the same speaker splits.
PR_CORPUS = dict(sentence_share=0.8, keyword_share=0.05, command_share=0.05, noise_share=0.05, speat_share=0.05)


def _wants_pr_corpus(cfg: DemoConfig) -> bool:
    return "pr" in cfg.tasks and cfg.pr_minutes > 0 and cfg.stop_after not in ("corpus", "teacher")


def _corpus_options(cfg: DemoConfig) -> dict:
    return dict(keywords_per_class=tuple(cfg.keywords_per_class), commands_per_intent=tuple(cfg.commands_per_intent),
                sentences=tuple(cfg.sentences), test_speakers=cfg.test_speakers, dev_speakers=cfg.dev_speakers,
                speat_targets=cfg.speat_targets, speat_attributes=cfg.speat_attributes,
                speat_controls=cfg.speat_controls, neutral_splits=("train",))


def stage_corpus(run: Path, cfg: DemoConfig) -> dict:
    from s3kit.data.synth import synthesize_corpus

    paths = synthesize_corpus(run / "data", minutes=cfg.minutes, seed=cfg.seed, num_workers=cfg.workers,
                              **_corpus_options(cfg))
    if _wants_pr_corpus(cfg):
        pr = synthesize_corpus(run / "data_pr", minutes=cfg.pr_minutes, seed=cfg.seed, num_workers=cfg.workers,
                               test_speakers=cfg.test_speakers, dev_speakers=cfg.dev_speakers, **PR_CORPUS)
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


def _probe_config(run: Path, cfg: DemoConfig, task: str, seed: int, **changes):
    from s3kit.eval.probe import ProbeConfig

    updates = cfg.pr_updates if task == "pr" else cfg.probe_updates
    return ProbeConfig(max_updates=updates, eval_every=max(25, updates // 6) if updates >= 25 else updates, seed=seed,
                       lr=None if task == "pr" else cfg.probe_lr, cache_dir=str(run / "cache" / "features"),
                       device=cfg.device, progress=False, **changes)


def summarise_seeds(results: list, lines: list[dict], seed: int = 0) -> dict:
    """A card's probe entry from the ProbeResults of several seeds on one test set: ``score`` =
    the mean over seeds, ``n`` test items, ``ci_low`` / ``ci_high`` = the utterance bootstrap of
    the seed-mean score (test-set sampling), ``seed_ci_low`` / ``seed_ci_high`` = the t interval
    over seeds (probe training), and ``per_seed``."""
    from s3kit.eval import stats
    from s3kit.eval.findings import item_values

    _, values, weights = item_values(lines)
    items = stats.bootstrap_rate(values, weights, seed=seed)
    over = stats.seed_summary([r.test for r in results], bounds=stats.metric_bounds(results[0].metric))
    first = results[0]
    return {"metric": first.metric, "score": over.mean, "n": items.n, "ci_low": items.ci_low, "ci_high": items.ci_high,
            "seeds": len(results), "seed_sd": over.sd, "seed_ci_low": over.ci_low, "seed_ci_high": over.ci_high,
            "dev": float(sum(r.dev for r in results) / len(results)),
            "updates_to_best": float(sum(r.updates_to_best for r in results) / len(results)),
            "layer_weights": [float(sum(w) / len(results)) for w in zip(*(r.layer_weights for r in results))],
            "per_seed": [{"seed": r.seed, "score": r.test, "n": r.n, "ci_low": r.ci_low, "ci_high": r.ci_high,
                          "dev": r.dev, "updates_to_best": r.updates_to_best} for r in results]}


def probe_seeds(cfg: DemoConfig) -> list[int]:
    return [cfg.seed + k for k in range(cfg.probe_seeds)]


PROBE_SUBSETS = {"ks": "keywords", "ic": "commands", "sid": "sid", "pr": "pr"}  # task -> manifests in `data`


def probe_model(run: Path, cfg: DemoConfig, data: dict, name: str, info: dict) -> dict:
    """Speed / size and the SUPERB-style probes (``probe_seeds`` seeds) of one model: its card
    (``name``, ``description``, ``source``, ``efficiency``, ``probe``); every seed's per-item
    results go to ``models/NAME/predictions/<task>.jsonl.gz``. ``data`` holds the ``sid_*``
    splits of :func:`_sid_splits` when SID is probed."""
    from s3kit.eval.efficiency import measure
    from s3kit.eval.probe import run_probe, write_predictions
    from s3kit.upstream import load_upstream

    up = load_upstream(info["upstream"])
    card = {"name": name, "description": info["description"], "source": info["source"],
            "efficiency": measure(up, seconds=2.0, repeats=3).to_dict(), "probe": {}}
    for task in cfg.tasks:
        sub = PROBE_SUBSETS[task]
        train, dev, test = (data[f"{sub}_{s}"] for s in ("train", "dev", "test"))
        runs = [run_probe(up, task, train, dev, test, _probe_config(run, cfg, task, seed)) for seed in probe_seeds(cfg)]
        lines = [{"seed": r.seed, **item} for r in runs for item in r.predictions]
        write_predictions(lines, run / "models" / name / "predictions" / f"{task}.jsonl.gz")
        card["probe"][task] = summarise_seeds(runs, lines, cfg.seed)
    return card


def stage_probe(run: Path, cfg: DemoConfig, data: dict, models: dict[str, dict]) -> dict:
    """:func:`probe_model` of every model, one after the other, into the model cards; returns
    ``{model: {task: entry}}`` (the driver runs :func:`probe_model` as one job per model)."""
    if "sid" in cfg.tasks and "sid_train" not in data:
        data = {**data, **sid_data(run, data, cfg.sid_clips)}
    results = {}
    for name, info in models.items():
        card = probe_model(run, cfg, data, name, info)
        _write_card(run, name, card)
        results[name] = card["probe"]
    return results


def build_task_sets(run: Path, cfg: DemoConfig) -> dict:
    """The ``tasks`` stage's synthetic sets (:data:`EXTRA_TASK_SETS`), built under
    ``RUN/data/tasks/<task>``: ``{task: [train, dev, test]}`` manifest paths (QbE: documents,
    dev queries, test queries)."""
    from s3kit.data import synth_tasks

    sets = {}
    for task in cfg.extra_tasks:
        builder, sizes = EXTRA_TASK_SETS[cfg.extra_task_sets][task]
        paths = getattr(synth_tasks, builder)(run / "data" / "tasks" / task, seed=cfg.seed, **sizes)
        keys = ("qbe_docs", "qbe_dev", "qbe_test") if task == "qbe" else tuple(f"{task}_{s}" for s in ("train", "dev", "test"))
        sets[task] = [str(paths[k]) for k in keys]
    return sets


def tasks_for_model(run: Path, cfg: DemoConfig, sets: dict, name: str, info: dict) -> dict:
    """The further tasks (``cfg.extra_tasks``) of one model on the sets of :func:`build_task_sets`:
    per-item results (with ``seed``) in ``models/NAME/predictions/<task>.jsonl.gz`` and, per task,
    the card entry of :func:`summarise_seeds` (QbE, zero-shot, runs once: its interval is its own
    query bootstrap). Returns ``{task: entry}``."""
    from s3kit.eval.probe import ProbeConfig, run_probe, write_predictions
    from s3kit.eval.tasks import run_task
    from s3kit.eval.tasks.sd import SDConfig
    from s3kit.upstream import load_upstream

    updates = cfg.extra_task_updates
    up = load_upstream(info["upstream"])
    results = {}
    for task in cfg.extra_tasks:
        splits = sets[task]
        runs = []
        for seed in (probe_seeds(cfg)[:1] if task == "qbe" else [cfg.seed + k for k in range(cfg.extra_task_seeds)]):
            base = dict(cache_dir=str(run / "cache" / "features"), device=cfg.device, progress=False, seed=seed)
            if task in ("env", "mus", "qbe"):  # env / mus: linear evaluation at 1e-2 to its own stopping rule
                runs.append(run_probe(up, task, *splits, ProbeConfig(lr=1e-2, **base)))
                continue
            probe = ProbeConfig(lr=1e-3, max_updates=updates, eval_every=max(1, min(50, updates // 4)), **base)
            if task == "sd":  # SD: batches of 8 mixtures, a 64-wide head (SDConfig's 256 does not train in 200 updates)
                runs.append(run_task(up, "sd", *splits, dataclasses.replace(probe, batch_size=8), SDConfig(hidden=64)))
            else:
                runs.append(run_probe(up, task, *splits, probe))
        lines = [{"seed": r.seed, **item} for r in runs for item in r.predictions]
        write_predictions(lines, run / "models" / name / "predictions" / f"{task}.jsonl.gz")
        if task in ("qbe", "sf"):  # MTWV / F1 are not per-item rates: the run's own interval
            r = runs[0]
            entry = {"metric": r.metric, "score": r.test, "n": r.n, "ci_low": r.ci_low, "ci_high": r.ci_high,
                     "seeds": len(runs), "dev": r.dev, "updates_to_best": r.updates_to_best,
                     "per_seed": [{"seed": x.seed, "score": x.test, "n": x.n, "ci_low": x.ci_low,
                                   "ci_high": x.ci_high, "dev": x.dev} for x in runs]}
            if len(runs) > 1:
                from s3kit.eval import stats

                over = stats.seed_summary([x.test for x in runs], bounds=stats.metric_bounds(r.metric))
                entry.update(score=over.mean, seed_sd=over.sd, seed_ci_low=over.ci_low, seed_ci_high=over.ci_high,
                             ci_low=None, ci_high=None)  # no pooled interval over seeds for these metrics
            if getattr(r, "extra", {}).get("test_map") is not None:
                entry["map"] = r.extra["test_map"]
        else:
            entry = summarise_seeds(runs, lines, cfg.seed)
            entry.pop("layer_weights", None)
        results[task] = entry
    return results


def _sid_splits(run: Path, data: dict, clips: int = 1) -> tuple[str, str, str]:
    """Speaker ID over the keyword clips of the *train* speakers, split by take (SUPERB SID
    splits VoxCeleb1 utterances of the same 1 251 speakers): per speaker the last ``clips``
    clips are test, the ``clips`` before them dev, the rest train (speakers with too few skipped)."""
    from s3kit.data.manifest import load_cuts, save_cuts

    from lhotse import CutSet

    out = run / "data" / "sid"  # remade every time (seconds): follows the corpus it is cut from
    paths = tuple(out / f"sid_{s}.jsonl.gz" for s in ("train", "dev", "test"))

    by_speaker: dict[str, list] = {}
    for c in sorted(load_cuts(data["keywords_train"]), key=lambda c: c.id):
        if c.supervisions and c.supervisions[0].speaker:  # silence / noise clips have no speaker
            by_speaker.setdefault(c.supervisions[0].speaker, []).append(c)
    parts = {"train": [], "dev": [], "test": []}
    for speaker_clips in by_speaker.values():
        if len(speaker_clips) < 2 * clips + 1:
            continue
        parts["test"] += speaker_clips[-clips:]
        parts["dev"] += speaker_clips[-2 * clips:-clips]
        parts["train"] += speaker_clips[:-2 * clips]

    for (split, items), p in zip(parts.items(), paths):
        save_cuts(CutSet.from_cuts(items), p)
    return tuple(str(p) for p in paths)


def sid_data(run: Path, data: dict, clips: int = 1) -> dict:
    """``{"sid_train": ..., "sid_dev": ..., "sid_test": ...}``: the manifests of :func:`_sid_splits`."""
    return dict(zip(("sid_train", "sid_dev", "sid_test"), _sid_splits(run, data, clips)))


# Training fractions of the low-resource table. The paper's 1 %, 5 %, 10 % of SUPERB KS are
# 500-5 000 clips; of the demo's 720 training clips 1 % would be 7, so the demo scales them up.
DEMO_FRACTIONS = (0.1, 0.25, 1.0)


def stage_rewiring(run: Path, cfg: DemoConfig, data: dict, models: dict[str, dict]) -> dict:
    """The rewiring paper's §3.3 analyses, teacher vs rewired: isotropy and t-SNE of the keyword
    test clips, and KS probes on fractions of the training set with updates-to-best (its Table 2),
    written as a report section (RUN/sections/rewiring.json); per-item results of every probe in
    ``rewiring/predictions/<model>_<fraction>.jsonl.gz``."""
    from s3kit.eval.probe import run_probe, write_predictions
    from s3kit.eval.lowres import section_tables, summarise_low_resource
    from s3kit.methods.rewire import analyse
    from s3kit.upstream import load_upstream

    out = run / "rewiring"
    names = ("teacher", "rewired")
    rep = analyse({n: models[n]["upstream"] for n in names}, out, geometry_cuts=data["keywords_test"], label="keyword",
                  progress=False)
    rows, predictions = [], []
    for fraction in DEMO_FRACTIONS:
        for name in names:
            up = load_upstream(models[name]["upstream"])
            up.name = name
            runs = [run_probe(up, "ks", data["keywords_train"], data["keywords_dev"], data["keywords_test"],
                              _probe_config(run, cfg, "ks", seed, fraction=fraction)) for seed in probe_seeds(cfg)]
            write_predictions([{"seed": r.seed, **item} for r in runs for item in r.predictions],
                              out / "predictions" / f"{name}_{fraction:g}.jsonl.gz")
            predictions += [{"fraction": fraction, "model": name, "task": "ks", "seed": r.seed, **item}
                            for r in runs for item in r.predictions]
            rows += [{"fraction": fraction, "model": name, "seed": r.seed, "task": "ks", "metric": r.metric,
                      "higher_is_better": r.higher_is_better, "test": r.test, "dev": r.dev,
                      "updates_to_best": r.updates_to_best, "updates": r.updates, "num_train": r.num_train}
                     for r in runs]
    (out / "table2.json").write_text(json.dumps(rows, indent=2))
    geo = rep["geometry"]
    seeds = probe_seeds(cfg)
    section = {
        "title": "Rewiring: isotropy and low-resource keyword spotting (teacher vs rewired)",
        "text": "Isotropy (log10 IS, Mu & Viswanath; higher is more isotropic) and mean pairwise cosine of "
                "utterance embeddings (all layers averaged, then frames) of the keyword test clips. The KS "
                f"probe is trained on a stratified fraction of the training clips; scores and updates-to-best "
                f"are means over seeds {', '.join(map(str, seeds))} with a t interval over the seeds; the "
                f"rewired-minus-teacher rows pool each item's answers over the seeds and resample items "
                f"(paired bootstrap), Holm-adjusted over the fractions.",
        "tables": [
            {"title": "Geometry of the keyword test clips", "header": ["model", "log10 isotropy", "mean cosine"],
             "rows": [[n, f"{g['log10_isotropy']:.2f}", f"{g['mean_cosine']:.3f}"] for n, g in geo.items()]},
            *section_tables(rows, predictions, reference="teacher"),
        ],
        # paths relative to the run directory, so the report still finds them after the run moves
        "plots": [{"caption": f"t-SNE of keyword test clips: {n}", "file": f"rewiring/{g['tsne']}"} for n, g in geo.items()],
    }
    (run / "sections").mkdir(parents=True, exist_ok=True)
    (run / "sections" / "rewiring.json").write_text(json.dumps(section, indent=2))
    return {"geometry": {n: {k: g[k] for k in ("log10_isotropy", "mean_cosine")} for n, g in geo.items()},
            "table2": [{k: r[k] for k in ("fraction", "model", "test", "ci_low", "ci_high", "n_seeds", "updates_to_best")}
                       for r in summarise_low_resource(rows, predictions)]}


def _code_key(fn: Callable) -> str:
    """A short hash of a stage function's (or module's) own source: a finished stage reruns when that function
    changes (edits to the modules it calls are not tracked; delete RUN/stages/<name>.json then)."""
    import hashlib
    import inspect

    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):  # no source on disk (e.g. byte-compiled only): key on the bytecode
        source = fn.__code__.co_code.hex() + " ".join(fn.__code__.co_names)
    return hashlib.sha1(source.encode()).hexdigest()[:12]


def stage_bias(run: Path, cfg: DemoConfig, data: dict, models: dict[str, dict]) -> dict:
    """SpEAT (``cfg.bias_tests``) and isotropy of every model on the SpEAT stimuli: ``{model:
    card entries}`` (``bias``, ``isotropy``, ``tsne``), which the driver writes into the cards."""
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
        out[name] = card
    return out


SHIPPED_W2V2_TEACHER = Path(__file__).resolve().parent / "assets" / "demo_w2v2_teacher"
# a Gumbel codebook learned on the frozen shipped MelHuBERT teacher (docs/kws.md: the deviation that gives
# the codebook rows a teacher that has learned; the shipped wav2vec 2.0 teacher has barely learned)
SHIPPED_CODEBOOK_TEACHER = Path(__file__).resolve().parent / "assets" / "demo_codebook_teacher"
# The DVCC comparison (the KWS paper's Table 1 on the demo corpus): name -> how the student is made
KWS_ROWS = {
    "baseline": "no-KD baseline (random init, fine-tuned)",
    "dvcc": "DVCC w/o T-codebook (the dvcc student: MelHuBERT teacher)",
    "tcode": "w/ T-codebook (the codebook teacher: a Gumbel codebook on the frozen MelHuBERT teacher)",
    "scratch": "codebook from scratch (same teacher)",
}
KWS_CONDITIONS = {"clean": "keywords_test", "10 dB": "keywords_test_snr10", "0 dB": "keywords_test_snr0"}


def codebook_teacher_for(cfg: DemoConfig) -> Path:
    """The teacher of the codebook rows: the codebook learned on the shipped MelHuBERT teacher; with
    ``teacher=train`` (a new MelHuBERT, which that codebook does not fit) the wav2vec 2.0 demo teacher."""
    return SHIPPED_CODEBOOK_TEACHER if cfg.teacher == "shipped" else SHIPPED_W2V2_TEACHER


def kws_row(run: Path, cfg: DemoConfig, data: dict, name: str, student: str | None = None) -> dict:
    """One row of the on-device KWS comparison (:data:`KWS_ROWS`): the small student (1.6 M) from
    no-KD random init (``baseline``), from the dvcc stage (``dvcc``: pass its upstream as
    ``student``), or distilled with the codebook teacher's codebook (``tcode``) or a codebook
    learned from scratch (``scratch``, eq. 8 alone); fine-tuned ``kws_steps`` updates on the
    keyword training clips (half of them mixed with training-split noise at 0-20 dB), then scored
    on the clean and the 10 / 0 dB test clips. Posteriors go
    to ``kws/scores/<row>_<condition>.npz`` for the ledger's paired bootstrap of FAR."""
    import numpy as np

    from s3kit.config import build
    from s3kit.data.manifest import load_cuts
    from s3kit.eval import kws
    from s3kit.methods.dvcc import DVCCConfig, distill_dvcc
    from s3kit.train import TrainConfig

    if name not in KWS_ROWS:
        raise ValueError(f"kws row {name!r}: choose one of {sorted(KWS_ROWS)}")
    out = run / "kws"
    steps = max(1, cfg.kws_distil_steps)
    if student is None:
        if name == "dvcc":
            raise ValueError("kws row 'dvcc' fine-tunes the dvcc student: pass its upstream")
        kw = {"baseline": dict(teacher=None, codebook="none"), "tcode": dict(codebook="teacher"),
              "scratch": dict(codebook="scratch")}[name]
        teacher = kw.pop("teacher", str(codebook_teacher_for(cfg)))
        d = build(DVCCConfig, {
            "student": "small", "batch_size": 32, "max_duration": 32.0, "stats_cuts": 500, "loss": "none", **kw,
            "train": {"out_dir": str(out / name / "distill"), "total_steps": steps, "lr": 2e-4, "log_every": 25,
                      "val_every": max(50, steps // 3), "save_every": max(50, steps // 3), "seed": cfg.seed,
                      "device": cfg.device}})
        student = str(distill_dvcc(teacher, data["keywords_train"], d, val_manifest=data["keywords_dev"],
                                   cache_dir=out / name / "teacher_cache").checkpoint)
    # noise-augmented: the corpus's only noisy training clips are _silence_, so a classifier trained
    # on clean keywords calls every noisy test clip silence (measured: accuracy 1/12 at 10 and 0 dB)
    ft = kws.FinetuneConfig(batch_size=cfg.kws_batch, max_duration=float(cfg.kws_batch),
                            noise_manifest=data.get("noise"), train=TrainConfig(
        out_dir=str(out / name / "finetune"), total_steps=cfg.kws_steps, lr=1e-3, warmup=0.07, log_every=25,
        val_every=max(50, cfg.kws_steps // 3), save_every=max(50, cfg.kws_steps // 3), seed=cfg.seed,
        device=cfg.device))
    ckpt = kws.finetune(student, data["keywords_train"], ft, val_manifest=data["keywords_dev"]).checkpoint
    clf, classes = kws.load_classifier(ckpt)
    result = {"checkpoint": str(ckpt), "classes": classes, "accuracy": {}}
    for cond, manifest in KWS_CONDITIONS.items():
        if manifest not in data:
            continue
        cuts = load_cuts(data[manifest])
        probs, labels = kws.score(clf, cuts, classes)
        path = out / "scores" / f"{name}_{cond.replace(' ', '')}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, probs=probs, labels=labels, ids=np.array([c.id for c in cuts]))
        result["accuracy"][cond] = float((probs.argmax(1) == labels).mean())
    return result


def _embeddings(run: Path, name: str, upstream: str, cuts_path: str, tag: str):
    """Layer-mean utterance embeddings ``[N, D]`` of a manifest, cached in ``findings/emb``."""
    import numpy as np

    from s3kit.eval.embed import utterance_embeddings
    from s3kit.upstream import load_upstream

    path = run / "findings" / "emb" / f"{name}_{tag}.npy"
    if path.exists():
        return np.load(path)
    emb = utterance_embeddings(load_upstream(upstream), cuts_path, progress=False).mean(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, emb)
    return emb


def _balanced(cuts):
    from s3kit.data.manifest import get_label

    return [c for c in cuts if get_label(c, "concept") == "balanced"]


def _noise_planted(run: Path, models: dict[str, dict], data: dict):
    """Teacher embeddings ``[N, D]`` of the balanced control stimuli with a planted association:
    X and A mixed with one pink-noise clip of the test split at 10 dB, Y and B clean (cached)."""
    import numpy as np
    from lhotse import CutSet

    from s3kit.data.manifest import get_label, load_cuts
    from s3kit.eval.embed import utterance_embeddings
    from s3kit.upstream import load_upstream

    path = run / "findings" / "emb" / "teacher_noise_planted.npy"
    if path.exists():
        return np.load(path)
    noise = next(c for c in load_cuts(data["noise"])
                 if get_label(c, "noise_type") == "pink" and get_label(c, "split") == "test")
    cuts = []
    for c in _balanced(load_cuts(data["speat_controls"])):
        if get_label(c, "group") in ("x", "a"):
            span = min(c.duration, noise.duration)
            c = c.mix(noise.truncate(duration=span, preserve_id=True), snr=10).with_id(f"{c.id}_noise")
        cuts.append(c)
    emb = utterance_embeddings(load_upstream(models["teacher"]["upstream"]), CutSet.from_cuts(cuts), progress=False).mean(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, emb)
    return emb


def _speedup(models: dict[str, dict], fast: str, slow: str, repeats: int, seed: int):
    """CPU latency of ``slow`` over ``fast`` on 2 s of audio: ``repeats`` interleaved timings of
    each, the ratio of mean latencies with a bootstrap over the timing pairs."""
    import numpy as np
    import torch

    from s3kit.eval import findings as fd
    from s3kit.upstream import load_upstream

    ups = {n: load_upstream(models[n]["upstream"]).eval() for n in (fast, slow)}
    wav = torch.randn(1, 32000) * 0.1
    times = {n: [] for n in ups}
    with torch.inference_mode():
        for up in ups.values():
            up(wav)  # warm-up
        for _ in range(repeats):
            for n, up in ups.items():
                t0 = time.perf_counter()
                up(wav)
                times[n].append(time.perf_counter() - t0)
    f, s = np.array(times[fast]), np.array(times[slow])
    params = {n: sum(p.numel() for p in up.parameters()) for n, up in ups.items()}
    return fd.bootstrap(lambda idx: s[idx].mean() / f[idx].mean(), repeats, 1.0, 2000, seed), params


def _safe(fn):
    """A bootstrap statistic that is NaN where a resample cannot be scored (e.g. no positives)."""
    def wrapped(idx):
        try:
            return fn(idx)
        except ValueError:
            return float("nan")
    return wrapped


def stage_findings(run: Path, cfg: DemoConfig, data: dict, models: dict[str, dict], kws_result: dict | None) -> dict:
    """The findings ledger (module :mod:`s3kit.eval.findings`): one row per claim of the seed
    papers, measured on this run's saved per-item results, embeddings and KWS posteriors, written
    to ``report/findings.json`` and as the report's first section (``sections/00_findings.json``)."""
    import numpy as np

    from s3kit.data.manifest import get_label, load_cuts
    from s3kit.eval import findings as fd
    from s3kit.eval.bias import parse_tests, stimulus_sets
    from s3kit.eval.probe import chance_accuracy, read_predictions

    B, seed = cfg.bootstrap, cfg.seed
    rows: list[fd.Finding] = []

    def items(name: str, task: str):
        path = run / "models" / name / "predictions" / f"{task}.jsonl.gz"
        return fd.item_values(read_predictions(path)) if path.exists() else None

    def lowres(name: str, fraction: float):
        path = run / "rewiring" / "predictions" / f"{name}_{fraction:g}.jsonl.gz"
        return fd.item_values(read_predictions(path)) if path.exists() else None

    DH, KWS, M2D = "DistilHuBERT", "DVCC (on-device KWS)", "M2D-S"
    REW, BIAS, PRE = "Rewiring", "Social bias (SpEAT)", "Pretraining (MelHuBERT teacher)"
    # --- pretraining: the teacher beats its random initialisation on every probe task
    for task in cfg.tasks:
        t, init = items("teacher", task), items("teacher-init", task)
        if t is None or init is None:
            continue
        lower = task == "pr"
        est = fd.difference(t, init, n_bootstrap=B, seed=seed)
        rows.append(fd.finding(PRE, f"the pretrained teacher beats its random initialisation on {task.upper()}",
                               f"{task.upper()} {'PER' if lower else 'accuracy'}: teacher - random init", est,
                               "less" if lower else "greater"))
    if "ic" in cfg.tasks and items("teacher", "ic") is not None:
        ids, v, w = items("teacher", "ic")
        chance = chance_accuracy(load_cuts(data["commands_train"]), "ic")
        est = fd.bootstrap(lambda idx: fd.rate(v, w, idx) - chance, len(v), 0.0, B, seed)
        rows.append(fd.finding(PRE, "IC is learnable: the teacher's IC accuracy is above chance",
                               f"IC accuracy - majority-class chance ({chance:.3f})", est))
    # --- DistilHuBERT: most of the teacher's gain kept, at a fraction of the size, faster
    for task in [t for t in ("ks", "pr") if t in cfg.tasks]:
        st, t, init = items("distilhubert", task), items("teacher", task), items("teacher-init", task)
        if st is None or t is None or init is None:
            continue
        est = fd.retained(st, t, init, null=0.5, n_bootstrap=B, seed=seed)
        rows.append(fd.finding(DH, f"the student keeps most (> 1/2) of the teacher's {task.upper()} gain over random init",
                               f"(student - init) / (teacher - init), {task.upper()}", est, "greater", 0.5))
    if "distilhubert" in models:
        est, params = _speedup(models, "distilhubert", "teacher", repeats=30, seed=seed)
        ratio = params["distilhubert"] / params["teacher"]
        rows.append(fd.finding(DH, "the student runs faster on CPU than the teacher",
                               "teacher latency / student latency (2 s of audio, 1 thread)", est, "greater", 1.0,
                               note=f"parameters: {params['distilhubert'] / 1e6:.2f} M vs {params['teacher'] / 1e6:.2f} M "
                                    f"({ratio:.0%} of the teacher's; the paper's student has 25 %)"))
    # --- DVCC KWS: FAR at the baseline's FRR
    if kws_result:
        from s3kit.eval import kws

        def scores(name, cond):
            z = np.load(run / "kws" / "scores" / f"{name}_{cond.replace(' ', '')}.npz")
            return z["probs"], z["labels"]

        classes = kws_result["baseline"]["classes"]

        def far_diff(a: str, b: str, cond: str):
            pa, lab = scores(a, cond)
            pb, _ = scores(b, cond)
            pbase, _ = scores("baseline", cond)

            def stat(idx):
                op = kws.baseline_frr(pbase[idx], lab[idx], classes, target_frr=0.1)
                return (kws.detection_at(pa[idx], lab[idx], classes, op).far
                        - kws.detection_at(pb[idx], lab[idx], classes, op).far)
            return fd.bootstrap(_safe(stat), len(lab), 0.0, B, seed)

        conds = [c for c in KWS_CONDITIONS if (run / "kws" / "scores" / f"baseline_{c.replace(' ', '')}.npz").exists()]
        for cond in conds:
            rows.append(fd.finding(KWS, f"the DVCC student's FAR is below the no-KD baseline's ({cond})",
                                   f"FAR(DVCC) - FAR(no-KD) at the baseline's FRR (10 % per keyword), {cond}",
                                   far_diff("dvcc", "baseline", cond), "less"))
        rows.append(fd.finding(KWS, "the teacher-codebook student beats the codebook-from-scratch one (clean)",
                               "FAR(w/ T-codebook) - FAR(scratch codebook) at the baseline's FRR, clean",
                               far_diff("tcode", "scratch", "clean"), "less",
                               note=f"teacher: {codebook_teacher_for(cfg).name} (docs/kws.md)"))
    # --- M2D-S: denoising distillation (e) beats plain M2D (a) on KS
    if "ks" in cfg.tasks and items("m2ds", "ks") is not None and items("m2d", "ks") is not None:
        rows.append(fd.finding(M2D, "M2D-S (Table 5 e) beats plain M2D (Table 5 a) on KS",
                               "KS accuracy: M2D-S - M2D", fd.difference(items("m2ds", "ks"), items("m2d", "ks"),
                                                                          n_bootstrap=B, seed=seed)))
    # --- rewiring
    if "rewired" in models:
        et = _embeddings(run, "teacher", models["teacher"]["upstream"], data["keywords_test"], "kwtest")
        er = _embeddings(run, "rewired", models["rewired"]["upstream"], data["keywords_test"], "kwtest")
        rows.append(fd.finding(REW, "rewiring raises isotropy", "log10 isotropy of keyword test clips: rewired - teacher",
                               fd.isotropy_difference(er, et, n_bootstrap=B, seed=seed)))
        low, full = min(DEMO_FRACTIONS), max(DEMO_FRACTIONS)
        if lowres("rewired", low) is not None:
            rows.append(fd.finding(REW, f"rewiring improves low-resource KS ({low:.0%} of the training clips)",
                                   f"KS accuracy at {low:.0%}: rewired - teacher",
                                   fd.difference(lowres("rewired", low), lowres("teacher", low), n_bootstrap=B, seed=seed)))
            rows.append(fd.finding(REW, "rewiring does not cost full-data KS (drop under 0.05)",
                                   "KS accuracy at 100 %: rewired - teacher",
                                   fd.difference(lowres("rewired", full), lowres("teacher", full), null=-0.05,
                                                 n_bootstrap=B, seed=seed), "greater", -0.05))
    # --- social bias: SpEAT with targets and attributes resampled
    cuts = load_cuts(data["speat"])
    targets, A, B_ = stimulus_sets(cuts, parse_tests(cfg.bias_tests))
    emb = {n: _embeddings(run, n, models[n]["upstream"], data["speat"], "speat")
           for n in ("teacher", "pruned", "distilhubert") if n in models}
    for test in parse_tests(cfg.bias_tests):
        if test.name not in targets:
            continue
        ix, iy = targets[test.name]
        rows.append(fd.finding(BIAS, f"the teacher shows a {test.name} association (d differs from 0)",
                               f"SpEAT d, {test.name}, teacher (targets and attributes resampled)",
                               fd.speat_interval(emb["teacher"], ix, iy, A, B_, B, seed), "nonzero"))
        for student, how in (("pruned", "pruning"), ("distilhubert", "distillation")):
            if student in emb:
                rows.append(fd.finding(BIAS, f"{how} changes the {test.name} d", f"SpEAT d, {test.name}: {student} - teacher",
                                       fd.speat_interval(emb[student], ix, iy, A, B_, B, seed, baseline=emb["teacher"]),
                                       "nonzero"))
    if "speat_controls" in data:
        ccuts = load_cuts(data["speat_controls"])
        ec = _embeddings(run, "teacher", models["teacher"]["upstream"], data["speat_controls"], "controls")

        def groups(cuts, kind):
            return [[i for i, c in enumerate(cuts) if get_label(c, "concept") == kind and get_label(c, "group") == g]
                    for g in "xyab"]

        rows.append(fd.finding(BIAS, "control: a planted association (background noise) is detected",
                               "SpEAT d, balanced stimuli with pink noise at 10 dB in X and A only, teacher",
                               fd.speat_interval(_noise_planted(run, models, data), *groups(_balanced(ccuts), "balanced"),
                                                 n_bootstrap=B, seed=seed),
                               note="planted in the audio: X and A share a noise floor, Y and B are clean"))
        rows.append(fd.finding(BIAS, "control: exchangeable targets give no association", "SpEAT d, balanced control, teacher",
                               fd.speat_interval(ec, *groups(ccuts, "balanced"), n_bootstrap=B, seed=seed), "none"))
        rows.append(fd.finding(BIAS, "control: a planted pitch association (X, A 1.3x; Y, B 0.77x) is detected",
                               "SpEAT d, pitch-planted control, teacher",
                               fd.speat_interval(ec, *groups(ccuts, "planted"), n_bootstrap=B, seed=seed),
                               note="a sensitivity check: whether the layer-mean embeddings carry pitch at all"))
    ledger = fd.ledger(rows)
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "findings.json").write_text(json.dumps(ledger, indent=2))
    header, table = fd.markdown_table(ledger)
    counts = {v: sum(r["verdict"] == v for r in ledger) for v in fd.VERDICTS}
    section = {
        "title": "What the papers claim and what this run shows",
        "first": True,
        "text": "One row per claim of the seed papers, measured in this run: the effect with its 95 % bootstrap "
                "interval (test items resampled; two models on the same items resampled jointly; SpEAT resamples "
                "targets and attributes), the two-sided p of 'no effect' (of the stated threshold where there is "
                "one) and its Holm adjustment over the whole ledger. The verdict is computed (s3kit.eval.findings): "
                "supported when the interval lies on the claimed side and the adjusted p < 0.05, contradicted when "
                "it lies on the other side, otherwise inconclusive. Probe scores are averaged over "
                f"{cfg.probe_seeds} probe seeds per item. Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items())
                + f". Resolution: {B} resamples give a smallest p of {2 / (B + 1):.4f}, so the smallest Holm-adjusted p "
                f"over {len(ledger)} rows is {min(1.0, 2 / (B + 1) * len(ledger)):.3f}"
                + (" (not below 0.05: no row can be supported; raise bootstrap)" if 2 / (B + 1) * len(ledger) >= 0.05 else "")
                + ". Notes: " + "; ".join(f"{r['claim']}: {r['note']}" for r in ledger if r.get("note")),
        "tables": [{"title": "Findings ledger", "header": header, "rows": table}],
        "plots": [],
    }
    (run / "sections").mkdir(parents=True, exist_ok=True)
    (run / "sections" / "00_findings.json").write_text(json.dumps(section, indent=2))
    return {"rows": len(ledger), "verdicts": counts}


# ----------------------------------------------------------------------------- driver


# Seconds of each job at the full preset, two side by side on a 2-core CPU (fresh clone of 770d1ab): the scheduler
# starts the ready job with the costliest chain of jobs waiting for it first (s3kit.stages._ranks).
COSTS = {"distilhubert": 155, "dvcc": 235, "pruned": 115, "rewired": 35, "m2ds": 100, "m2d": 90,
         "probe": 95, "probe-mfcc": 80, "probe-dvcc": 215, "probe-m2ds": 75, "probe-m2d": 75, "task-sets": 5,
         "tasks": 20, "tasks-dvcc": 40, "tasks-m2ds": 10, "tasks-m2d": 10, "bias": 75, "rewiring": 65,
         "kws-baseline": 185, "kws-dvcc": 190, "kws-tcode": 330, "kws-scratch": 350}


def _cost(job: str) -> float:
    return COSTS.get(job, COSTS.get(job.split("-")[0], 60.0))


def demo(cfg: DemoConfig = DemoConfig(), log: Callable[[str], None] = print) -> Path:
    """Run every stage (reusing finished ones; ``cfg.workers`` of them side by side) and return
    the report's HTML path."""
    import torch

    from s3kit.report import build_report
    from s3kit.stages import Job, digest, run_jobs

    torch.set_num_threads(cfg.threads)
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    (run / "demo.json").write_text(json.dumps(to_dict(cfg), indent=2))
    t0 = time.perf_counter()
    data = _run_stage(run, "corpus", {"minutes": cfg.minutes, "seed": cfg.seed, "sizes": _corpus_options(cfg),
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
    teacher_version = digest({"teacher": cfg.teacher, "steps": cfg.teacher_steps, "seed": cfg.seed})
    # what each model is: a model's later stages rerun when it is remade
    versions = {"mfcc": "mfcc", "teacher": teacher_version, "teacher-init": teacher_version}
    jobs: list[Job] = []
    for name, make in STUDENTS:
        student_settings = {"steps": cfg.distil_steps, "seed": cfg.seed, "teacher": teacher["teacher"],
                            "corpus": _corpus_options(cfg), "code": _code_key(make)}
        versions[name] = digest(student_settings)
        jobs.append(Job(name, student_settings, make, (run, cfg, data, teacher), workdir=run / name, cost=_cost(name)))
    names = [*models, *(n for n, _ in STUDENTS)]

    def model(name: str, results: dict) -> dict:
        return models[name] if name in models else results[name]

    def everything(results: dict) -> dict[str, dict]:
        return {n: model(n, results) for n in names}

    def made(name: str) -> tuple[str, ...]:  # a student's later jobs wait for it
        return () if name in models else (name,)

    if "sid" in cfg.tasks:
        data = {**data, **sid_data(run, data, cfg.sid_clips)}
    probe_settings = {"tasks": cfg.tasks, "updates": cfg.probe_updates, "pr_updates": cfg.pr_updates,
                      "lr": cfg.probe_lr, "seed": cfg.seed, "seeds": cfg.probe_seeds, "sid_clips": cfg.sid_clips,
                      "corpus": _corpus_options(cfg), "code": _code_key(probe_model)}
    for name in names:
        jobs.append(Job(f"probe-{name}", {**probe_settings, "model": versions[name]}, probe_model,
                        lambda r, name=name: (run, cfg, data, name, model(name, r)), made(name),
                        cost=_cost(f"probe-{name}")))
    if cfg.extra_tasks:
        set_settings = {"tasks": cfg.extra_tasks, "sets": cfg.extra_task_sets, "seed": cfg.seed,
                        "code": _code_key(build_task_sets)}
        jobs.append(Job("task-sets", set_settings, build_task_sets, (run, cfg), cost=_cost("task-sets")))
        task_settings = {"sets": set_settings, "seeds": cfg.extra_task_seeds, "updates": cfg.extra_task_updates,
                         "code": _code_key(tasks_for_model)}
        for name in names:
            jobs.append(Job(f"tasks-{name}", {**task_settings, "model": versions[name]}, tasks_for_model,
                            lambda r, name=name: (run, cfg, r["task-sets"], name, model(name, r)),
                            ("task-sets", *made(name)), cost=_cost(f"tasks-{name}")))
    jobs.append(Job("bias", {"models": versions, "tests": cfg.bias_tests, "permutations": cfg.permutations,
                             "seed": cfg.seed, "corpus": _corpus_options(cfg), "code": _code_key(stage_bias)},
                    stage_bias, lambda r: (run, cfg, data, everything(r)), tuple(n for n, _ in STUDENTS), cost=_cost("bias")))
    if "rewired" in names and "ks" in cfg.tasks:  # after the KS probes of both: their feature caches are reused
        jobs.append(Job("rewiring", {"updates": cfg.probe_updates, "lr": cfg.probe_lr, "seed": cfg.seed,
                                     "seeds": cfg.probe_seeds, "corpus": _corpus_options(cfg),
                                     "models": {n: versions[n] for n in ("teacher", "rewired")},
                                     "code": _code_key(stage_rewiring)},
                        stage_rewiring, lambda r: (run, cfg, data, everything(r)),
                        ("rewired", "probe-teacher", "probe-rewired"), cost=_cost("rewiring")))
    rows = list(KWS_ROWS) if "dvcc" in names else []
    for row in rows:
        jobs.append(Job(f"kws-{row}", {"steps": cfg.kws_distil_steps, "kws_steps": cfg.kws_steps, "batch": cfg.kws_batch,
                                       "seed": cfg.seed,
                                       "corpus": _corpus_options(cfg), "code": _code_key(kws_row),
                                       "student": versions["dvcc"] if row == "dvcc" else None},
                        kws_row, lambda r, row=row: (run, cfg, data, row, r["dvcc"]["upstream"] if row == "dvcc" else None),
                        ("dvcc",) if row == "dvcc" else (), workdir=run / "kws" / row, cost=_cost(f"kws-{row}")))
    results = run_jobs(run, jobs, log, workers=cfg.workers, seed=cfg.seed, threads=cfg.threads)
    models = everything(results)
    for name in names:  # each card from its stages' results, written here only (jobs run side by side)
        card = {**results[f"probe-{name}"], **results["bias"].get(name, {})}
        card["probe"] = {**card["probe"], **(results[f"tasks-{name}"] if cfg.extra_tasks else {})}
        (run / "models" / name).mkdir(parents=True, exist_ok=True)
        (run / "models" / name / "card.json").write_text(json.dumps(card, indent=2))
    kws_result = {row: results[f"kws-{row}"] for row in rows} or None
    from s3kit.eval import findings as findings_module

    inputs = {k: v for k, v in results.items() if k.startswith(("probe-", "kws-", "rewiring", "bias"))}
    _run_stage(run, "findings", {"bootstrap": cfg.bootstrap, "tasks": cfg.tasks, "inputs": digest(inputs),
                                 "code": _code_key(stage_findings) + _code_key(findings_module)},
               lambda: stage_findings(run, cfg, data, models, kws_result), log)
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


def _m2ds_student(run: Path, cfg: DemoConfig, data: dict, teacher: dict, name: str, variant: str) -> dict:
    """A Table 5 variant (``e``: M2D-S; ``a``: M2D alone on noisy speech) of a small ViT on noisy
    log-mel patches; ``e`` distils the teacher's layer 3 of 4 (the paper's layer 9 of 12) on clean speech."""
    from s3kit.config import build
    from s3kit.methods.m2ds import M2DSConfig, pretrain_m2ds

    steps = cfg.distil_steps
    # recipes/m2ds_demo.yaml: the paper's recipe scaled to minutes (the paper's EMA time constant
    # alone is ~20k updates)
    m = build(M2DSConfig, {
        "arch": "small", "batch_size": 16, "ema_start": 0.995, "ema_end": 0.999, "norm_max_cuts": 500,
        "teacher_layer": 3,
        "train": {"out_dir": str(run / name / "train"), "total_steps": steps, "lr": 1e-3, "warmup": 0.06,
                  "amp": False, "log_every": 20, "val_every": max(50, steps // 3), "save_every": max(50, steps // 3),
                  "seed": cfg.seed, "device": cfg.device},
    }).ablation(variant)
    result, _ = pretrain_m2ds(data["sentences_train"], data["noise"], teacher["teacher"] if m.uses_teacher else None, m,
                              cache_dir=run / name / "teacher_cache", progress=True)
    return {"upstream": str(result.checkpoint), "variant": variant}


def student_m2ds(run: Path, cfg: DemoConfig, data: dict, teacher: dict) -> dict:
    """M2D-S (Table 5 (e)): M2D against its EMA target plus denoising distillation of the teacher."""
    out = _m2ds_student(run, cfg, data, teacher, "m2ds", "e")
    return {**out, "source": "s3kit pretrain m2ds --recipe recipes/m2ds_demo.yaml",
            "description": f"M2D-S small ViT (80x4 patches), {cfg.distil_steps} steps on noisy synthetic speech, "
                           f"distilling the teacher's layer 3"}


def student_m2d(run: Path, cfg: DemoConfig, data: dict, teacher: dict) -> dict:
    """Plain M2D (Table 5 (a)): the same ViT and noisy input, no teacher: M2D-S's control."""
    out = _m2ds_student(run, cfg, data, teacher, "m2d", "a")
    return {**out, "source": "s3kit pretrain m2ds --recipe recipes/m2ds_demo.yaml lambda_off=0 (Table 5 a)",
            "description": f"M2D small ViT (80x4 patches), {cfg.distil_steps} steps on noisy synthetic speech, "
                           f"no teacher (M2D-S's Table 5 (a) control)"}


# (name, function(run, cfg, data, teacher) -> {"upstream", "description", "source"}) of the
# student stages: every method that applies to the demo teacher.
STUDENTS: list[tuple[str, Callable]] = [
    ("distilhubert", student_distilhubert),
    ("dvcc", student_dvcc),
    ("pruned", student_pruned),
    ("rewired", student_rewired),
    ("m2ds", student_m2ds),
    ("m2d", student_m2d),
]
