"""KS probe of the demo wav2vec 2.0 teacher vs the same architecture at random init, and the MelHuBERT demo teacher.

Run from the repository root::

    python scripts/experiments/w2v2_teacher_probe.py TEACHER_DIR MANIFEST_DIR OUT_DIR

``MANIFEST_DIR`` holds ``keywords_{train,dev,test}.jsonl.gz``; writes ``OUT_DIR/ks_probe.json``.
The random-init control is built from ``recipes/pretrain_wav2vec2_demo.yaml`` with its seed.
"""

import json
import sys
import time
from pathlib import Path

import torch

from s3kit import checkpoint
from s3kit.config import build, read_yaml
from s3kit.eval.probe import ProbeConfig, run_probe
from s3kit.methods.pretrain import PretrainConfig, build_method

torch.set_num_threads(1)  # the models are tiny and the CPU is shared


def main(teacher: str, data: Path, out: Path) -> dict:
    recipe = read_yaml("recipes/pretrain_wav2vec2_demo.yaml")
    recipe.pop("train")
    cfg = build(PretrainConfig, recipe)
    rand = out / "random_init"
    if not rand.exists():
        torch.manual_seed(cfg.seed)
        method = build_method(cfg)
        checkpoint.save(rand, method.state_dict(), {"method": recipe}, class_name="Wav2Vec2Pretraining",
                        **method.checkpoint_meta())
    res = {}
    upstreams = [("w2v2_teacher", teacher), ("w2v2_random_init", str(rand)),
                 ("melhubert_teacher", "src/s3kit/assets/demo_teacher")]
    for name, up in upstreams:
        t0 = time.time()
        pc = ProbeConfig(max_updates=300, eval_every=50, seed=0, cache_dir=str(out / "cache"), device="cpu",
                         progress=False)
        r = run_probe(up, "ks", data / "keywords_train.jsonl.gz", data / "keywords_dev.jsonl.gz",
                      data / "keywords_test.jsonl.gz", pc)
        res[name] = {"test_acc": r.test, "dev_acc": r.dev, "layer_weights": r.layer_weights,
                     "seconds": round(time.time() - t0, 1)}
        print(name, res[name], flush=True)
    (out / "ks_probe.json").write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
