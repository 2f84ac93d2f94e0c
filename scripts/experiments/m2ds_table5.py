"""M2D-S Table 5, (a) vs (e), on the synthetic corpus with the shipped demo teacher (issue #10).

Pretrains, per seed and on the same clean speech and noise:

* (a) M2D only: ``lambda_m2d=1, lambda_off=0, noise_ratio=0.2`` (Table 5 row a);
* (e) M2D-S: ``lambda_m2d=1, lambda_off=1, noise_ratio=0.2`` (Table 5 row e; the λ's of Table 5
  are switched between 0 and 1.0, §4.4);

plus the same ViT at random initialisation, then probes each encoder's keyword spotting (KS) with
one probe config (mean-pooled weighted sum of all states, SUPERB's linear utterance head; more
updates than the demo's 300 so every probe converges). It writes ``OUT/table-<probe>.md`` and
``OUT/results-<probe>.json`` (``<probe>`` names the probe settings): validation losses at the
start (the initial model) and end of pretraining (both losses for (e)), the first / last logged
training losses, and KS test accuracy per seed and the mean. Pretraining and probing are cached
separately, so ``--probe-updates`` / ``--probe-lr`` can be changed without pretraining again.

The settings are those of the demo's ``student_m2ds`` stage (``src/s3kit/demo.py``,
``recipes/m2ds_demo.yaml``): ``arch=small`` (4 × 192), batches of 16 crops of 2.08 s, lr 1e-3,
EMA 0.995 → 0.999 (the paper's 0.99995 → 0.99999 has a ~20 k-update time constant), teacher
layer 3 of the 4-layer demo MelHuBERT (the paper's layer 9 of 12). Any M2DSConfig field can be
changed with ``--set key=value`` (e.g. ``--set teacher_layer=4 --set lambda_off=0.5``); the run
directory records the settings and finished runs are reused, so the script resumes after a kill
and several invocations with different ``--seeds`` can run side by side (then one more with all
seeds prints the table from the stored results).

    python scripts/experiments/m2ds_table5.py --data runs/teacher-build30/data \\
        --out runs/h_m2ds/c30_base --seeds 0 1 2 3 4 --steps 400 --probe-updates 3000

(the 30-minute corpus: 94 KS test clips; the demo's 8-minute corpus has 25). Results: docs/m2ds.md.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
SHIPPED_TEACHER = REPO / "src" / "s3kit" / "assets" / "demo_teacher"


def demo_config(steps: int, seed: int, out_dir: Path, overrides: list[str]):
    """The demo's M2D-S config (``student_m2ds``) with ``overrides`` applied."""
    from s3kit.config import build
    from s3kit.methods.m2ds import M2DSConfig

    base = {
        "arch": "small", "batch_size": 16, "ema_start": 0.995, "ema_end": 0.999, "norm_max_cuts": 500,
        "teacher_layer": 3,
        "train": {"out_dir": str(out_dir), "total_steps": steps, "lr": 1e-3, "warmup": 0.06, "amp": False,
                  "log_every": 20, "val_every": 10 * steps, "save_every": steps, "seed": seed, "device": "cpu",
                  "progress": False},
    }
    return build(M2DSConfig, base, overrides)


@torch.no_grad()
def validation_losses(method, loader) -> dict[str, float]:
    """Mean of each loss over the validation batches (fixed crop / mask / noise per batch)."""
    was = method.training
    method.eval()
    sums: dict[str, float] = {}
    n = 0
    for batch in loader:
        out = method.validate(batch)
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n += 1
    method.train(was)
    return {k: v / max(n, 1) for k, v in sums.items()}


def logged_train_losses(metrics_csv: Path) -> dict[str, dict[str, float]]:
    """First and last logged training value of each loss: ``{"first": {...}, "last": {...}}``."""
    rows: dict[int, dict[str, float]] = {}
    with open(metrics_csv, newline="") as f:
        for r in csv.DictReader(f):
            if r["split"] == "train" and r["name"] in ("loss", "m2d", "off"):
                rows.setdefault(int(r["step"]), {})[r["name"]] = float(r["value"])
    steps = sorted(s for s, v in rows.items() if "loss" in v)
    if not steps:
        return {"first": {}, "last": {}}
    return {"first": {"step": steps[0], **rows[steps[0]]}, "last": {"step": steps[-1], **rows[steps[-1]]}}


def _speech(args):
    from lhotse import CutSet

    from s3kit.data.manifest import load_cuts

    parts = [load_cuts(args.data / "manifests" / f"{name}.jsonl.gz") for name in args.speech]
    return CutSet.from_cuts([c for p in parts for c in p]) if len(parts) > 1 else parts[0]


def _probe_key(args) -> str:
    return f"ks-lr{args.probe_lr:g}-u{args.probe_updates}-e{args.probe_eval_every}"


