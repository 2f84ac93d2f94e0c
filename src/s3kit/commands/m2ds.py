"""``s3kit m2ds pretrain|stats``: M2D-S pretraining (masked modeling duo + denoising distillation).

``configure_pretrain_parser`` / ``run_pretrain`` are reusable so ``s3kit pretrain m2ds`` can
expose the same options.
"""

from __future__ import annotations

import argparse


def configure_pretrain_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``pretrain`` options (same names and defaults as :func:`s3kit.methods.m2ds.pretrain_m2ds`)."""
    from s3kit.commands._args import add_train_bad_audio
    from s3kit.methods.m2ds import TABLE5

    p.add_argument("--speech", required=True, help="clean speech CutSet (*.jsonl.gz)")
    p.add_argument("--noise", default=None, help="noise CutSet mixed into the M2D input (needed when noise_ratio > 0)")
    p.add_argument("--teacher", default=None,
                   help="offline teacher: transformers HuBERT dir / hub id or s3kit checkpoint (needed when lambda_off > 0)")
    p.add_argument("--out", required=True, help="output directory (checkpoints, metrics.csv, teacher cache); rerun to resume")
    p.add_argument("--val", default=None, help="validation speech CutSet")
    p.add_argument("--recipe", default=None, help="YAML recipe of M2DSConfig fields (e.g. recipes/m2ds_demo.yaml)")
    p.add_argument("--ablation", choices=sorted(TABLE5), default=None,
                   help="Table 5 task setting: a M2D only, b distillation, c denoising distillation, "
                        "d M2D + distillation, e M2D-S (all)")
    p.add_argument("--cache-dir", default=None, help="teacher-feature cache directory (default OUT/teacher_cache)")
    add_train_bad_audio(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="M2DSConfig fields (arch=tiny teacher_layer=4 patch_time=2) or train.* TrainConfig fields")
    p.set_defaults(func=run_pretrain)
    return p


def register(sub) -> None:
    p = sub.add_parser("m2ds", help="M2D-S: masked modeling duo + denoising distillation (ViT on log-mel)",
                       description="Masked Modeling Duo for Speech (Niizumi et al., Interspeech 2023).")
    cmds = p.add_subparsers(dest="m2ds_command", metavar="SUBCOMMAND")
    pre = cmds.add_parser(
        "pretrain",
        help="pretrain an M2D-S ViT",
        description="Train a ViT on log-mel patches: masked prediction of an EMA target's outputs on noisy speech "
        "(speech + noise mixed in the linear-mel domain) plus distillation of a frozen teacher's layer on the clean "
        "speech. Defaults are the paper's (ViT-Base, 2.08 s crops, 80x4 patches, mask 0.6, alpha 0.2, "
        "lambda_off 0.5, AdamW 0.9/0.95, wd 0.05, cosine). Log-mel mean/std are computed from --speech unless "
        "norm_mean/norm_std are given, and stored in every checkpoint; checkpoints load with "
        "s3kit.load_upstream(OUT/checkpoints/step-N) as a per-frame upstream.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    configure_pretrain_parser(pre)
    st = cmds.add_parser("stats", help="log-mel mean / std of a manifest (M2D-S normalisation)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    st.add_argument("manifest", help="CutSet (*.jsonl.gz)")
    st.add_argument("--max-cuts", type=int, default=None, help="random subset size (default: the paper's 5000)")
    st.add_argument("--seed", type=int, default=0)
    st.set_defaults(func=run_stats)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_pretrain(args) -> int:
    from s3kit.config import build
    from s3kit.methods.m2ds import TABLE5, M2DSConfig, pretrain_m2ds
    from s3kit.models.m2d_vit import ViTEncoder

    from s3kit.commands._args import train_bad_audio_overrides

    ablation = [f"{k}={v}" for k, v in TABLE5[args.ablation].items()] if args.ablation else []
    train = [f"train.{o}" for o in train_bad_audio_overrides(args)]
    cfg = build(M2DSConfig, args.recipe, [*ablation, *args.overrides, *train, f"train.out_dir={args.out}"])
    result, method = pretrain_m2ds(args.speech, args.noise, args.teacher, cfg, val=args.val, cache_dir=args.cache_dir)
    enc = method.model.encoder
    n_params = sum(p.numel() for p in enc.parameters()) if isinstance(enc, ViTEncoder) else 0
    last = {k: v for k, v in result.val[-1][1].items()} if result.val else {}
    print(f"m2ds {cfg.arch}: encoder {n_params / 1e6:.2f} M parameters; log-mel mean {float(enc.norm_mean):.3f} "
          f"std {float(enc.norm_std):.3f}")
    msg = f"step {result.step}: train loss {result.losses.get(result.step, float('nan')):.4f}"
    if last:
        msg += ", val " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(last.items()))
    print(f"{msg}; checkpoint {result.checkpoint}")
    return 0


def run_stats(args) -> int:
    from s3kit.methods.m2ds import NORM_MAX_CUTS, compute_norm_stats

    mean, std = compute_norm_stats(args.manifest, args.max_cuts or NORM_MAX_CUTS, seed=args.seed)
    print(f"norm_mean={mean:.4f} norm_std={std:.4f}")
    return 0
