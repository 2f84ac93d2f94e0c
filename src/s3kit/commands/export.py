"""``s3kit export``: turn an s3kit checkpoint into another format (transformers or ONNX)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a student: a plain transformers directory, or ONNX fp32 + int8 for on-device KWS",
        description="--format transformers: a DistilHuBERT student checkpoint (prediction heads dropped) as a "
        "transformers HubertModel / Wav2Vec2Model / WavLMModel directory that AutoModel.from_pretrained(OUT) loads. "
        "--format onnx: a fine-tuned KWS student + classifier (s3kit kws finetune) as ONNX fp32 and int8 "
        "(dynamic quantisation) with a parity check against PyTorch; the ONNX input is 64-bin fbank [B, T, 64].",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--format", choices=["transformers", "onnx"], default="transformers", help="output format")
    p.add_argument("checkpoint", help="s3kit checkpoint directory (e.g. OUT/checkpoints/step-00200000)")
    p.add_argument("out", help="output directory")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.format == "onnx":
        import json

        from s3kit.eval.kws import export_onnx

        print(json.dumps(export_onnx(args.checkpoint, args.out), indent=2, default=str))
        return 0
    from s3kit.methods.distilhubert import export_transformers

    out = export_transformers(args.checkpoint, args.out)
    print(f"wrote {out} (load with transformers.AutoModel.from_pretrained('{out}'))")
    return 0
