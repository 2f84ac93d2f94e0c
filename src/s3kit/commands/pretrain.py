"""``s3kit pretrain``: MelHuBERT / HuBERT masked prediction or wav2vec 2.0 from scratch."""

from __future__ import annotations

import argparse

from s3kit.commands._args import IntermixedParser, add_train_bad_audio, train_bad_audio_overrides


def _steps(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--save-at takes comma-separated step numbers, got {text!r}")


def register(sub) -> None:
    from s3kit.commands.m2ds import configure_pretrain_parser
    from s3kit.methods.pretrain import ARCHS, KINDS, PretrainConfig

    d = PretrainConfig()
    p = sub.add_parser(
        "pretrain",
        help="pretrain a small MelHuBERT / HuBERT / wav2vec 2.0 (bias paper Table 2 sizes) or an M2D-S ViT",
        description="Pretrain an SSL encoder from scratch: s3kit pretrain KIND --help for each kind's options.",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind in KINDS:
        q = kinds.add_parser(
            kind,
            help={"melhubert": "MelHuBERT: fbank input, masked prediction of k-means ids",
                  "hubert": "HuBERT: waveform CNN, masked prediction of k-means ids",
                  "wav2vec2": "wav2vec 2.0: contrastive, quantized targets"}.get(kind, kind),
            description="Pretrain an SSL encoder from scratch. MelHuBERT and HuBERT predict k-means ids of "
            "masked frames (k-means on MFCC, or on CHECKPOINT:LAYER of a previous model); wav2vec 2.0 trains "
            "contrastively through transformers' Wav2Vec2ForPreTraining. Every checkpoint under "
            "OUT/checkpoints is an upstream (s3kit.load_upstream); HuBERT / wav2vec 2.0 also export the final "
            "encoder to OUT/transformers. Extra key=value arguments override PretrainConfig fields "
            "(model.num_layers=2, mask_prob=0.1, ...) or, prefixed with train., TrainConfig fields "
            "(train.lr=1e-4).",
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        q.add_argument("--arch", choices=sorted(ARCHS), default=None, help=f"architecture (Table 2); default: the recipe's, else {d.arch}")
        q.add_argument("--manifest", required=True, help="training CutSet (.jsonl.gz)")
        q.add_argument("--val-manifest", default=None, help="validation CutSet")
        q.add_argument("--out", required=True, help="output directory (rerun to resume)")
        q.add_argument("--recipe", default=None, help="YAML recipe: PretrainConfig fields, plus a 'train:' section")
        q.add_argument("--save-at", type=_steps, default=None, help="steps whose checkpoints are kept for good, e.g. 1000,5000")
        q.add_argument("--steps", type=int, default=None, help="total optimiser updates (train.total_steps)")
        q.add_argument("--kmeans-from", default=None,
                       help=f"k-means features: 'mfcc' (iteration 1) or CHECKPOINT:LAYER (later iterations); default: the recipe's, else {d.kmeans_from}")
        q.add_argument("--device", default="auto")
        add_train_bad_audio(q)
        q.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        q.__class__ = IntermixedParser
        q.set_defaults(func=run)
    m2ds = kinds.add_parser(
        "m2ds", help="M2D-S: ViT on log-mel, masked modeling duo + denoising distillation (same as s3kit m2ds pretrain)",
        description="M2D-S pretraining (Niizumi et al., Interspeech 2023); see docs/m2ds.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    configure_pretrain_parser(m2ds)
    m2ds.__class__ = IntermixedParser


def run(args) -> int:
    from s3kit.methods.pretrain import pretrain_from_recipe

    overrides = [f"kind={args.kind}"]
    overrides += [f"arch={args.arch}"] if args.arch else []
    overrides += [f"kmeans_from={args.kmeans_from}"] if args.kmeans_from else []
    overrides += args.overrides
    train_overrides = [f"out_dir={args.out}", f"device={args.device}", *train_bad_audio_overrides(args)]
    if args.save_at is not None:
        train_overrides.append(f"save_at={args.save_at}")
    if args.steps is not None:
        train_overrides.append(f"total_steps={args.steps}")
    result = pretrain_from_recipe(args.manifest, args.recipe, overrides, train_overrides, args.val_manifest)
    print(f"step {result.step}: last loss {result.losses.get(result.step, float('nan')):.4f}; checkpoints in {result.out_dir / 'checkpoints'}")
    return 0
