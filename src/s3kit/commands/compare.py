"""``s3kit compare``: paired tests of probe runs against a reference (wraps :func:`s3kit.eval.compare.compare_runs`)."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    from s3kit.eval.compare import ALPHA

    p = sub.add_parser(
        "compare",
        help="paired tests between `s3kit probe` runs of several upstreams on the same test set",
        description="Read each RUN_DIR's predictions.jsonl.gz (written by `s3kit probe`) and compare every run with "
        "the reference run on each task, fraction and seed they share: the difference (model minus reference) with "
        "its 95 % interval, the p-value (exact McNemar for accuracy, paired utterance-level bootstrap for PER / WER / "
        "DER, paired bootstrap over utterances / queries for SF slot-type F1 / QbE MTWV) "
        "and the Holm-adjusted p over the whole table; a row not significant after adjustment is marked n.s. "
        "Refuses runs scored on different test items, naming the first mismatch. Writes compare.md and "
        "compare.json to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="output directories of `s3kit probe` (two or more)")
    p.add_argument("--reference", help="run directory name (or upstream name) to compare against; default: the first RUN_DIR")
    p.add_argument("--out", default=".", help="where compare.md and compare.json go")
    p.add_argument("--alpha", type=float, default=ALPHA, help="family-wise significance level of the table (after Holm)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    p.set_defaults(func=run)


def run(args) -> int:
    from s3kit.eval.compare import compare_markdown, compare_runs, write_compare

    try:
        report = compare_runs(args.run_dirs, reference=args.reference, alpha=args.alpha, seed=args.seed)
    except ValueError as e:  # different test sets, unknown reference, nothing shared: one clear line
        print(f"s3kit compare: error: {e}", file=sys.stderr)
        return 2
    paths = write_compare(report, args.out)
    print(compare_markdown(report), end="")
    print(f"written to {paths['markdown']} and {paths['json']}")
    return 0
