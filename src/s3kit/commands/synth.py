"""``s3kit synth``: render the offline synthetic TTS corpus as lhotse manifests plus audio."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    from s3kit.data.synth import SynthConfig

    d = SynthConfig()
    p = sub.add_parser(
        "synth",
        help="make the synthetic TTS corpus (keywords, commands, sentences, noise, SpEAT stimuli)",
        description="Render speech offline with espeak-ng and flite voices (gender and accent labels, per-speaker "
        "pitch and rate) into DIR/audio and lhotse manifests in DIR/manifests: Speech Commands-style keywords, "
        "FSC-like commands with intents, sentences with phones plus monotone 'neutral' renderings, noise clips "
        "and SpEAT stimuli, with speaker-disjoint train/dev/test splits. The same seed gives identical output; "
        "a complete output for the same config is reused. Further SynthConfig fields as key=value "
        "(e.g. engines=[espeak] keyword_share=0.5).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--minutes", type=float, default=d.minutes, help="total audio to make (approximate)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (voices, splits, takes, noise)")
    p.add_argument("--num-workers", type=int, default=d.num_workers, help="worker processes (output does not depend on it)")
    p.add_argument("--force", action="store_true", help="remake even when a complete output for this config exists")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="other SynthConfig fields")
    p.set_defaults(func=run)


def run(args) -> int:
    from s3kit.config import apply_overrides
    from s3kit.data.synth import SynthConfig, synthesize_corpus
    from s3kit.data.tts import TTSError

    try:
        cfg = SynthConfig(minutes=args.minutes, seed=args.seed, num_workers=args.num_workers)
        cfg = apply_overrides(cfg, args.overrides)
        paths = synthesize_corpus(args.out, config=cfg, force=args.force, progress=not args.no_progress)
    except (TTSError, ValueError) as e:  # missing engine / bad option: one clear line
        print(f"s3kit synth: error: {e}", file=sys.stderr)
        return 2
    import json
    from pathlib import Path

    info = json.loads((Path(args.out) / "synth.json").read_text())
    print(f"{info['total_seconds'] / 60:.1f} min of audio from {len(info['voices'])} voices in {args.out}")
    for name in ("keywords_train", "commands_train", "sentences_train", "noise", "speat"):
        print(f"  {name}: {paths[name]}")
    return 0
