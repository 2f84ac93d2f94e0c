"""Extraction throughput: s3kit's duration-batched `extract` vs calling the transformers model one
utterance at a time (what a notebook loop does), on a set with a realistic length spread.

Both compute every hidden state of a randomly initialised HuBERT (Base shape by default) and
time-average them per layer; the baseline runs `model(wav[None], output_hidden_states=True)`
under `torch.no_grad()`. Prints seconds of audio processed per second for each, side by side.

    python benchmarks/extract.py [--minutes 1.5] [--hidden 768 --layers 12] [--max-layer 12]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=1.5, help="total audio")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--max-layer", type=int, default=None, help="extract states 0..K only (default: all)")
    ap.add_argument("--max-duration", type=float, default=60.0, help="seconds of audio per s3kit batch")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from lhotse import CutSet

    from s3kit.data.loader import make_loader
    from s3kit.extract import ExtractConfig, extract
    from s3kit.testing import tiny_hf_dir, write_wav
    from s3kit.upstream import load_upstream

    rng = np.random.default_rng(args.seed)
    tmp = Path(tempfile.mkdtemp())
    model_dir = tiny_hf_dir(
        tmp / "model", kind="hubert", layers=args.layers, hidden=args.hidden, heads=max(1, args.hidden // 64),
        ffn=4 * args.hidden, conv=512,
    )
    # log-normal lengths (median ~3 s, 1-15 s): LibriSpeech-like spread
    cuts, total = [], 0.0
    while total < args.minutes * 60:
        dur = float(np.clip(rng.lognormal(np.log(3.0), 0.6), 1.0, 15.0))
        wav = (0.1 * rng.standard_normal(int(dur * 16000))).astype(np.float32)
        from lhotse import Recording

        rec = Recording.from_file(write_wav(tmp / "wav" / f"u{len(cuts):04d}.wav", wav), recording_id=f"u{len(cuts):04d}")
        cuts.append(rec.to_cut())
        total += dur
    cuts = CutSet.from_cuts(cuts)
    layers = None if args.max_layer is None else list(range(args.max_layer + 1))
    up = load_upstream(model_dir)
    model = up.model
    print(f"{len(cuts)} utterances, {total:.0f} s of audio, HuBERT {args.layers}x{args.hidden}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params, {torch.get_num_threads()} threads")

    # warm-up both paths once
    with torch.no_grad():
        model(torch.zeros(1, 16000), output_hidden_states=True)

    t0 = time.perf_counter()
    with torch.no_grad():
        for batch in make_loader(cuts, max_duration=30.0, shuffle=False, max_cuts=1):
            out = model(batch.wavs, output_hidden_states=True)
            states = out.hidden_states if layers is None else [out.hidden_states[i] for i in layers]
            _ = torch.stack([s[0].mean(0) for s in states])
    base = time.perf_counter() - t0

    t0 = time.perf_counter()
    extract(up, cuts, tmp / "feats", ExtractConfig(layers=layers, pool="mean", max_duration=args.max_duration), progress=False)
    ours = time.perf_counter() - t0

    print(f"{'method':<36}{'audio s / s':>12}")
    print(f"{'transformers, one utterance at a time':<36}{total / base:>12.1f}")
    print(f"{'s3kit extract (duration batches)':<36}{total / ours:>12.1f}")
    print(f"extract_throughput: {base / ours:.2f}x")


if __name__ == "__main__":
    main()
