"""``s3kit probe``: SUPERB-style probing of a frozen upstream (wraps :func:`s3kit.eval.probe.run_probe`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from s3kit.commands._args import add_bad_audio

SPLITS = ("train", "dev", "test")
SPLIT_ALIASES = {"dev": ("dev", "valid", "validation")}


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def find_manifests(data: str | Path, subset: str) -> dict[str, Path]:
    """``{train, dev, test}`` manifests for ``subset`` under ``data``.

    Looks for ``<subset>_<split>.jsonl.gz`` in ``data`` and ``data/manifests``, then
    ``<subset>/<split>.jsonl.gz``; ``dev`` may also be named ``valid`` / ``validation``.
    """
    data = Path(data)
    found, tried = {}, []
    for split in SPLITS:
        for name in SPLIT_ALIASES.get(split, (split,)):
            candidates = [data / f"{subset}_{name}.jsonl.gz", data / "manifests" / f"{subset}_{name}.jsonl.gz",
                          data / subset / f"{name}.jsonl.gz"]
            tried += candidates
            hit = next((c for c in candidates if c.exists()), None)
            if hit:
                found[split] = hit
                break
    missing = [s for s in SPLITS if s not in found]
    if missing:
        have = sorted(str(p.relative_to(data)) for p in data.rglob("*.jsonl.gz"))[:20] if data.is_dir() else []
        raise FileNotFoundError(
            f"{data}: no {'/'.join(missing)} manifest for subset {subset!r} (looked for e.g. {tried[0].name}, "
            f"manifests/{tried[1].name}); manifests there: {', '.join(have) or 'none'}. "
            f"Pass --subset, or --train/--dev/--test explicitly."
        )
    return found


def register(sub) -> None:
    from s3kit.eval.probe import TASKS, ProbeConfig

    d = ProbeConfig()
    p = sub.add_parser(
        "probe",
        help="SUPERB-style probe of a frozen upstream (KS, IC, SID, ER, PR, ASR)",
        description="Train a weighted-layer probe on cached frozen-upstream features, pick the best dev "
        "checkpoint, score test; writes results.json, results.md and layer-weight plots to --out. "
        "Unset --lr / --max-updates / --eval-every use each task's s3prl default. Extra ProbeConfig "
        "fields as key=value (e.g. lstm_hidden=256).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--upstream", required=True, help="classical feature name, s3kit checkpoint, transformers dir or hub id")
    p.add_argument("--task", required=True, help=f"comma-separated tasks from {', '.join(TASKS)}")
    p.add_argument("--data", help="manifest directory (with --subset)")
    p.add_argument("--subset", help="manifest prefix, e.g. 'ks' for ks_{train,dev,test}.jsonl.gz (default: the task name)")
    for split in SPLITS:
        p.add_argument(f"--{split}", help=f"explicit {split} manifest (overrides --data)")
    p.add_argument("--out", required=True, help="output directory for results and checkpoints")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-sweep", action="store_true", help="train at every lr of --lr-grid, keep the best on dev")
    p.add_argument("--lr-grid", type=_floats, default=d.lr_grid, help="comma-separated learning rates")
    p.add_argument("--fraction", type=_floats, default=[d.fraction], help="train fraction(s), e.g. 0.01,0.05,0.1,1.0")
    p.add_argument("--seed", type=_ints, default=[d.seed], help="seed(s), comma-separated")
    p.add_argument("--layer", type=int, default=d.layer, help="probe one hidden state instead of the weighted sum")
    p.add_argument("--max-updates", type=int, default=d.max_updates)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--patience", type=int, default=d.patience, help="stop after N dev evaluations without improvement")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--cache-dir", default=d.cache_dir, help="feature cache shared across runs")
    p.add_argument("--device", default=d.device)
    p.add_argument("--recipe", help="YAML recipe with ProbeConfig fields")
    add_bad_audio(p, default=None)
    p.add_argument("overrides", nargs="*", help="ProbeConfig key=value overrides")
    p.set_defaults(func=run)


def run(args) -> int:
    import dataclasses

    from s3kit.config import build
    from s3kit.eval.probe import TASKS, ProbeConfig, results_table, run_probe, write_results
    from s3kit.upstream import load_upstream

    tasks = [t.strip() for t in args.task.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    base = build(ProbeConfig, args.recipe, args.overrides)
    base = dataclasses.replace(
        base, lr=args.lr if args.lr is not None else base.lr, lr_sweep=args.lr_sweep or base.lr_sweep,
        lr_grid=args.lr_grid, layer=args.layer if args.layer is not None else base.layer,
        max_updates=args.max_updates or base.max_updates, eval_every=args.eval_every or base.eval_every,
        patience=args.patience if args.patience is not None else base.patience, batch_size=args.batch_size,
        cache_dir=args.cache_dir, device=args.device, checkpoint_dir=str(Path(args.out) / "checkpoints"),
        on_bad_audio=args.on_bad_audio or base.on_bad_audio, max_bad_share=args.max_bad_share,
    )
    upstream = load_upstream(args.upstream)
    results = []
    for task in tasks:
        if args.train and args.dev and args.test:
            manifests = {"train": args.train, "dev": args.dev, "test": args.test}
        elif args.data:
            manifests = find_manifests(args.data, args.subset or task)
            manifests.update({s: getattr(args, s) for s in SPLITS if getattr(args, s)})
        else:
            raise SystemExit("give --data DIR (and --subset) or all of --train/--dev/--test")
        for fraction in args.fraction:
            for seed in args.seed:
                cfg = dataclasses.replace(base, fraction=fraction, seed=seed)
                results.append(run_probe(upstream, task, manifests["train"], manifests["dev"], manifests["test"], cfg))
                write_results(results, args.out)  # after every run: a long sweep keeps what it finished
    skipped: dict[tuple, dict] = {}  # one line per (task, split, cut) over fractions and seeds
    for res in results:
        for r in res.skipped_audio:
            skipped.setdefault((res.task, r["split"], r["cut"]), {"task": res.task, **r})
    if skipped:
        from s3kit.checkpoint import write_atomic
        from s3kit.data.badaudio import SKIPPED_FILE

        path = Path(args.out) / SKIPPED_FILE
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in skipped.values()))
        print(f"{len(skipped)} cuts with unusable audio were left out: see {path}")
    print(results_table(results), end="")
    print(f"results written to {Path(args.out) / 'results.json'}")
    return 0
