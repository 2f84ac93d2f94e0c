"""``s3kit report RUN_DIR``: rebuild the HTML + Markdown report from a run's model cards."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="rebuild the report of a run directory",
        description="Render RUN_DIR/models/*/card.json into RUN_DIR/report/index.html and index.md "
        "(tables, plots, one card per model).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", help="a run directory (e.g. the demo's runs/demo)")
    p.add_argument("--title", default="s3kit report")
    p.set_defaults(func=run)


def run(args) -> int:
    from s3kit.report import build_report

    page = build_report(args.run_dir, title=args.title)
    print(f"report written to {page}")
    return 0
