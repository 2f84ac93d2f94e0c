"""Phone recognition (PR) probes of several upstreams on the synthetic corpus, side by side.

Why this exists: in the demo, PR gave PER 0.65-1.0 for every model and ranked the pretrained
tiny MelHuBERT below its own random initialisation (issue #6). This script reruns the demo's PR
probe (:func:`s3kit.eval.probe.run_probe`, linear CTC on a weighted sum of states) for a set
of upstreams under chosen probe settings and seeds, and prints a table with the PER, where the
dev PER peaked, and the error breakdown of the test hypotheses (insertions / deletions /
substitutions, hypothesis length / reference length), so a degenerate CTC output (all blank:
PER 1.0 from deletions; babbling: PER > 1 from insertions) is visible at a glance.

Examples::

    # the demo's own setting on the demo corpus
    python scripts/experiments/pr_probe.py --data runs/demo/data --updates 300 --lr 1e-2 --seeds 0 1

    # more sentences (a larger synthetic corpus), a grid of learning rates
    python scripts/experiments/pr_probe.py --data runs/h_pr/data30 --subsets sentences,commands \
        --updates 300 600 --lr 1e-2 1e-3 --seeds 0 1 2 --out runs/h_pr/grid

Models are ``name=upstream`` pairs (anything :func:`s3kit.upstream.load_upstream` reads: a
checkpoint directory, ``fbank``, ``mfcc``); by default the demo's teacher and teacher-init and
the two classical features.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

DEFAULT_MODELS = [
    "teacher=runs/demo/teacher/upstream",
    "teacher-init=runs/demo/teacher-init/upstream",
    "fbank=fbank",
    "mfcc=mfcc",
]

# --phones collapsed: fold distinctions espeak makes that a 1-minute probe cannot learn and that
# our voices do not reliably realise (phones are transcribed with the en-us front end for every
# voice): vowel length, r-colouring written as a separate symbol cluster, espeak's reduced ᵻ.
COLLAPSE = {"ᵻ": "ɪ", "ɚ": "ə", "əl": "l", "ɾ": "t", "aɪə": "aɪ", "iə": "i", "ɑːɹ": "ɑ", "ɔːɹ": "ɔ", "ɛɹ": "ɛ",
            "ɪɹ": "ɪ", "ʊɹ": "ʊ", "oːɹ": "oʊ", "ɜː": "ə", "ɐ": "ʌ"}


def collapse_phone(p: str) -> str:
    p = COLLAPSE.get(p, p)
    return p.replace("ː", "")


def with_cmvn(inner):
    """``inner`` with every state normalised per utterance (mean 0, std 1 per dimension over its
    valid frames): the classical baselines come un-normalised (log-mel values around -15..10,
    MFCC c0 in the hundreds), which a linear CTC probe at a constant lr of 1e-2 trains badly on."""
    import torch

    from s3kit.upstream.base import Hidden, Upstream

    class CMVN(Upstream):
        def __init__(self):
            super().__init__()
            self.inner = inner
            self.name = f"{inner.name}-cmvn"
            self.frame_rate = inner.frame_rate
            self.hidden_sizes = list(inner.hidden_sizes)

        def num_frames(self, lengths):
            return self.inner.num_frames(lengths)

        def forward(self, wavs, lengths=None):
            h = self.inner(wavs, lengths)
            valid = h.mask.unsqueeze(-1).float()  # (B, T, 1)
            n = valid.sum(1, keepdim=True).clamp_min(1.0)
            out = []
            for x in h.states:
                mean = (x * valid).sum(1, keepdim=True) / n
                std = ((((x - mean) * valid) ** 2).sum(1, keepdim=True) / n).sqrt().clamp_min(1e-5)
                out.append((x - mean) / std * valid)
            return Hidden(states=out, lengths=h.lengths, frame_rate=h.frame_rate)

    return CMVN()


def load_split(data: Path, subsets: list[str], split: str, phones: str):
    """The ``split`` manifests of ``subsets`` under ``data/manifests``, concatenated, phone labels
    optionally collapsed (features are cached by audio, so relabelled cuts reuse them)."""
    from lhotse import CutSet

    from s3kit.data.manifest import get_label, load_cuts

    cuts = []
    for sub in subsets:
        path = data / "manifests" / f"{sub}_{split}.jsonl.gz"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such manifest (is --data a synthesize_corpus output dir?)")
        cuts += [c for c in load_cuts(path) if get_label(c, "phones")]
    if phones == "voice":
        relabel_by_voice(data, cuts)
    if phones == "collapsed":
        for c in cuts:
            sup = c.supervisions[0]
            sup.custom["phones"] = " ".join(collapse_phone(p) for p in sup.custom["phones"].split())
    return CutSet.from_cuts(cuts)


def relabel_by_voice(data: Path, cuts: list) -> None:
    """Phones as each cut's own voice says them: espeak-ng's front end in the voice's language
    (a German voice reading English switches to English only for words it knows), en-us for
    flite voices (CMU lexicon). The synthesiser speaks exactly these phonemes."""
    from s3kit.data.manifest import get_label
    from s3kit.data.tts import Voice, phonemize

    voices = {Voice(**v).speaker: Voice(**v) for v in json.loads((data / "synth.json").read_text())["voices"]}
    for c in cuts:
        sup = c.supervisions[0]
        v = voices.get(sup.speaker)
        lang = v.name if v is not None and v.engine == "espeak" else "en-us"
        ph = [p for p in phonemize(get_label(c, "text"), lang) if not (p.startswith("(") and p.endswith(")"))]
        sup.custom["phones"] = " ".join(ph)


def edit_ops(ref: list[str], hyp: list[str]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of one minimum-cost Levenshtein alignment."""
    n, m = len(ref), len(hyp)
    d = [[(0, 0, 0, 0)] * (m + 1) for _ in range(n + 1)]  # (cost, sub, del, ins)
    for i in range(1, n + 1):
        d[i][0] = (i, 0, i, 0)
    for j in range(1, m + 1):
        d[0][j] = (j, 0, 0, j)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            c, s, de, ins = d[i - 1][j - 1]
            diag = (c + (ref[i - 1] != hyp[j - 1]), s + (ref[i - 1] != hyp[j - 1]), de, ins)
            c, s, de, ins = d[i - 1][j]
            up = (c + 1, s, de + 1, ins)
            c, s, de, ins = d[i][j - 1]
            left = (c + 1, s, de, ins + 1)
            d[i][j] = min(diag, up, left)
    return d[n][m][1:]


