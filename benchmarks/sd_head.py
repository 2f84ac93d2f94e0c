"""The SD probe's LSTM on CPU: the padded batch (what ``SDHead`` runs) against the packed sequences
(what it ran before), one training step each (forward + backward), side by side in one run.

The demo's SD shapes: batches of 8 two-voice mixtures of ~3-5 s (300-450 frames at a 100 Hz
upstream such as MFCC, half at 50 Hz), a 64-unit head over the weighted sum of the states. Both
paths start from the same weights and input; the valid frames' logits and the input gradients
are checked equal before timing. Interleaved rounds in alternating order after a warm-up round.
Last line: ``sd_head_padded_vs_packed: <ratio>x``.

    python benchmarks/sd_head.py [--frames 450] [--dim 39] [--hidden 64] [--rounds 15] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch
from _timing import describe_device, fmt_ratio, fmt_time, interleaved, ratio
from torch import nn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=450, help="longest mixture in frames")
    ap.add_argument("--layers", type=int, default=1, help="hidden states in the weighted sum (MFCC: 1)")
    ap.add_argument("--dim", type=int, default=39, help="state width (MFCC 39, the demo teacher 192)")
    ap.add_argument("--hidden", type=int, default=64, help="LSTM units (the demo's SDConfig(hidden=64))")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from s3kit.eval.tasks.sd import SDHead, pit_bce

    torch.manual_seed(0)
    head = SDHead(args.layers, args.dim, hidden=args.hidden)
    states = torch.randn(args.batch, args.layers, args.frames, args.dim)
    lengths = torch.linspace(args.frames, args.frames * 0.6, args.batch).round().long()
    labels = (torch.rand(args.batch, args.frames, 2) > 0.5).float()

    def packed_logits(x_states):
        x = head.featurizer((x_states - head.mean) / head.std)
        p = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = nn.utils.rnn.pad_packed_sequence(head.lstm(p)[0], batch_first=True, total_length=x.shape[1])
        return head.linear(out)

    def step(logits_fn):
        x = states.clone().requires_grad_(True)
        loss = pit_bce(logits_fn(x), labels, lengths)
        loss.backward()
        return loss.detach(), x.grad

    l_pad, g_pad = step(lambda x: head(x, lengths))
    l_pack, g_pack = step(packed_logits)
    assert torch.allclose(l_pad, l_pack, atol=1e-6), (l_pad, l_pack)
    assert torch.allclose(g_pad, g_pack, atol=1e-6), (g_pad - g_pack).abs().max()

    times = interleaved({"packed": lambda: step(packed_logits), "padded": lambda: step(lambda x: head(x, lengths))},
                        args.rounds)
    print(f"SD head training step: batch {args.batch}, {args.frames} frames max, {args.layers} x {args.dim} states, "
          f"LSTM {args.hidden}; {describe_device('cpu')}; {args.rounds} rounds + 1 warm-up")
    print(f"parity: loss {float(l_pad):.6f} both, max |input grad diff| {(g_pad - g_pack).abs().max():.1e}")
    for name in ("packed", "padded"):
        print(f"{name:>7}: {fmt_time(times[name], 1000, 'ms')} per step")
    print(f"padded vs packed: {fmt_ratio(ratio(times['packed'], times['padded']))}")
    print(f"sd_head_padded_vs_packed: {ratio(times['packed'], times['padded'])['median']:.1f}x")


if __name__ == "__main__":
    main()
