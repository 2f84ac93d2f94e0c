"""CPU latency of head- and row-pruned encoders against the unpruned one, measured side by side.

A randomly initialised HuBERT-shaped encoder (default: 6 layers of width 384, 6 heads, FFN 1536,
a narrow CNN so the transformer dominates) is pruned physically with
:func:`s3kit.methods.prune.prune_lowest_heads` / :func:`prune_lowest_rows` to half its heads,
half its FFN rows, and both; the models run on the same audio in interleaved rounds, in
alternating order, after a warm-up round; each speed-up is the median of per-round ratios, with
its range and a 95 % interval. MACs are counted with ``FlopCounterMode``. The speed-up should
track the removed-MACs ratio. (The pruned models compute other functions than the unpruned one,
so there is no output parity to check; pruning itself is tested in ``tests/test_prune.py``.)
Last line: ``prune_speedup: <ratio>x`` (head + row pruned vs unpruned).

    python benchmarks/prune.py [--layers 6 --hidden 384 --seconds 8 --repeats 7 --threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from _timing import describe_device, fmt_ratio, interleaved, ratio

from s3kit.eval.efficiency import count_macs
from s3kit.methods import prune
from s3kit.testing import tiny_hf_model
from s3kit.upstream.hf import HFUpstream


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--conv", type=int, default=64, help="CNN channels (small: the transformer is what gets pruned)")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    base = HFUpstream(tiny_hf_model("hubert", layers=args.layers, hidden=args.hidden, heads=args.heads,
                                    ffn=args.ffn, conv=args.conv, num_conv_pos_embeddings=32,
                                    num_conv_pos_embedding_groups=8)).eval()
    models = {"unpruned": base}
    # transformers' weight-norm positional conv does not deepcopy; copy via state_dict instead
    def clone():
        m = HFUpstream(tiny_hf_model("hubert", layers=args.layers, hidden=args.hidden, heads=args.heads,
                                     ffn=args.ffn, conv=args.conv, num_conv_pos_embeddings=32,
                                     num_conv_pos_embedding_groups=8)).eval()
        m.load_state_dict(base.state_dict())
        return m

    head = clone()
    prune.prune_lowest_heads(head, per_layer=args.heads // 2)
    row = clone()
    prune.prune_lowest_rows(row, per_layer=args.ffn // 2, min_rows=args.ffn // 2)
    both = clone()
    prune.prune_lowest_heads(both, per_layer=args.heads // 2)
    prune.prune_lowest_rows(both, per_layer=args.ffn // 2, min_rows=args.ffn // 2)
    models.update({"heads/2": head, "rows/2": row, "heads/2+rows/2": both})

    macs = {k: count_macs(m, 1.0) for k, m in models.items()}  # on CPU, before moving
    wav = (torch.randn(1, int(args.seconds * 16_000)) * 0.1).to(device)

    def forward(m):
        def run():
            with torch.inference_mode():
                m(wav)
        return run

    times = interleaved({k: forward(m.to(device)) for k, m in models.items()}, args.repeats, device=device)
    lat = {k: sorted(v)[len(v) // 2] * 1000 for k, v in times.items()}
    speed = {k: ratio(times["unpruned"], times[k]) for k in models}
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    print(f"encoder: {args.layers} x (d {args.hidden}, {args.heads} heads, FFN {args.ffn}); {args.seconds:g} s audio, "
          f"on {describe_device(device)}, {args.repeats} rounds + 1 warm-up")
    print(f"{'model':>16} {'params':>10} {'GMAC/s':>8} {'latency ms':>11} {'speed-up':>9} {'MAC ratio':>10}")
    for k in models:
        print(f"{k:>16} {params[k]:>10,} {macs[k] / 1e9:>8.3f} {lat[k]:>11.1f} {speed[k]['median']:>8.2f}x "
              f"{macs['unpruned'] / macs[k]:>9.2f}x")
    print(f"heads/2+rows/2 vs unpruned: {fmt_ratio(speed['heads/2+rows/2'])}")
    print(f"prune_speedup: {speed['heads/2+rows/2']['median']:.2f}x")


if __name__ == "__main__":
    main()
