"""``s3kit kws finetune|evaluate|export|table``: keyword spotting with the on-device student
(Yang et al., Interspeech 2023), and :func:`register_dvcc` for ``s3kit distill dvcc``."""

from __future__ import annotations

import argparse
import json

from s3kit.commands._args import IntermixedParser, add_bad_audio, add_train_bad_audio, train_bad_audio_overrides

_FMT = argparse.ArgumentDefaultsHelpFormatter


def register(sub) -> None:
    p = sub.add_parser("kws", help="keyword spotting: fine-tune, evaluate (FAR at fixed FRR), export to ONNX",
                       description="Keyword spotting with the on-device KWS student (3-layer transformer on 64-d "
                       "fbank). Distil it first with `s3kit distill dvcc`.")
    cmds = p.add_subparsers(dest="kws_command", metavar="COMMAND")

    f = cmds.add_parser("finetune", formatter_class=_FMT, help="linear layer on the last student layer, cross-entropy",
                        description="Fine-tune a KWS student (a `s3kit distill dvcc` checkpoint) with a linear "
                        "classifier on its last layer (§3.2). FinetuneConfig fields as key=value "
                        "(freeze_student=true train.total_steps=2000 train.lr=1e-4).")
    f.add_argument("--student", required=True, help="student checkpoint directory")
    f.add_argument("--manifest", required=True, help="training CutSet with 'keyword' labels")
    f.add_argument("--val-manifest", default=None, help="validation CutSet")
    f.add_argument("--recipe", default=None, help="FinetuneConfig YAML (e.g. recipes/kws_finetune.yaml)")
    f.add_argument("--out", required=True, help="output directory (checkpoints, metrics.csv); rerun to resume")
    add_train_bad_audio(f)
    f.add_argument("overrides", nargs="*", metavar="key=value", help="FinetuneConfig fields")
    f.__class__ = IntermixedParser
    f.set_defaults(func=run_finetune)

    e = cmds.add_parser("evaluate", formatter_class=_FMT, help="FAR at the baseline's FRR, clean and noisy",
                        description="Score fine-tuned models on a clean and a noisy ('playback') test set and "
                        "report FAR at the baseline's per-keyword FRR, relative to the baseline (Table 1 form). "
                        "Writes results.json, table.md and det.png.")
    e.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT",
                   help="a fine-tuned checkpoint (repeat); the first is the baseline unless --baseline")
    e.add_argument("--test", required=True, help="test CutSet")
    e.add_argument("--noise", default=None, help="noise CutSet for the playback condition")
    e.add_argument("--baseline", default=None, help="NAME of the baseline model")
    e.add_argument("--out", required=True, help="output directory")
    add_bad_audio(e)
    e.add_argument("overrides", nargs="*", metavar="key=value",
                   help="KWSEvalConfig fields (threshold=0.5 target_frr=0.05 snr_db=5)")
    e.__class__ = IntermixedParser
    e.set_defaults(func=run_evaluate)

    x = cmds.add_parser("export", formatter_class=_FMT, help="ONNX (fp32 + int8) with a parity check",
                        description="Export student + classifier to ONNX (input: raw 64-d Kaldi fbank [B, T, 64], "
                        "dynamic time axis; output: posteriors), quantise to int8 (dynamic) and compare ONNX Runtime "
                        "with PyTorch. With --test, also accuracy of each file against PyTorch.")
    x.add_argument("checkpoint", help="fine-tuned KWS checkpoint")
    x.add_argument("out", help="output directory (kws.onnx, kws.int8.onnx, labels.json, export.json)")
    x.add_argument("--no-quantize", action="store_true", help="skip the int8 model")
    x.add_argument("--test", default=None, help="test CutSet for accuracy parity")
    x.set_defaults(func=run_export)

    t = cmds.add_parser("table", formatter_class=_FMT, help="Table 1 end to end: distil, fine-tune, evaluate",
                        description="Run every row recipe (recipes/kws_*.yaml: DVCCConfig overlays) through "
                        "distillation, fine-tuning and evaluation; the first recipe is the baseline. Teacher "
                        "features are cached once. Use --distill-overrides / --finetune-overrides to scale "
                        "down (e.g. train.total_steps=300 batch_size=64).")
    t.add_argument("--recipes", nargs="+", required=True, help="row recipes, baseline first")
    t.add_argument("--teacher", required=True, help="wav2vec 2.0 teacher (transformers Wav2Vec2ForPreTraining dir "
                   "or `s3kit pretrain wav2vec2` checkpoint)")
    t.add_argument("--train", required=True, help="training CutSet (distillation and fine-tuning)")
    t.add_argument("--test", required=True, help="test CutSet")
    t.add_argument("--noise", default=None, help="noise CutSet (playback condition)")
    t.add_argument("--val", default=None, help="validation CutSet")
    t.add_argument("--finetune-recipe", default=None, help="FinetuneConfig YAML")
    t.add_argument("--distill-overrides", nargs="*", default=[], metavar="key=value")
    t.add_argument("--finetune-overrides", nargs="*", default=[], metavar="key=value")
    t.add_argument("--out", required=True, help="output directory")
    add_train_bad_audio(t)
    t.set_defaults(func=run_table_cmd)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_finetune(args) -> int:
    from s3kit.config import build
    from s3kit.eval.kws import FinetuneConfig, finetune

    train = [f"train.{o}" for o in train_bad_audio_overrides(args)]
    cfg = build(FinetuneConfig, args.recipe, [*args.overrides, *train, f"train.out_dir={args.out}"])
    res = finetune(args.student, args.manifest, cfg, val_manifest=args.val_manifest)
    msg = f"step {res.step}: train loss {res.losses.get(res.step, float('nan')):.4f}"
    if res.val:
        msg += ", " + ", ".join(f"val {k} {v:.4f}" for k, v in res.val[-1][1].items())
    print(f"{msg}; checkpoint {res.checkpoint}")
    return 0


