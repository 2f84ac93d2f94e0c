"""``s3kit bias``: SpEAT effect sizes (d, p, CI) per test and layer, plus isotropy, for upstreams."""

from __future__ import annotations

import argparse
import sys

from s3kit.commands._args import add_bad_audio


def register(sub) -> None:
    from s3kit.eval.bias import DEFAULT_TESTS, LAYER_BOOTSTRAP, LAYER_PERMUTATIONS, TESTS
    from s3kit.eval.speat import N_BOOTSTRAP, N_PERMUTATIONS

    p = sub.add_parser(
        "bias",
        help="SpEAT social-bias tests and isotropy of upstream embeddings",
        description="Embed SpEAT stimuli with each upstream (time mean per layer), then report the effect size d "
        "(bias paper eq. 2) with a one-sided permutation p-value and a bootstrap CI for each test, on the layer "
        "mean and per layer, plus log10 isotropy. Writes bias.json, bias.md and d_per_layer.png (and "
        "d_across_upstreams.png for several upstreams, e.g. checkpoints over training).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--upstream", action="extend", nargs="+", required=True,
                   help="classical feature (fbank, mel, mfcc, stft, spectrogram), s3kit checkpoint, transformers "
                   "dir or hub id; repeat or list several for a comparison table")
    p.add_argument("--stimuli", required=True, help="SpEAT CSV (path,concept,group), stimulus manifest, or a directory holding one")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tests", default=",".join(DEFAULT_TESTS),
                   help=f"comma-separated tests ({', '.join(TESTS)}) or name=xgroup/ygroup; tests without stimuli are skipped")
    p.add_argument("--n-permutations", type=int, default=N_PERMUTATIONS, help="permutation draws for the layer-mean test (exact when fewer partitions exist)")
    p.add_argument("--n-bootstrap", type=int, default=N_BOOTSTRAP, help="bootstrap draws for the layer-mean CI (0: none)")
    p.add_argument("--layer-permutations", type=int, default=LAYER_PERMUTATIONS, help="permutation draws per layer")
    p.add_argument("--layer-bootstrap", type=int, default=LAYER_BOOTSTRAP, help="bootstrap draws per layer (0: none)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the bootstrap interval")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-duration", type=float, default=60.0, help="seconds of audio per batch")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
    p.add_argument("--tsne", action="store_true", help="also write a t-SNE PNG of the stimuli per upstream")
    add_bad_audio(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from s3kit.eval.bias import bias

    try:
        report = bias(args.upstream, args.stimuli, args.out, tests=args.tests, n_permutations=args.n_permutations,
                      n_bootstrap=args.n_bootstrap, layer_permutations=args.layer_permutations,
                      layer_bootstrap=args.layer_bootstrap, level=args.level, seed=args.seed,
                      max_duration=args.max_duration, device=args.device, tsne=args.tsne,
                      on_bad_audio=args.on_bad_audio, max_bad_share=args.max_bad_share)
    except ValueError as e:  # bad stimuli / test spec: one clear line
        print(f"s3kit bias: error: {e}", file=sys.stderr)
        return 2
    for up in report["upstreams"]:
        cells = ", ".join(f"{t} d={r['aggregate']['d']:.2f} (p={r['aggregate']['p_value']:.2g})"
                          for t, r in up["results"].items())
        print(f"{up['name']}: {cells}; log10 IS={up['isotropy']['log10_isotropy']:.1f}")
    for note in report["skipped"]:
        print(f"skipped {note}")
    print(f"report written to {args.out}/bias.md")
    return 0
