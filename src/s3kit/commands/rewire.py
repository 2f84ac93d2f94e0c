"""``s3kit rewire twin|neutral|mixed``: contrastive rewiring of a pretrained encoder, with analysis."""

from __future__ import annotations

import argparse
from pathlib import Path


def _common_eval(p) -> None:
    g = p.add_argument_group("analysis (base vs rewired)")
    g.add_argument("--synth", default=None,
                   help="synthetic corpus directory (s3kit synth): defaults --manifest to its sentences_train and the "
                   "analysis manifests to its keywords_{train,dev,test}")
    g.add_argument("--geometry-manifest", default=None,
                   help="utterances for isotropy and t-SNE (default: --eval-test, else none)")
    g.add_argument("--label", default="keyword", help="label that colours the t-SNE maps")
    g.add_argument("--task", default="ks", help="probe task for the low-resource table (ks, ic, sid, er, pr, asr)")
    g.add_argument("--eval-train", default=None, help="probe train manifest (no table without it)")
    g.add_argument("--eval-dev", default=None, help="probe dev manifest (picks the best update)")
    g.add_argument("--eval-test", default=None, help="probe test manifest")
    g.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.1], help="training fractions")
    g.add_argument("--seeds", type=int, nargs="+", default=[0], help="probe seeds (subset draw and init)")
    g.add_argument("--probe-updates", type=int, default=None, help="probe updates (default: the task's s3prl value)")
    g.add_argument("--probe-eval-every", type=int, default=None, help="dev evaluation interval of the probe")
    g.add_argument("--probe-lr", type=float, default=None, help="probe learning rate (default: the task's)")


def register(sub) -> None:
    from s3kit.commands._args import add_train_bad_audio
    from s3kit.methods.rewire import MODES

    p = sub.add_parser("rewire", help="contrastive rewiring of a pretrained encoder (Twin / Neutral / Mixed)",
                       description="Rewire a pretrained encoder with InfoNCE on utterance embeddings (Yang et al. 2023), "
                       "or analyse base vs rewired models.")
    modes = p.add_subparsers(dest="mode", metavar="MODE")
    helps = {"twin": "positive = the same audio with a 20 %% span zeroed",
             "neutral": "positive = a monotone TTS rendering of the transcript",
             "mixed": "positive = Twin or Neutral, a uniform choice per example; negatives = the others' twins "
                      "and neutrals (paper §2.1; mixed_negatives=chosen: the official code's drawn view only)"}
    for mode in MODES:
        m = modes.add_parser(
            mode, help=helps[mode], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            description=f"{mode.capitalize()} rewiring: InfoNCE (cosine / tau 0.04) over 4 pairs per update, dropout 0.1, "
            "AdamW lr 1e-6, audio above 90k samples halved. Writes OUT/model (a transformers directory when the input "
            "was one; load it with s3kit.load_upstream), OUT/rewire.json and training checkpoints; with analysis "
            "manifests also OUT/analysis/{geometry.json,tsne_*.png,table2.md,table2.json}. RewireConfig fields as "
            "key=value (e.g. updates=200 train.lr=1e-5 dropout=null).")
        m.add_argument("--model", required=True, help="transformers directory / hub id, or an s3kit MelHuBERT checkpoint")
        m.add_argument("--manifest", default=None, help="unlabelled rewiring CutSet (transcripts needed for neutral/mixed)")
        m.add_argument("--neutral-manifest", default=None,
                       help="Neutral renderings (cut id or 'neutral_of' = the utterance id); missing ones are synthesised")
        m.add_argument("--val-manifest", default=None, help="validation CutSet (InfoNCE on held-out pairs)")
        m.add_argument("--out", required=True, help="output directory")
        m.add_argument("--recipe", default=None, help="recipe YAML (e.g. recipes/rewire.yaml); defaults = the paper")
        add_train_bad_audio(m)
        m.add_argument("overrides", nargs="*", metavar="key=value", help="RewireConfig fields")
        _common_eval(m)
        m.set_defaults(func=run, rewire_mode=mode)
    a = modes.add_parser("analyse", help="isotropy, t-SNE and the low-resource table for base vs rewired",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         description="Compare upstreams: isotropy and t-SNE of utterance embeddings, and probes at "
                         "1/5/10 %% of the training set with updates-to-best (the paper's Table 2).")
    a.add_argument("--base", required=True, help="the model before rewiring")
    a.add_argument("--rewired", required=True, nargs="+", help="rewired model directories (name=DIR to label them)")
    a.add_argument("--out", required=True, help="output directory")
    _common_eval(a)
    a.set_defaults(func=run_analyse)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _synth_defaults(args) -> None:
    if not args.synth:
        return
    m = Path(args.synth) / "manifests"
    if not m.is_dir():
        raise SystemExit(f"--synth {args.synth}: no manifests/ directory (make one with: s3kit synth --out DIR)")
    if getattr(args, "manifest", "unset") is None:
        args.manifest = str(m / "sentences_train.jsonl.gz")
    for split in ("train", "dev", "test"):
        if getattr(args, f"eval_{split}") is None:
            setattr(args, f"eval_{split}", str(m / f"keywords_{split}.jsonl.gz"))


def _analyse(upstreams: dict, args, out: Path) -> dict:
    from s3kit.eval.probe import ProbeConfig
    from s3kit.methods.rewire import analyse

    geo = args.geometry_manifest or args.eval_test
    probe = ProbeConfig(max_updates=args.probe_updates, eval_every=args.probe_eval_every, lr=args.probe_lr)
    task = args.task if args.eval_train else None
    report = analyse(upstreams, out, geometry_cuts=geo, label=args.label, task=task, train=args.eval_train,
                     dev=args.eval_dev, test=args.eval_test, fractions=tuple(args.fractions), probe_cfg=probe,
                     seeds=tuple(args.seeds))
    for name, g in report.get("geometry", {}).items():
        print(f"{name}: log10 isotropy {g['log10_isotropy']:.2f}, mean cosine {g['mean_cosine']:.3f}")
    if "table2" in report:
        print((out / "table2.md").read_text(), end="")
    return report


def run(args) -> int:
    from s3kit.config import build
    from s3kit.methods.rewire import RewireConfig, rewire

    _synth_defaults(args)
    if args.manifest is None:
        raise SystemExit("give --manifest (or --synth DIR)")
    from s3kit.commands._args import train_bad_audio_overrides

    train = [f"train.{o}" for o in train_bad_audio_overrides(args)]
    cfg = build(RewireConfig, args.recipe, [f"mode={args.rewire_mode}", *args.overrides, *train,
                                            f"train.out_dir={args.out}"])
    out = Path(args.out)
    model_dir = rewire(args.model, args.manifest, cfg, out_dir=out, neutral_manifest=args.neutral_manifest,
                       val_manifest=args.val_manifest)
    print(f"rewired model: {model_dir}")
    if args.geometry_manifest or args.eval_test:
        _analyse({"base": args.model, args.rewire_mode: str(model_dir)}, args, out / "analysis")
    return 0


def run_analyse(args) -> int:
    _synth_defaults(args)
    ups = {"base": args.base}
    for item in args.rewired:
        name, sep, path = item.partition("=")
        ups[name if sep else Path(item).parent.name or Path(item).name] = path if sep else item
    _analyse(ups, args, Path(args.out))
    return 0
