"""KS probe of the codebook teacher (src/s3kit/assets/demo_codebook_teacher) against its random init.

Run from the repository root::

    python scripts/experiments/codebook_teacher_probe.py CODEBOOK_DIR MANIFEST_DIR OUT_DIR

``MANIFEST_DIR`` holds ``keywords_{train,dev,test}.jsonl.gz``; writes ``OUT_DIR/ks_probe.json``.
Five upstreams, each probed as ``scripts/experiments/w2v2_teacher_probe.py`` does (SUPERB-style
weighted-layer probe, 300 updates, seed 0):

* ``teacher``: the MelHuBERT teacher the codebook sits on (its hidden states: what the DVCC rows distil);
* ``teacher_random_init``: the same architecture at random init (seed 0; the fbank mean / std are
  data statistics, so they are the teacher's);
* ``codes``: the codebook alone (the argmax code vectors: what eq. 8's positives and negatives are);
* ``codes_random_init``: a fresh codebook (seed 0) on the random-init teacher (the whole codes
  teacher at random init);
* ``codes_untrained_codebook``: a fresh codebook on the trained teacher (what codebook training adds).

Paired comparisons on the test clips: exact McNemar (two-sided binomial test on the discordant
pairs, ``scipy.stats.binomtest``), Wilson 95 % intervals for each accuracy.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binomtest

from s3kit import checkpoint
from s3kit.data.manifest import load_cuts
from s3kit.eval.probe import TASKS, Labels, ProbeConfig, _Split, build_probe, run_probe
from s3kit.eval.features_cache import extract_features, upstream_identity
from s3kit.methods.feature_codebook import CodeVectorUpstream, FeatureCodebook, load_feature_codebook
from s3kit.models.melhubert import MelHubert, MelHubertUpstream

torch.set_num_threads(1)  # the models are tiny and the CPU is shared


def wilson(k: int, n: int, z: float = 1.959964) -> list[float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(centre - half), float(centre + half)]


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> dict:
    """Exact McNemar: two-sided binomial test of the discordant pairs (a right / b wrong vs the reverse)."""
    n10, n01 = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if n10 + n01 == 0 else float(binomtest(n10, n10 + n01, 0.5).pvalue)
    return {"a_only": n10, "b_only": n01, "p": p}


def test_correct(upstream, cuts: dict, cfg: ProbeConfig, result) -> np.ndarray:
    """Per-test-clip correctness of the probe saved at the best dev update."""
    spec = TASKS["ks"]
    labels = Labels(spec, cuts)
    feats = extract_features(upstream, cuts["test"], Path(cfg.cache_dir), pooled=True, device="cpu",
                             identity=upstream_identity(upstream), progress=False)
    split = _Split(cuts["test"], feats, labels)
    model = build_probe(spec, labels, len(feats.layers), feats.dim, cfg, None)
    state, _ = checkpoint.load(result.checkpoint)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        states, lengths, y = split.batch(list(range(len(split))), "cpu")
        pred = model(states, lengths).argmax(-1)
    correct = (pred == y).numpy()
    assert abs(correct.mean() - result.test) < 1e-6, (correct.mean(), result.test)  # the probe's own test score
    return correct


def main(codebook_dir: str, data: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    teacher, codebook = load_feature_codebook(codebook_dir)
    torch.manual_seed(0)
    rand_enc = MelHubert(teacher.encoder.config)
    rand_enc.front_end.load_state_dict(teacher.encoder.front_end.state_dict())  # data statistics, not learned
    rand_teacher = MelHubertUpstream(rand_enc.eval(), name="melhubert_random_init")
    torch.manual_seed(0)
    fresh_on_random = FeatureCodebook(rand_teacher, codebook.layer, codebook.num_groups, codebook.num_vars,
                                      codebook.code_dim)
    torch.manual_seed(0)
    fresh_on_teacher = FeatureCodebook(teacher, codebook.layer, codebook.num_groups, codebook.num_vars,
                                       codebook.code_dim)
    upstreams = {"teacher": teacher, "teacher_random_init": rand_teacher,
                 "codes": CodeVectorUpstream(codebook, "codes"),
                 "codes_random_init": CodeVectorUpstream(fresh_on_random, "codes_random_init"),
                 "codes_untrained_codebook": CodeVectorUpstream(fresh_on_teacher, "codes_untrained_codebook")}
    cuts = {n: load_cuts(data / f"keywords_{n}.jsonl.gz") for n in ("train", "dev", "test")}
    res, correct = {}, {}
    for name, up in upstreams.items():
        t0 = time.time()
        cfg = ProbeConfig(max_updates=300, eval_every=50, seed=0, cache_dir=str(out / "cache"), device="cpu",
                          progress=False, checkpoint_dir=str(out / "probes" / name))
        r = run_probe(up, "ks", cuts["train"], cuts["dev"], cuts["test"], cfg)
        correct[name] = test_correct(up, cuts, cfg, r).astype(bool)
        k, n = int(correct[name].sum()), len(correct[name])
        res[name] = {"test_acc": r.test, "test_ci95": wilson(k, n), "n_test": n, "dev_acc": r.dev,
                     "layer_weights": r.layer_weights, "seconds": round(time.time() - t0, 1)}
        print(name, res[name], flush=True)
    res["comparisons"] = {}
    for a, b in (("teacher", "teacher_random_init"), ("codes", "codes_random_init"),
                 ("codes", "codes_untrained_codebook")):
        res["comparisons"][f"{a} vs {b}"] = {"diff": res[a]["test_acc"] - res[b]["test_acc"],
                                             **mcnemar_exact(correct[a], correct[b])}
        print(a, "vs", b, res["comparisons"][f"{a} vs {b}"], flush=True)
    (out / "ks_probe.json").write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
