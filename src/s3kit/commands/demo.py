"""``s3kit demo``: the end-to-end job on the synthetic corpus (resumable)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from s3kit.demo import PRESETS, DemoConfig

    d = DemoConfig()
    p = sub.add_parser(
        "demo",
        help="synthesise a corpus, take the tiny teacher, compress it, probe and audit everything, write a report",
        description="The main job on the synthetic corpus, on CPU: corpus -> tiny MelHuBERT teacher (shipped; "
        "teacher=train pretrains one) -> students "
        "-> SUPERB-style probes (3 seeds), speed/size -> further tasks (QbE, SD, style, ENV, MUS, 1 seed; "
        "extra_tasks=[...] extra_task_seeds=N, sf on request) -> SpEAT bias, isotropy -> rewiring analysis (isotropy, "
        "low-resource KS) -> DVCC KWS comparison -> findings ledger (each paper's claims: effect, 95 % interval, "
        "Holm-adjusted p, computed verdict) -> OUT/report/index.html. Independent stages run side by side on "
        "workers=N processes (default 2, one thread each; their output in OUT/logs/). Finished stages are "
        "reused on the next run; extra settings as key=value (e.g. probe_seeds=5 keywords_per_class=[80,40,40]).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default=d.out, help="run directory")
    p.add_argument("--preset", choices=sorted(PRESETS), default="full",
                   help="full: corpus and probes sized for evidence (docs/data.md); smoke: every stage on a few dozen clips "
                        "(numbers meaningless; for tests)")
    p.add_argument("--minutes", type=float, default=None,
                   help=f"audio budget of what has no explicit size (noise clips; default {d.minutes}); the sizes are "
                        "keywords_per_class, commands_per_intent, sentences, speat_* (key=value)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help=f"other DemoConfig fields: {', '.join(f for f in d.__dataclass_fields__ if f not in ('out', 'minutes', 'seed', 'preset'))}")
    p.set_defaults(func=run)


def run(args) -> int:
    from s3kit.config import apply_overrides
    from s3kit.demo import demo, demo_config

    base = demo_config(args.preset, out=args.out, seed=args.seed)
    if args.minutes is not None:
        base = apply_overrides(base, [f"minutes={args.minutes}"])
    cfg = apply_overrides(base, args.overrides)
    page = demo(cfg)
    print(f"open {page}")
    return 0