def breakdown(result, upstream, cuts: dict, cache_dir: str) -> dict:
    """Reload the best-dev probe checkpoint and decode test: error types and length ratio."""
    import torch

    from s3kit import checkpoint
    from s3kit.eval import metrics
    from s3kit.eval.features_cache import extract_features
    from s3kit.eval.probe import TASKS, Labels, ProbeConfig, _Split, build_probe

    spec = TASKS["pr"]
    labels = Labels(spec, cuts)
    feats = extract_features(upstream, cuts["test"], cache_dir, pooled=False, progress=False)
    split = _Split(cuts["test"], feats, labels)
    model = build_probe(spec, labels, len(result.layers), feats.dim, ProbeConfig(), None)
    checkpoint.load_into(model, result.checkpoint)
    model.eval()
    sub = dele = ins = ref_len = hyp_len = 0
    with torch.no_grad():
        for start in range(0, len(split), 32):
            index = list(range(start, min(start + 32, len(split))))
            states, lengths, _ = split.batch(index, "cpu")
            for i, ids in zip(index, metrics.ctc_greedy_decode(model(states, lengths), lengths)):
                ref, hyp = split.refs[i].split(), labels.decode(ids).split()
                s, d, n = edit_ops(ref, hyp)
                sub, dele, ins = sub + s, dele + d, ins + n
                ref_len, hyp_len = ref_len + len(ref), hyp_len + len(hyp)
    return {"sub": sub / ref_len, "del": dele / ref_len, "ins": ins / ref_len, "len_ratio": hyp_len / ref_len}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="runs/demo/data", help="synthesize_corpus output dir (with manifests/)")
    p.add_argument("--subsets", default="sentences", help="comma-separated subsets with phone labels to pool")
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                   help="name=upstream pairs; upstream ending in ':cmvn' is normalised per utterance (e.g. fbank:cmvn)")
    p.add_argument("--updates", type=int, nargs="+", default=[300], help="probe updates (one run per value)")
    p.add_argument("--lr", type=float, nargs="+", default=[1e-2], help="probe learning rates (one run per value)")
    p.add_argument("--eval-every", type=int, default=None, help="dev evaluations every N updates (default updates // 6, >= 25)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="probe seeds")
    p.add_argument("--phones", choices=["ipa", "collapsed", "voice"], default="ipa",
                   help="phone labels as in the manifest, collapsed, or re-transcribed in each voice's own language")
    p.add_argument("--fraction", type=float, default=1.0, help="seeded random fraction of the train utterances")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cache-dir", default="runs/h_pr/cache", help="feature cache")
    p.add_argument("--out", default="runs/h_pr/pr_probe", help="results.json and table.md go here")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-breakdown", action="store_true", help="skip the error-type breakdown")
    args = p.parse_args(argv)

    import torch

    from s3kit.eval.features_cache import extract_features
    from s3kit.eval.probe import ProbeConfig, run_probe
    from s3kit.upstream import load_upstream

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    subsets = [s for s in args.subsets.split(",") if s]
    cuts = {s: load_split(data, subsets, s, args.phones) for s in ("train", "dev", "test")}
    ntok = {s: sum(len(c.supervisions[0].custom["phones"].split()) for c in cs) for s, cs in cuts.items()}
    vocab = {t for cs in cuts.values() for c in cs for t in c.supervisions[0].custom["phones"].split()}
    info = (f"data {data} subsets {subsets} phones={args.phones}: " +
            ", ".join(f"{s} {len(cs)} utts / {sum(c.duration for c in cs):.0f} s / {ntok[s]} phones" for s, cs in cuts.items()) +
            f"; {len(vocab)} phone types")
    print(info, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.models:
        name, _, path = spec.partition("=")
        path = path or name
        cmvn = path.endswith(":cmvn")
        up = load_upstream(path.removesuffix(":cmvn"))
        if cmvn:
            up = with_cmvn(up)
        t0, c0 = time.perf_counter(), time.process_time()
        for split_cuts in cuts.values():  # cached once per upstream; timed apart from the probes
            extract_features(up, split_cuts, args.cache_dir, pooled=False, progress=False)
        print(f"{name}: features in {time.perf_counter() - t0:.1f} s ({time.process_time() - c0:.1f} s CPU)", flush=True)
        for updates in args.updates:
            for lr in args.lr:
                for seed in args.seeds:
                    every = args.eval_every or max(25, updates // 6)
                    pc = ProbeConfig(lr=lr, max_updates=updates, eval_every=every, seed=seed, batch_size=args.batch_size,
                                     fraction=args.fraction,
                                     cache_dir=args.cache_dir, checkpoint_dir=str(out / "probes" / name / f"u{updates}"),
                                     device="cpu", progress=False)
                    t0, c0 = time.perf_counter(), time.process_time()
                    r = run_probe(up, "pr", cuts["train"], cuts["dev"], cuts["test"], pc)
                    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
                    row = {"model": name, "updates": updates, "lr": lr, "seed": seed, "test": r.test, "dev": r.dev,
                           "best": r.updates_to_best, "seconds": sec, "cpu_seconds": cpu, "train_utts": r.num_train, "curve": r.curve,
                           "layer_weights": [round(w, 3) for w in r.layer_weights]}
                    if not args.no_breakdown:
                        row.update(breakdown(r, up, cuts, args.cache_dir))
                    rows.append(row)
                    extra = "" if args.no_breakdown else (f" sub {row['sub']:.2f} del {row['del']:.2f} ins {row['ins']:.2f} "
                                                          f"len {row['len_ratio']:.2f}")
                    print(f"{name:14s} upd {updates:5d} lr {lr:g} seed {seed}: test PER {r.test:.3f} dev {r.dev:.3f} "
                          f"@{r.updates_to_best}{extra} ({sec:.0f} s, {cpu:.0f} s CPU)", flush=True)
    (out / "results.json").write_text(json.dumps({"info": info, "args": vars(args), "runs": rows}, indent=2))
    table = summary(rows)
    (out / "table.md").write_text(info + "\n\n" + table)
    print("\n" + info + "\n\n" + table)
    return 0


def summary(rows: list[dict]) -> str:
    """Markdown: test PER mean ± std over seeds per (model, updates, lr), and probe seconds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["updates"], r["lr"], r["model"]), []).append(r)  # one --fraction per invocation
    sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
    has_ops = all("ins" in r for r in rows)
    head = "| updates | lr | model | seeds | test PER (mean ± std) | per seed | dev PER | best @ |"
    head += " sub / del / ins | hyp/ref len |" if has_ops else ""
    head += " train utts | s / probe (CPU s) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (updates, lr, model), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        t = [r["test"] for r in rs]
        line = (f"| {updates} | {lr:g} | {model} | {len(rs)} | {statistics.mean(t):.3f} ± {sd(t):.3f} | "
                f"{' '.join(f'{x:.2f}' for x in t)} | {statistics.mean(r['dev'] for r in rs):.3f} | "
                f"{' '.join(str(r['best']) for r in rs)} |")
        if has_ops:
            line += (f" {statistics.mean(r['sub'] for r in rs):.2f} / {statistics.mean(r['del'] for r in rs):.2f} / "
                     f"{statistics.mean(r['ins'] for r in rs):.2f} | {statistics.mean(r['len_ratio'] for r in rs):.2f} |")
        line += (f" {rs[0].get('train_utts', '')} | {statistics.mean(r['seconds'] for r in rs):.1f} "
                 f"({statistics.mean(r.get('cpu_seconds', float('nan')) for r in rs):.1f}) |")
        lines.append(line)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
