"""``s3kit compress study``: prune / distil a model step by step and chart size, speed, probe score
and SpEAT d against what was removed (wraps :func:`s3kit.eval.compression.study`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from s3kit.commands._args import add_train_bad_audio, train_bad_audio_overrides


def register(sub) -> None:
    from s3kit.eval.compression import METHODS

    p = sub.add_parser("compress", help="compression study: head / row / weight pruning and distillation vs bias",
                       description="Compress a model; one subcommand per action.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    s = actions.add_parser(
        "study",
        help="prune (head, row, weight) and distil a model, recording params, latency, probe score and SpEAT d",
        description="Bias paper §3.3: iterative head / row / weight pruning with fine-tuning between steps (the "
        "model's own pretraining loss for s3kit pretraining checkpoints, else distillation from the unpruned model) "
        "and DistilHuBERT students of several depths. After every step: parameters, sparsity, MACs, CPU latency, "
        "probe score and SpEAT d. Writes study.json, study.csv, table.md (Table 4), d_vs_removed.png (Figure 2) and "
        "distill_d.png (Figure 3). StudyConfig fields as key=value, e.g. steps_per_prune=20 max_prunes=3 "
        "row.per_step=64 row.min_rows=128 distill_steps=50 probe_updates=200.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("--model", required=True, help="s3kit pretraining checkpoint (keeps its own loss), transformers "
                   "HuBERT / wav2vec 2.0 / WavLM dir, MelHuBERT or pruned s3kit checkpoint")
    s.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    s.add_argument("--manifest", default=None, help="fine-tuning / distillation CutSet (default: "
                   "DATA/manifests/sentences_train.jsonl.gz)")
    s.add_argument("--data", default=None, help="synthetic-corpus or manifest directory (probe manifests, defaults)")
    s.add_argument("--bias", default=None, help="SpEAT stimuli: CSV (path,concept,group) or manifest (default: "
                   "DATA/manifests/speat.jsonl.gz when present)")
    s.add_argument("--probe", default=None, help="probe task (ks, ic, sid, er, pr, asr) scored after every step")
    s.add_argument("--probe-subset", default=None, help="manifest prefix of the probe task (pr: sentences, ks: keywords)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--recipe", default=None, help="recipe YAML with StudyConfig fields")
    add_train_bad_audio(s, key="on_bad_audio")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="StudyConfig fields")
    s.set_defaults(func=run_study)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


SUBSETS = {"pr": "sentences", "asr": "sentences", "ks": "keywords", "ic": "commands", "sid": "keywords", "er": "emotion"}


def _manifest(data: str | None, name: str) -> Path | None:
    if data is None:
        return None
    for cand in (Path(data) / "manifests" / name, Path(data) / name):
        if cand.exists():
            return cand
    return None


def run_study(args) -> int:
    from s3kit.commands.probe import find_manifests
    from s3kit.config import build
    from s3kit.eval.compression import StudyConfig, study

    try:
        cfg = build(StudyConfig, args.recipe, [*args.overrides, *train_bad_audio_overrides(args),
                                               f"methods=[{args.methods}]"])
        manifest = args.manifest or _manifest(args.data, "sentences_train.jsonl.gz")
        if manifest is None:
            raise ValueError("give --manifest (fine-tuning CutSet) or --data with manifests/sentences_train.jsonl.gz")
        stimuli = args.bias or _manifest(args.data, "speat.jsonl.gz")
        probe_data = None
        if args.probe:
            if args.data is None:
                raise ValueError(f"--probe {args.probe} needs --data with its train/dev/test manifests")
            probe_data = find_manifests(args.data, args.probe_subset or SUBSETS.get(args.probe, args.probe))
        report = study(args.model, manifest, args.out, cfg, stimuli=stimuli, probe_task=args.probe, probe_data=probe_data)
    except (ValueError, FileNotFoundError) as e:
        print(f"s3kit compress study: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(report['rows'])} compressed models evaluated; table: {Path(args.out) / 'table.md'}")
    return 0