def _models(specs: list[str]) -> dict[str, str]:
    out = {}
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--model {s!r}: use NAME=CHECKPOINT")
        out[name] = path
    return out


def run_evaluate(args) -> int:
    from s3kit.config import build
    from s3kit.eval.kws import KWSEvalConfig, evaluate

    cfg = build(KWSEvalConfig, None, [f"on_bad_audio={args.on_bad_audio}", f"max_bad_share={args.max_bad_share}",
                                      *args.overrides])
    evaluate(_models(args.model), args.test, args.noise, baseline=args.baseline, cfg=cfg, out_dir=args.out)
    from pathlib import Path

    print((Path(args.out) / "table.md").read_text())
    return 0


def run_export(args) -> int:
    from s3kit.eval.kws import export_onnx, onnx_accuracy

    info = export_onnx(args.checkpoint, args.out, quantize=not args.no_quantize)
    if args.test:
        info["accuracy_fp32"] = onnx_accuracy(info["onnx"], args.checkpoint, args.test)
        if "onnx_int8" in info:
            info["accuracy_int8"] = onnx_accuracy(info["onnx_int8"], args.checkpoint, args.test)
    print(json.dumps(info, indent=2))
    return 0


def run_table_cmd(args) -> int:
    from pathlib import Path

    from s3kit.eval.kws import run_table

    train = [f"train.{o}" for o in train_bad_audio_overrides(args)]  # the training data of both stages
    run_table(args.recipes, args.teacher, args.train, args.test, args.noise, args.out,
              distill_overrides=[*train, *args.distill_overrides], finetune_recipe=args.finetune_recipe,
              finetune_overrides=[*train, *args.finetune_overrides], val_manifest=args.val)
    print((Path(args.out) / "table.md").read_text())
    return 0


# ----------------------------------------------------------------------------- s3kit distill dvcc


def register_dvcc(methods) -> None:
    """Add ``dvcc`` to the ``s3kit distill`` method subparsers (``methods`` = its ``add_subparsers``)."""
    d = methods.add_parser(
        "dvcc",
        help="DVCC + teacher-codebook distillation into a 21 M / 1.6 M on-device KWS student",
        description="Dual-view cross-correlation (feature view + batch view, each scaled to 1) on time-averaged "
        "features, plus the wav2vec 2.0 objective with the teacher's codebook (Yang et al. 2023). The student is a "
        "3-layer transformer on 64-d fbank (student=large|small). Teacher features are a learned softmax-weighted "
        "sum of its states (teacher_layers=all|5-8|0-4,9-12), cached once. Resumes from the last checkpoint in "
        "--out. DVCCConfig fields as key=value (loss=feature codebook=none train.total_steps=1000).",
        formatter_class=_FMT,
    )
    d.add_argument("--teacher", default=None, help="wav2vec 2.0 teacher: transformers Wav2Vec2ForPreTraining "
                   "directory or `s3kit pretrain wav2vec2` checkpoint (any upstream with codebook=none)")
    d.add_argument("--manifest", required=True, help="training CutSet")
    d.add_argument("--val-manifest", default=None, help="validation CutSet")
    d.add_argument("--recipe", default=None, help="DVCCConfig YAML (e.g. recipes/kws_combined_large.yaml)")
    d.add_argument("--out", required=True, help="output directory (checkpoints, metrics.csv, teacher cache)")
    d.add_argument("--cache-dir", default=None, help="teacher-feature cache directory (default OUT/teacher_cache)")
    add_train_bad_audio(d)
    d.add_argument("overrides", nargs="*", metavar="key=value", help="DVCCConfig fields")
    d.__class__ = IntermixedParser
    d.set_defaults(func=run_dvcc)


def run_dvcc(args) -> int:
    from s3kit.config import build
    from s3kit.methods.dvcc import DVCCConfig, distill_dvcc

    train = [f"train.{o}" for o in train_bad_audio_overrides(args)]
    cfg = build(DVCCConfig, args.recipe, [*args.overrides, *train, f"train.out_dir={args.out}"])
    res = distill_dvcc(args.teacher, args.manifest, cfg, val_manifest=args.val_manifest, cache_dir=args.cache_dir)
    print(f"step {res.step}: train loss {res.losses.get(res.step, float('nan')):.4f}; checkpoint {res.checkpoint}")
    print(f"fine-tune with: s3kit kws finetune --student {res.checkpoint} --manifest TRAIN --out OUT")
    return 0
