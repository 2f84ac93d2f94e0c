"""``s3kit export``: turn an s3kit checkpoint into another format (transformers or ONNX)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a student: a plain transformers directory, or ONNX fp32 + int8 for on-device KWS",
        description="--format transformers: a DistilHuBERT student (prediction heads dropped), a HuBERT / wav2vec 2.0 "
        "pretraining checkpoint, or a pruned model (s3kit compress, prune.save_pruned) as a transformers HubertModel / "
        "Wav2Vec2Model / WavLMModel directory that AutoModel.from_pretrained(OUT) loads. A head- or row-pruned model is "
        "written at its unpruned shape with the removed heads and FFN rows as zero weights (same outputs): it is as "
        "large and as slow as the unpruned model; the speed-up needs s3kit's own loader (s3kit.load_upstream(CKPT)). "
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
    out = export_transformers(args.checkpoint, args.out)
    print(f"wrote {out} (load with transformers.AutoModel.from_pretrained('{out}'))")
    return 0


def export_transformers(checkpoint: str, out: str):
    """Dispatch on the checkpoint's kind (its ``config.json``) to the method's own exporter."""
    import json
    from pathlib import Path

    from s3kit.checkpoint import CheckpointError

    path = Path(checkpoint) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{checkpoint}: no config.json (not an s3kit checkpoint directory)")
    meta = json.loads(path.read_text())
    if "pruned" in meta:
        from s3kit.methods.prune import export_transformers as export
        print("note: removed heads / FFN rows are written as zero weights at the unpruned shape; the pruned "
              f"model's speed-up needs s3kit.load_upstream('{checkpoint}')")
    elif "student" in meta:
        from s3kit.methods.distilhubert import export_transformers as export
    elif meta.get("model_kind") in ("hubert", "wav2vec2"):
        from s3kit.methods.pretrain import export_transformers as export
    elif meta.get("model_kind") == "melhubert":
        raise CheckpointError(f"{checkpoint}: MelHuBERT has no transformers class; the s3kit checkpoint is the "
                              f"export (load it with s3kit.load_upstream)")
    else:
        raise CheckpointError(f"{checkpoint}: not a DistilHuBERT, HuBERT / wav2vec 2.0 pretraining or pruned "
                              f"checkpoint; --format transformers exports those")
    return export(checkpoint, out)
