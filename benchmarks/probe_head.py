"""The PR probe's training step: the per-frame CTC head on the valid frames only (what ``ProbeModel``
runs) against the head on every frame of the padded batch (what it ran before), side by side.

Default shapes: the demo's PR probe on the tiny MelHuBERT (32 random sentences of 1.5-5 s at 50 Hz,
about a third of the padded batch is padding; 5 states of 192; projector 256; 45 output tokens).
Both start from the same weights; loss and gradients are checked equal before timing. One step is
weighted sum -> head -> CTC -> backward. Interleaved rounds in alternating order after a warm-up.
Last line: ``probe_head_valid_frames_vs_padded: <ratio>x``.

    python benchmarks/probe_head.py [--batch 32] [--frames 253] [--dim 192] [--rounds 15] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch
from _timing import describe_device, fmt_ratio, fmt_time, interleaved, ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frames", type=int, default=253, help="longest utterance in frames (5 s at 50 Hz)")
    ap.add_argument("--layers", type=int, default=5, help="hidden states in the weighted sum")
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--vocab", type=int, default=45)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from s3kit.eval.heads import FrameCTCHead, ProbeModel, WeightedSum, ctc_loss

    torch.manual_seed(0)
    B, T = args.batch, args.frames
    model = ProbeModel(WeightedSum(args.layers), FrameCTCHead(args.dim, args.vocab))
    lengths = (torch.rand(B) * 0.7 + 0.3).mul(T).long().clamp(1, T)
    lengths[0] = T
    valid = torch.arange(T)[None] < lengths[:, None]
    states = torch.randn(B, args.layers, T, args.dim) * valid[:, None, :, None]  # zero-padded, as the cache gives
    targets = [torch.randint(1, args.vocab, (int(n) // 4,)) for n in lengths]
    padding = 1 - float(lengths.sum()) / (B * T)

    def step(logits_fn):
        model.zero_grad(set_to_none=True)
        loss = ctc_loss(logits_fn(), lengths, targets)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    valid_only = lambda: model(states, lengths)  # noqa: E731
    padded = lambda: model.head(model.featurizer(states))  # noqa: E731
    (la, ga), (lb, gb) = step(valid_only), step(padded)
    assert torch.allclose(la, lb, rtol=1e-5), (la, lb)
    diff = max(float((a - b).abs().max()) for a, b in zip(ga, gb))
    assert diff < 1e-4, diff
    times = interleaved({"padded": lambda: step(padded), "valid": lambda: step(valid_only)}, args.rounds)
    print(f"PR probe step: {B} utterances x <= {T} frames ({100 * padding:.0f} % padding), {args.layers} x "
          f"{args.dim} states, {args.vocab} tokens; {describe_device('cpu')}; {args.rounds} rounds + 1 warm-up")
    print(f"parity: loss {float(la):.6f} vs {float(lb):.6f}, max |grad diff| {diff:.1e}")
    for name in ("padded", "valid"):
        print(f"{name:>7}: {fmt_time(times[name], 1000, 'ms')} per step")
    print(f"valid frames vs padded: {fmt_ratio(ratio(times['padded'], times['valid']))}")
    print(f"probe_head_valid_frames_vs_padded: {ratio(times['padded'], times['valid'])['median']:.2f}x")


if __name__ == "__main__":
    main()
