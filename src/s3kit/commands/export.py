"""``s3kit export``: turn an s3kit checkpoint into another format (a plain transformers directory)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a distilled student to a plain transformers directory",
        description="Write a DistilHuBERT student checkpoint (prediction heads dropped) as a transformers "
        "HubertModel / Wav2Vec2Model / WavLMModel directory that AutoModel.from_pretrained(OUT) loads.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--format", choices=["transformers"], default="transformers", help="output format")
    p.add_argument("checkpoint", help="s3kit student checkpoint directory (e.g. OUT/checkpoints/step-00200000)")
    p.add_argument("out", help="output directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from s3kit.methods.distilhubert import export_transformers

    out = export_transformers(args.checkpoint, args.out)
    print(f"wrote {out} (load with transformers.AutoModel.from_pretrained('{out}'))")
    return 0
