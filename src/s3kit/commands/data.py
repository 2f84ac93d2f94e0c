"""``s3kit data``: prepare real corpora, take seeded subsets, make speaker-disjoint splits, find bad audio.

    s3kit data prepare <corpus> ROOT OUT        # OUT/<corpus>_<split>.jsonl.gz (docs/data.md)
    s3kit data subset IN OUT --fraction 0.1 --key keyword --seed 0
    s3kit data split IN OUTDIR --seed 0         # OUTDIR/{train,dev,test}.jsonl.gz, no shared speaker
    s3kit data check MANIFEST --out CLEAN       # every unusable file; CLEAN = the manifest without them
"""

from __future__ import annotations

import argparse
import inspect

SPLIT_NAMES = ("train", "dev", "test")


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


def register(subparsers) -> None:
    from s3kit.data.recipes import CORPORA
    from s3kit.data.subsets import speaker_disjoint_split, stratified_subset

    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = subparsers.add_parser("data", help="prepare corpora as lhotse manifests; subsets; splits; check for bad audio", formatter_class=fmt)
    sub = parser.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("prepare", help="a real corpus -> OUT/<corpus>_<split>.jsonl.gz", formatter_class=fmt)
    p.add_argument("corpus", choices=sorted(CORPORA))
    p.add_argument("root", help="the corpus folder as unpacked (SpEAT: a CSV or a folder of CSVs)")
    p.add_argument("out", help="folder for the manifests")
    p.add_argument("--force", action="store_true", help="rebuild manifests that already exist")
    p.add_argument("--version", default=None, help="speechcommands*: dataset version 1 or 2 (default 1)")
    p.add_argument("--name", default=None, help="noise: manifest name prefix (default noise)")
    p.add_argument("--test-sessions", type=int, nargs="+", default=None, help="iemocap: folds to write (default all present)")
    p.add_argument("--phones", action="store_true",
                   help="librispeech: add IPA phone transcripts from espeak-ng's front end (for the PR probe)")
    p.set_defaults(func=run_prepare)

    d = _defaults(stratified_subset)
    p = sub.add_parser("subset", help="a seeded, stratified fraction of a manifest", formatter_class=fmt)
    p.add_argument("input", help="manifest (*.jsonl.gz)")
    p.add_argument("output", help="manifest to write")
    p.add_argument("--fraction", type=float, required=True, help="e.g. 0.01, 0.05, 0.1")
    p.add_argument("--key", default=d["key"], help="label to stratify by; 'none' for a plain random subset")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.set_defaults(func=run_subset)

    d = _defaults(speaker_disjoint_split)
    p = sub.add_parser("split", help="speaker-disjoint train/dev/test manifests", formatter_class=fmt)
    p.add_argument("input", help="manifest (*.jsonl.gz)")
    p.add_argument("outdir", help="writes OUTDIR/{train,dev,test}.jsonl.gz")
    p.add_argument("--fractions", type=float, nargs=3, default=list(d["fractions"]), metavar=("TRAIN", "DEV", "TEST"))
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--key", default=d["key"], help="label holding the speaker")
    p.set_defaults(func=run_split)

    from s3kit.data.check import CheckConfig

    c = CheckConfig()
    p = sub.add_parser(
        "check", formatter_class=fmt,
        help="decode every cut once and report unusable audio (exit 1 when any)",
        description="Decode every cut of MANIFEST once and report every problem with its cut, file and reason: "
        "missing, unreadable, truncated, empty, too short, NaN/Inf, silent, clipped, or a sample rate, channel "
        "count or duration that differs from the manifest. Writes --report (JSON lines) and a summary table "
        "next to it (.md); with --out, the manifest without the bad cuts. Exit code 0 when clean, 1 when "
        "problems were found. See docs/data.md.")
    p.add_argument("manifest", help="manifest (*.jsonl.gz)")
    p.add_argument("--out", default=None, help="write the manifest without the bad cuts here")
    p.add_argument("--report", default="check.jsonl", help="problems, one JSON line each; the table goes to the same name with .md")
    p.add_argument("--jobs", type=int, default=4, help="decoding threads")
    p.add_argument("--min-duration", type=float, default=c.min_duration,
                   help="seconds; shorter cuts are reported (set it to your model's receptive field)")
    p.add_argument("--silence-peak", type=float, default=c.silence_peak, help="a peak |x| at or below this is silent")
    p.add_argument("--max-clipped", type=float, default=c.max_clipped, help="share of full-scale samples above which a cut is clipped")
    p.add_argument("--duration-tolerance", type=float, default=c.duration_tolerance, help="seconds")
    p.set_defaults(func=run_check)


def run_prepare(args) -> int:
    from s3kit.data.recipes import prepare

    options = {"force": args.force}
    if args.version is not None:
        options["version"] = args.version
    if args.name is not None:
        options["name"] = args.name
    if args.test_sessions is not None:
        options["test_sessions"] = args.test_sessions
    if args.phones:
        if args.corpus != "librispeech":
            raise ValueError("--phones is for librispeech (other corpora have their own labels)")
        options["phones"] = True
    splits = prepare(args.corpus, args.root, args.out, **options)
    for split, cuts in splits.items():
        print(f"{args.corpus} {split}: {len(cuts)} cuts")
    return 0


def run_subset(args) -> int:
    from s3kit.data.manifest import load_cuts, save_cuts
    from s3kit.data.subsets import stratified_subset

    cuts = load_cuts(args.input)
    key = None if str(args.key).lower() == "none" else args.key
    subset = stratified_subset(cuts, args.fraction, key=key, seed=args.seed)
    save_cuts(subset, args.output)
    print(f"{args.output}: {len(subset)} of {len(cuts)} cuts")
    return 0


def run_split(args) -> int:
    from pathlib import Path

    from s3kit.data.manifest import load_cuts, save_cuts
    from s3kit.data.subsets import speaker_disjoint_split

    cuts = load_cuts(args.input)
    parts = speaker_disjoint_split(cuts, fractions=args.fractions, seed=args.seed, key=args.key)
    for name, part in zip(SPLIT_NAMES, parts):
        path = save_cuts(part, Path(args.outdir) / f"{name}.jsonl.gz")
        print(f"{path}: {len(part)} cuts")
    return 0


def run_check(args) -> int:
    from pathlib import Path

    from s3kit.data.check import CheckConfig, check_cuts, clean_cuts, summary_table, write_report
    from s3kit.data.manifest import load_cuts, save_cuts

    cfg = CheckConfig(min_duration=args.min_duration, silence_peak=args.silence_peak, max_clipped=args.max_clipped,
                      duration_tolerance=args.duration_tolerance)
    cuts = load_cuts(args.manifest)
    report = check_cuts(cuts, cfg, jobs=args.jobs)
    table = summary_table(report)
    path = write_report(report, args.report)
    from s3kit.checkpoint import write_atomic

    write_atomic(Path(path).with_suffix(".md"), table + "\n")
    print(table)
    print(f"report: {path}")
    if args.out is not None:
        kept = clean_cuts(cuts, report)
        save_cuts(kept, args.out)
        print(f"{args.out}: {len(kept)} of {report.n_cuts} cuts")
    return 0 if report.clean else 1
