"""``s3kit demo``: the end-to-end job on the synthetic corpus (resumable)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from s3kit.demo import DemoConfig

    d = DemoConfig()
    p = sub.add_parser(
        "demo",
        help="synthesise a corpus, take the tiny teacher, compress it, probe and audit everything, write a report",
        description="The main job on the synthetic corpus, on CPU: corpus -> tiny MelHuBERT teacher (shipped; "
        "teacher=train pretrains one) -> students "
        "-> SUPERB-style probes, speed/size, SpEAT bias, isotropy -> rewiring analysis (isotropy, low-resource KS) "
        "-> OUT/report/index.html. Finished stages are "
        "reused on the next run; extra settings as key=value (e.g. teacher_steps=1000).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default=d.out, help="run directory")
    p.add_argument("--minutes", type=float, default=d.minutes,
                   help="main synthetic corpus size (PR uses a second, sentence-heavy corpus of pr_minutes=40; "
                        "pr_minutes=0 probes PR on the main corpus)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help=f"other DemoConfig fields: {', '.join(f for f in d.__dataclass_fields__ if f not in ('out', 'minutes', 'seed'))}")
    p.set_defaults(func=run)


def run(args) -> int:
    from s3kit.config import apply_overrides
    from s3kit.demo import DemoConfig, demo

    cfg = apply_overrides(DemoConfig(out=args.out, minutes=args.minutes, seed=args.seed), args.overrides)
    page = demo(cfg)
    print(f"open {page}")
    return 0