def pretrain_one(variant: str, seed: int, args, root: Path) -> dict:
    """Pretrain (or build, for ``init``) one encoder; the record is cached in ``root/<variant>-s<seed>``."""
    from s3kit import checkpoint
    from s3kit.data.loader import make_loader
    from s3kit.methods.m2ds import build_method, crop_seconds
    from s3kit.train.trainer import train

    run_dir = root / f"{variant}-s{seed}"
    done = run_dir / "pretrain.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    # --set (never a Table 5 key), then the Table 5 row; (e)'s λ_off from --lambda-off (Table 5: 1.0)
    cfg = demo_config(args.steps, seed, run_dir / "train", args.set).ablation("a" if variant == "init" else variant)
    if variant == "e":
        cfg = dataclasses.replace(cfg, lambda_off=args.lambda_off)
    torch.manual_seed(seed)
    speech = _speech(args)
    method = build_method(speech, args.data / "manifests" / "noise.jsonl.gz", args.teacher, cfg,
                          cache_dir=root / "teacher_cache", progress=False)
    window = crop_seconds(cfg)
    val_loader = make_loader(args.data / "manifests" / f"{args.val}.jsonl.gz", max_duration=cfg.batch_size * window,
                             max_cuts=cfg.batch_size, shuffle=False, crop=window)
    record = {"variant": variant, "seed": seed, "config": {k: v for k, v in dataclasses.asdict(cfg).items()
                                                           if k != "train"},
              "steps": 0 if variant == "init" else args.steps, "val_start": validation_losses(method, val_loader)}
    if variant == "init":
        upstream = run_dir / "upstream"
        checkpoint.save(upstream, method.checkpoint_state(), {"method": dataclasses.asdict(cfg)},
                        class_name="M2DS", **method.checkpoint_meta())
        record.update(val_end=record["val_start"], train_log={"first": {}, "last": {}})
    else:
        loader = make_loader(speech, max_duration=cfg.batch_size * window, max_cuts=cfg.batch_size, shuffle=True,
                             seed=seed, crop=window)
        result = train(method, loader, cfg.train, config=cfg)
        upstream = result.checkpoint
        record.update(val_end=validation_losses(method, val_loader),
                      train_log=logged_train_losses(Path(cfg.train.out_dir) / "metrics.csv"))
    record.update(upstream=str(upstream), pretrain_seconds=round(time.perf_counter() - t0, 1))
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.write_atomic(done, json.dumps(record, indent=2))
    return record


def probe_one(record: dict, args, root: Path) -> dict:
    """KS probe of one pretrained encoder (same probe config for every run; seed = the run's seed);
    cached per probe setting in ``root/<variant>-s<seed>/<probe key>.json``."""
    from s3kit import checkpoint
    from s3kit.eval.probe import ProbeConfig, run_probe

    done = root / f"{record['variant']}-s{record['seed']}" / f"{_probe_key(args)}.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    kw = [args.data / "manifests" / f"keywords_{s}.jsonl.gz" for s in ("train", "dev", "test")]
    pc = ProbeConfig(lr=args.probe_lr, max_updates=args.probe_updates, eval_every=args.probe_eval_every,
                     seed=record["seed"], cache_dir=str(root / "features"), device="cpu", progress=False)
    probe = run_probe(record["upstream"], "ks", *kw, pc)
    out = dict(ks_test=probe.test, ks_dev=probe.dev, ks_updates_to_best=probe.updates_to_best,
               ks_layer_weights=probe.layer_weights, probe_seconds=round(time.perf_counter() - t0, 1))
    checkpoint.write_atomic(done, json.dumps(out, indent=2))
    return out


def run_one(variant: str, seed: int, args, root: Path) -> dict:
    """Pretraining record + KS probe of one (variant, seed)."""
    record = pretrain_one(variant, seed, args, root)
    return {**record, **probe_one(record, args, root)}


def _fmt(d: dict, key: str) -> str:
    return f"{d[key]:.3f}" if key in d else "—"


