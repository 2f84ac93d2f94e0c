"""``s3kit extract``: write an upstream's per-utterance features to disk (resumable)."""

from __future__ import annotations

import argparse


def _layers(text: str) -> list[int] | None:
    if text in ("all", ""):
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers takes comma-separated integers or 'all', got {text!r}")


def register(sub) -> None:
    from s3kit.commands._args import add_bad_audio
    from s3kit.extract import ExtractConfig

    d = ExtractConfig()
    p = sub.add_parser(
        "extract",
        help="extract per-utterance features of an upstream",
        description="Write the chosen layers of an upstream for every utterance of a manifest as fp16 "
        "safetensors shards; rerunning skips utterances already done.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--upstream", required=True, help="classical feature name, s3kit checkpoint, transformers dir or hub id")
    p.add_argument("--manifest", required=True, help="lhotse CutSet manifest (.jsonl.gz)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--layers", type=_layers, default=d.layers, help="comma-separated layer indices (0 = input to layer 1), or 'all'")
    p.add_argument("--pool", choices=["mean", "none"], default=d.pool, help="'mean': time-average per layer; 'none': frame features")
    p.add_argument("--max-duration", type=float, default=d.max_duration,
                   help="seconds of audio per batch on CUDA (length-sorted batches)")
    p.add_argument("--max-cuts", type=int, default=d.max_cuts,
                   help="utterances per batch; None: the device's plan (on CPU 1, where batching is slower, "
                        "or batches for s3kit's small fbank / log-mel models)")
    p.add_argument("--dtype", choices=["float16", "float32"], default=d.dtype)
    p.add_argument("--device", default=d.device, help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    add_bad_audio(p, d.on_bad_audio)
    p.set_defaults(func=run)


def run(args) -> int:
    from s3kit.data.loader import PaddingStats, cpu_batch_seconds_of, inference_plan
    from s3kit.extract import ExtractConfig, extract, resolve_device
    from s3kit.upstream import load_upstream

    from s3kit.data.badaudio import skipped_path

    cfg = ExtractConfig(layers=args.layers, pool=args.pool, max_duration=args.max_duration, max_cuts=args.max_cuts,
                        dtype=args.dtype, device=args.device, on_bad_audio=args.on_bad_audio,
                        max_bad_share=args.max_bad_share)
    stats = PaddingStats()
    upstream = load_upstream(args.upstream)
    out = extract(upstream, args.manifest, args.out, cfg, stats=stats)
    plan = inference_plan(resolve_device(cfg.device), cfg.max_duration, cfg.max_cuts, cpu_batch_seconds_of(upstream))
    print(f"batching {plan.describe()}; padding {100 * stats.share:.1f} % of the batched samples")
    print(f"features written to {out}")
    skipped = skipped_path(out)
    if skipped.exists() and skipped.read_text().strip():
        print(f"{len(skipped.read_text().splitlines())} cuts with unusable audio were left out: see {skipped}")
    return 0
