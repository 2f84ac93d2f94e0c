"""``s3kit distill METHOD``: distil a teacher into a small student (DistilHuBERT)."""

from __future__ import annotations

import argparse
import os


def register(sub) -> None:
    from s3kit.commands._args import add_train_bad_audio

    p = sub.add_parser("distill", help="distil a teacher encoder into a smaller student",
                       description="Distil a teacher into a student; one subcommand per method.")
    methods = p.add_subparsers(dest="method", metavar="METHOD")
    d = methods.add_parser(
        "distilhubert",
        help="DistilHuBERT: teacher CNN + 2 layers, heads predict teacher layers 4, 8, 12",
        description="Layer-wise distillation (Chang et al. 2022). The student is the teacher's transformers class "
        "(or an s3kit MelHuBERT for a MelHuBERT teacher) with fewer layers, initialised from the teacher; prediction heads regress the target teacher layers with "
        "L1 - log sigmoid(cos). Teacher features are cached (fp16, memory-mapped) and reused across epochs and "
        "runs. Resumes from the last checkpoint in --out. Under torchrun it trains with DDP. DistilConfig fields "
        "as key=value (e.g. layers=3 targets=[4,12] train.total_steps=1000 train.lr=1e-4).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d.add_argument("--teacher", required=True, help="transformers HuBERT / wav2vec 2.0 / WavLM directory or hub id, or an s3kit MelHuBERT checkpoint directory")
    d.add_argument("--manifest", required=True, help="training CutSet (*.jsonl.gz)")
    d.add_argument("--val-manifest", default=None, help="validation CutSet")
    d.add_argument("--recipe", default=None, help="recipe YAML (e.g. recipes/distilhubert.yaml); defaults = the paper")
    d.add_argument("--out", required=True, help="output directory (checkpoints, metrics.csv, teacher cache)")
    d.add_argument("--cache-dir", default=None, help="teacher-feature cache directory (default OUT/teacher_cache)")
    add_train_bad_audio(d)
    d.add_argument("overrides", nargs="*", metavar="key=value", help="DistilConfig fields")
    d.set_defaults(func=run_distilhubert)
    from s3kit.commands.kws import register_dvcc

    register_dvcc(methods)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_distilhubert(args) -> int:
    from s3kit.config import build
    from s3kit.methods.distilhubert import MELHUBERT, DistilConfig, distill, student_kind

    from s3kit.commands._args import train_bad_audio_overrides

    train = [f"train.{o}" for o in train_bad_audio_overrides(args)]
    cfg = build(DistilConfig, args.recipe, [*args.overrides, *train, f"train.out_dir={args.out}"])
    res = distill(args.teacher, args.manifest, cfg, val_manifest=args.val_manifest, cache_dir=args.cache_dir)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0
    last = res.val[-1] if res.val else None
    msg = f"step {res.step}: train loss {res.losses.get(res.step, float('nan')):.4f}"
    if last:
        msg += f", val loss {last[1]['loss']:.4f}"
    print(f"{msg}; checkpoint {res.checkpoint}")
    if student_kind(res.checkpoint) == MELHUBERT:
        print("the checkpoint is the export (MelHuBERT has no transformers class): load it with s3kit.load_upstream")
    else:
        print(f"export with: s3kit export --format transformers {res.checkpoint} OUT")
    return 0
