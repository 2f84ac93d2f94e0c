"""``s3kit report RUN_DIR``: rebuild the HTML + Markdown report from a run's model cards."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="rebuild the report of a run directory",
        description="Render RUN_DIR/models/*/card.json into RUN_DIR/report/index.html and index.md "
        "(tables, plots, one card per model). Scores show their 95 % interval; where the cards have per-item "
        "predictions (models/NAME/predictions/<task>.jsonl.gz) each model is compared with --reference "
        "(difference, interval, Holm-adjusted p, n.s. where not significant).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", help="a run directory (e.g. the demo's runs/demo)")
    p.add_argument("--title", default="s3kit report")
    p.add_argument("--reference", help="model every other is compared with (default: 'teacher' if present, else the first)")
    p.set_defaults(func=run)


def run(args) -> int:
    from s3kit.report import build_report

    try:
        page = build_report(args.run_dir, title=args.title, reference=args.reference)
    except ValueError as e:  # unknown reference, unreadable card: one clear line
        print(f"s3kit report: error: {e}", file=sys.stderr)
        return 2
    print(f"report written to {page}")
    return 0