def table(records: list[dict], args) -> str:
    """The Markdown report: one row per run, then the KS mean per variant."""
    names = {"a": "(a) M2D only", "e": "(e) M2D-S", "init": "random-init ViT"}
    lines = [
        f"Settings: data `{args.data}`, speech {'+'.join(args.speech)}, {args.steps} updates, teacher "
        f"`{args.teacher}`, (e) λ_off {args.lambda_off:g}, overrides {args.set or 'none'}; KS probe lr {args.probe_lr:g}, "
        f"{args.probe_updates} updates (dev every {args.probe_eval_every}).",
        "",
        "| run | seed | val L_m2d start → end | val L_off start → end | train loss first → last | "
        "KS dev | KS test | updates to best |",
        "|---|---:|---|---|---|---:|---:|---:|",
    ]
    for r in records:
        vs, ve = r["val_start"], r["val_end"]
        m2d = f"{_fmt(vs, 'm2d')} → {_fmt(ve, 'm2d')}" if "m2d" in vs and r["variant"] != "init" else "—"
        off = f"{_fmt(vs, 'off')} → {_fmt(ve, 'off')}" if "off" in vs else "—"
        tl = r["train_log"]
        tr = (f"{tl['first']['loss']:.3f} (step {tl['first']['step']}) → {tl['last']['loss']:.3f}"
              if tl.get("first") else "—")
        lines.append(f"| {names[r['variant']]} | {r['seed']} | {m2d} | {off} | {tr} | {r['ks_dev']:.3f} | "
                     f"{r['ks_test']:.3f} | {r['ks_updates_to_best']} |")
    lines += ["", "| run | seeds | KS test per seed | KS test mean ± std |", "|---|---:|---|---|"]
    for v in ("a", "e", "init"):
        rs = [r for r in records if r["variant"] == v]
        if not rs:
            continue
        acc = [r["ks_test"] for r in rs]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        lines.append(f"| {names[v]} | {len(rs)} | {' / '.join(f'{a:.3f}' for a in acc)} | "
                     f"{statistics.mean(acc):.3f} ± {sd:.3f} |")
    a = {r["seed"]: r["ks_test"] for r in records if r["variant"] == "a"}
    e = {r["seed"]: r["ks_test"] for r in records if r["variant"] == "e"}
    both = sorted(set(a) & set(e))
    if both:
        wins = sum(e[s] > a[s] for s in both)
        diff = statistics.mean(e[s] - a[s] for s in both)
        lines += ["", f"(e) − (a), paired by seed: mean {diff:+.3f}; (e) higher on {wins} of {len(both)} seeds."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO / "runs" / "demo" / "data",
                   help="synthetic corpus directory (s3kit synth / the demo's corpus stage): has manifests/")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "h_m2ds" / "base", help="output directory")
    p.add_argument("--teacher", default=str(SHIPPED_TEACHER), help="teacher upstream (the shipped demo MelHuBERT)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="pretraining (and probe) seeds")
    p.add_argument("--steps", type=int, default=400, help="pretraining updates per run (recipes/m2ds_demo.yaml)")
    p.add_argument("--runs", nargs="+", default=["a", "e", "init"], choices=["a", "e", "init"],
                   help="(a) M2D only, (e) M2D-S, init: the ViT at random initialisation")
    p.add_argument("--speech", nargs="+", default=["sentences_train"],
                   help="manifest names (under DATA/manifests) of the clean pretraining speech")
    p.add_argument("--val", default="sentences_dev", help="manifest name for the validation losses")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="M2DSConfig override applied to every run after its Table 5 row, e.g. teacher_layer=4 "
                        "(repeatable; not lambda_m2d / lambda_off / noise_ratio, which define the rows)")
    p.add_argument("--lambda-off", type=float, default=1.0,
                   help="(e)'s λ_off (Table 5 switches it between 0 and 1.0; Table 6 and the demo use 0.5)")
    p.add_argument("--probe-updates", type=int, default=1500, help="KS probe updates (best dev checkpoint is tested)")
    p.add_argument("--probe-lr", type=float, default=1e-3, help="KS probe learning rate")
    p.add_argument("--probe-eval-every", type=int, default=100, help="KS probe dev evaluation interval")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [o for o in args.set if o.split("=", 1)[0].strip() in ("lambda_m2d", "lambda_off", "noise_ratio")]
    if rows:
        p.error(f"--set {rows[0]}: that key defines the Table 5 rows; use --lambda-off for (e)'s weight")
    if not (args.data / "manifests" / "keywords_train.jsonl.gz").exists():
        p.error(f"{args.data}/manifests/keywords_train.jsonl.gz not found: pass --data a synthetic corpus directory "
                f"(e.g. runs/demo/data after the demo's corpus stage, or `s3kit synth OUT --minutes 30`)")
    args.out.mkdir(parents=True, exist_ok=True)
    # pretraining settings only: the probe can be redone with other settings on the same encoders
    settings = {"data": str(args.data), "teacher": str(args.teacher), "steps": args.steps, "speech": args.speech,
                "val": args.val, "set": args.set, **({"lambda_off": args.lambda_off} if args.lambda_off != 1.0 else {})}
    stamp = args.out / "settings.json"
    if stamp.exists() and {k: v for k, v in json.loads(stamp.read_text()).items() if k != "probe"} != settings:
        p.error(f"{args.out} holds runs made with other settings ({stamp}); pass another --out")
    stamp.write_text(json.dumps(settings, indent=2))
    records = []
    for seed in args.seeds:
        for variant in args.runs:
            r = run_one(variant, seed, args, args.out)
            print(f"[{variant} seed {seed}] KS test {r['ks_test']:.3f} (dev {r['ks_dev']:.3f}); val start "
                  f"{r['val_start']} end {r['val_end']}; {r['pretrain_seconds']} s + {r['probe_seconds']} s",
                  flush=True)
            records.append(r)
    order = {"e": 0, "a": 1, "init": 2}
    records.sort(key=lambda r: (order[r["variant"]], r["seed"]))
    md = table(records, args)
    (args.out / f"table-{_probe_key(args)}.md").write_text(md)
    (args.out / f"results-{_probe_key(args)}.json").write_text(json.dumps(records, indent=2))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
