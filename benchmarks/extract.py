"""Extraction throughput: ``s3kit extract`` with its default settings vs calling the transformers
model one utterance at a time (what a notebook loop does), on a log-normal length spread.

Both read every utterance from disk, compute every hidden state of a randomly initialised HuBERT
(Base shape, group-norm CNN, by default) and time-average them per layer; the baseline runs
``model(wav[None], output_hidden_states=True)`` under ``torch.no_grad()``. s3kit batches by the
device's plan (:func:`s3kit.data.loader.inference_plan`: one utterance at a time on CPU, or
batches for an upstream that sets ``cpu_batch_seconds``,
length-sorted batches on CUDA) and prints the plan and the padding share. The two are timed in
interleaved rounds in alternating order after a warm-up round that meets every length; the
ratio is per round (paired). Both results are compared (max |diff| of the pooled states).
``--compare-plans`` also times s3kit with length-sorted batches forced (the CUDA plan) on any
device. Last line: ``extract_throughput: <ratio>x`` (s3kit default vs the loop).

    python benchmarks/extract.py [--minutes 1.5] [--hidden 768 --layers 12] [--rounds 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from _timing import describe_device, fmt_ratio, fmt_time, interleaved, ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=1.5, help="total audio")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--conv", type=int, default=512, help="CNN channels")
    ap.add_argument("--norm", choices=["group", "layer"], default="group", help="CNN norm (group: Base, layer: Large)")
    ap.add_argument("--max-duration", type=float, default=120.0, help="seconds of audio per batch (CUDA plan)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    ap.add_argument("--compare-plans", action="store_true", help="also time length-sorted batches on this device")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from lhotse import CutSet, Recording

    from s3kit.data.loader import PaddingStats, cpu_batch_seconds_of, inference_plan, load_cut_audio
    from s3kit.extract import ExtractConfig, extract, load_features
    from s3kit.testing import tiny_hf_dir, write_wav
    from s3kit.upstream import load_upstream

    device = torch.device(args.device)
    rng = np.random.default_rng(args.seed)
    tmp = Path(tempfile.mkdtemp())
    model_dir = tiny_hf_dir(
        tmp / "model", kind="hubert", layers=args.layers, hidden=args.hidden, heads=max(1, args.hidden // 64),
        ffn=4 * args.hidden, conv=args.conv, norm=args.norm,
    )
    # log-normal lengths (median ~3 s, 1-15 s): LibriSpeech-like spread
    cuts, total = [], 0.0
    while total < args.minutes * 60:
        dur = float(np.clip(rng.lognormal(np.log(3.0), 0.6), 1.0, 15.0))
        wav = (0.1 * rng.standard_normal(int(dur * 16000))).astype(np.float32)
        rec = Recording.from_file(write_wav(tmp / "wav" / f"u{len(cuts):04d}.wav", wav), recording_id=f"u{len(cuts):04d}")
        cuts.append(rec.to_cut())
        total += dur
    cuts = CutSet.from_cuts(cuts)
    up = load_upstream(model_dir)
    model = up.model.to(device)
    plan = inference_plan(device, args.max_duration, cpu_batch_seconds=cpu_batch_seconds_of(up))
    print(f"{len(cuts)} utterances, {total:.0f} s of audio, HuBERT {args.layers}x{args.hidden} ({args.norm}-norm CNN "
          f"{args.conv}), {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params, on {describe_device(device)}")
    print(f"s3kit plan: {plan.describe()}")

    loop_out: dict[str, torch.Tensor] = {}

    def loop():
        with torch.no_grad():
            for cut in cuts:
                wav = torch.from_numpy(load_cut_audio(cut))[None].to(device)
                states = model(wav, output_hidden_states=True).hidden_states
                loop_out[cut.id] = torch.stack([s[0].mean(0) for s in states]).cpu()

    runs = {"n": 0}
    outs: dict[str, Path] = {}
    stats: dict[str, PaddingStats] = {}

    def s3kit(name: str, max_cuts: int | None):
        def run():
            runs["n"] += 1
            out = tmp / f"{name}-{runs['n']}"
            stats[name] = PaddingStats()
            cfg = ExtractConfig(pool="mean", dtype="float32", device=str(device), max_duration=args.max_duration,
                                max_cuts=max_cuts)
            extract(up, cuts, out, cfg, progress=False, stats=stats[name])
            if name in outs:
                shutil.rmtree(outs[name], ignore_errors=True)
            outs[name] = out
        return run

    methods = {"loop": loop, "s3kit": s3kit("s3kit", None)}
    if args.compare_plans:
        methods["sorted"] = s3kit("sorted", 10_000)  # length-sorted batches whatever the device
    times = interleaved(methods, args.rounds, device=device)

    ours = load_features(outs["s3kit"])
    diff = max(float((ours[k] - loop_out[k]).abs().max()) for k in loop_out)
    labels = {"loop": "transformers, one utterance at a time", "s3kit": f"s3kit extract (default plan)",
              "sorted": "s3kit extract, length-sorted batches"}
    print(f"{'method':<40}{'audio s / s (median [range])':>32}{'padding':>9}")
    for k, t in times.items():
        pad = f"{100 * stats[k].share:.0f} %" if k in stats else "0 %"
        rates = [total / x for x in t]
        print(f"{labels[k]:<40}{fmt_time(rates, unit=''):>32}{pad:>9}")
    print(f"parity: max |s3kit - transformers| over pooled states = {diff:.1e}")
    if diff > 1e-3:
        raise SystemExit(f"s3kit and transformers disagree by {diff:.1e}: the comparison is void")
    if "sorted" in times:
        print(f"length-sorted batches vs the loop: {fmt_ratio(ratio(times['loop'], times['sorted']))}")
    s = ratio(times["loop"], times["s3kit"])
    print(f"s3kit default vs the loop: {fmt_ratio(s)}")
    print(f"extract_throughput: {s['median']:.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
