"""The DVCC teacher-codebook loss (eq. 8) on a training batch: ``frame_codebook_loss`` (what the
distiller runs: one ``[B, T, T]`` cosine product per batch, distractor logits gathered from it)
against ``teacher_codebook_loss`` on explicitly gathered ``[M, N, C]`` distractors (what it ran
before), forward + backward, side by side in one run.

Default shapes: the demo's KWS rows (32 one-second clips at 100 student frames / s, wav2vec 2.0
masking at p 0.65 / span 20, 100 distractors, the shipped feature codebook's 64-d code vectors:
2 groups x 32). Both start from the same tensors; value and gradients are checked equal before
timing. Interleaved rounds in alternating order after a warm-up round.
Last line: ``codebook_loss_frames_vs_gathered: <ratio>x``.

    python benchmarks/codebook_loss.py [--batch 32] [--frames 100] [--dim 64] [--negatives 100] [--rounds 15]
"""

from __future__ import annotations

import argparse

import torch
from _timing import describe_device, fmt_ratio, fmt_time, interleaved, ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frames", type=int, default=100, help="student frames per clip")
    ap.add_argument("--dim", type=int, default=64, help="code vector width")
    ap.add_argument("--entries", type=int, default=128, help="distinct code vectors the targets are drawn from")
    ap.add_argument("--negatives", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

    from s3kit.methods.dvcc import MASK_LENGTH, MASK_PROB, frame_codebook_loss, sample_negatives, teacher_codebook_loss

    torch.manual_seed(0)
    B, T, C = args.batch, args.frames, args.dim
    book = torch.randn(args.entries, C)
    targets = book[torch.randint(0, args.entries, (B, T))]
    pred = torch.randn(B, T, C)
    mask = torch.from_numpy(_compute_mask_indices((B, T), MASK_PROB, MASK_LENGTH, min_masks=2))
    neg = sample_negatives(mask, args.negatives, generator=torch.Generator().manual_seed(0))
    rows = mask.nonzero()[:, 0]

    def frames():
        p = pred.clone().requires_grad_(True)
        loss = frame_codebook_loss(p, targets, mask, neg)
        loss.backward()
        return loss.detach(), p.grad

    def gathered():
        p = pred.clone().requires_grad_(True)
        loss = teacher_codebook_loss(p[mask], targets[mask], targets[rows[:, None], neg[mask]])
        loss.backward()
        return loss.detach(), p.grad

    (lf, gf), (lg, gg) = frames(), gathered()
    assert torch.allclose(lf, lg, rtol=1e-5), (lf, lg)
    assert torch.allclose(gf, gg, atol=1e-6), (gf - gg).abs().max()
    times = interleaved({"gathered": gathered, "frames": frames}, args.rounds)
    print(f"eq. (8) forward + backward: {B} clips x {T} frames, {int(mask.sum())} masked, {args.negatives} "
          f"distractors, {C}-d codes; {describe_device('cpu')}; {args.rounds} rounds + 1 warm-up")
    print(f"parity: loss {float(lf):.6f} vs {float(lg):.6f}, max |grad diff| {(gf - gg).abs().max():.1e}")
    for name in ("gathered", "frames"):
        print(f"{name:>9}: {fmt_time(times[name], 1000, 'ms')} per step")
    print(f"frames vs gathered: {fmt_ratio(ratio(times['gathered'], times['frames']))}")
    print(f"codebook_loss_frames_vs_gathered: {ratio(times['gathered'], times['frames'])['median']:.1f}x")


if __name__ == "__main__":
    main()
