"""DistilHuBERT costs, measured side by side in one run.

1. Training steps per second with the teacher-feature cache vs with the live teacher
   (a 12-layer teacher at moderate width, a 2-layer student, the same batches), and what
   arithmetic predicts for that ratio: with the live teacher a step costs the teacher's forward
   pass plus the student's forward + backward (about 3 forward passes), so in one precision
   ``speed-up ~ 1 + MACs(teacher) / (3 MACs(student))``, which stays below 3 for any 12-layer
   teacher and 2-layer student of the same width and CNN (MACs counted on 1 s of audio; real
   backward passes and longer clips move the measured ratio around the estimate). A ratio of 3
   or more needs the student in reduced precision while the teacher runs fp32, as s3prl trains
   (fp16 student, fp32 teacher) and as s3kit's trainer does with ``amp`` (on CUDA by default; on
   CPU with ``amp_cpu=true``, fast where the CPU has AMX / AVX512-BF16). The benchmark measures
   both: the student in fp32, and in bf16 autocast (``--no-amp`` skips the second; the headline
   is the mixed-precision ratio when it ran).
2. Student vs teacher at HuBERT-Base shape (random init): parameter ratio and CPU inference
   speed-up, batch size one (the paper's Table 2: 25 % and 1.73x).

Usage: ``python benchmarks/distill.py [--hidden 256 --conv 64 --steps 8 --device cpu]``.
The last line is the headline ``distill_cache_speedup: <ratio>x``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def corpus(root: Path, n: int, seconds: float, seed: int = 0):
    from lhotse import CutSet, Recording, RecordingSet

    from s3kit.testing import sine, write_wav

    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        dur = float(rng.uniform(0.8, 1.2) * seconds)
        wav = sine(float(rng.uniform(100, 1000)), dur, 0.3) + 0.05 * rng.standard_normal(int(dur * 16000)).astype(np.float32)
        recs.append(Recording.from_file(write_wav(root / f"b{i}.wav", wav), recording_id=f"b{i}"))
    return CutSet.from_manifests(recordings=RecordingSet.from_recordings(recs))


def steps_per_second(methods: dict, batches, steps: int, device, amp: bool = False) -> dict[str, float]:
    """Steps/s of each method; their steps are interleaved so load drift hits them alike.
    ``amp``: the student under bf16 autocast, as the trainer runs it on CUDA (the teacher is fp32
    either way)."""
    opts = {k: torch.optim.Adam(m.trainable_parameters(), lr=1e-4) for k, m in methods.items()}
    spent = dict.fromkeys(methods, 0.0)

    def one(name, b):
        method, opt = methods[name], opts[name]
        method.train()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = method.step(b.to(device))["loss"]
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    for name in methods:  # warm-up
        one(name, batches[0])
    for i in range(steps):
        for name in methods:
            t = time.perf_counter()
            one(name, batches[i % len(batches)])
            spent[name] += time.perf_counter() - t
    return {k: steps / v for k, v in spent.items()}


def arithmetic_estimate(teacher, student, feature_grad_mult: float) -> float:
    """``1 + MACs(teacher fwd) / MACs(student fwd + bwd)``: the cache speed-up when every MAC costs
    the same. Backward ~ 2 x forward; a frozen CNN (``feature_grad_mult == 0``) has no backward."""
    from s3kit.eval.efficiency import count_macs

    t, s = count_macs(teacher), count_macs(student)
    if feature_grad_mult == 0:
        cnn = count_macs(_CNNOnly(student))
        train = cnn + 3 * (s - cnn)
    else:
        train = 3 * s
    return 1 + t / train


class _CNNOnly(torch.nn.Module):
    def __init__(self, upstream):
        super().__init__()
        self.upstream = upstream

    def forward(self, wav):
        return self.upstream.cnn(wav, torch.tensor([wav.shape[1]]))


def inference_time(model, wav, reps: int) -> float:
    model.eval()
    with torch.no_grad():
        model(wav)
        best = []
        for _ in range(reps):
            t = time.perf_counter()
            model(wav)
            best.append(time.perf_counter() - t)
    return float(np.median(best))


def main() -> None:
    from s3kit.data.loader import make_loader
    from s3kit.methods.distilhubert import DistilConfig, DistilHuBERT, build_student
    from s3kit.testing import tiny_hf_model
    from s3kit.train.cache import ensure_cache
    from s3kit.upstream.hf import HFUpstream

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256, help="teacher width for the training benchmark")
    ap.add_argument("--conv", type=int, default=64, help="teacher CNN channels for the training benchmark")
    ap.add_argument("--utterances", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=2.0, help="mean utterance length")
    ap.add_argument("--batch-seconds", type=float, default=8.0)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3, help="inference repetitions (median)")
    ap.add_argument("--feature-grad-mult", type=float, default=0.1,
                    help="gradient scale into the student CNN (recipe: 0.1; 0 freezes it)")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure with the student in bf16 autocast (teacher fp32), the trainer's amp")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cuts = corpus(tmp / "audio", args.utterances, args.seconds)
        teacher = HFUpstream(tiny_hf_model("hubert", layers=12, hidden=args.hidden, heads=4, ffn=4 * args.hidden,
                                           conv=args.conv)).to(device)
        t = time.perf_counter()
        cache = ensure_cache(tmp / "cache", teacher, [4, 8, 12], cuts, progress=False)
        build_s = time.perf_counter() - t
        batches = list(make_loader(cuts, max_duration=args.batch_seconds, seed=0))
        cfg = DistilConfig(layers=2, targets=(4, 8, 12), feature_grad_mult=args.feature_grad_mult)
        torch.manual_seed(0)
        live = DistilHuBERT(teacher, cfg).to(device)
        torch.manual_seed(0)
        cached = DistilHuBERT(teacher, cfg, cache=cache).to(device)
        audio_s = sum(c.duration for c in cuts)
        estimate = arithmetic_estimate(teacher.cpu(), live.student.cpu(), args.feature_grad_mult)
        live.to(device), cached.to(device)
        print(f"teacher 12 x {args.hidden} (CNN {args.conv}), student 2 layers, CNN gradient x "
              f"{args.feature_grad_mult:g}, {len(batches)} batches of <= {args.batch_seconds:.0f} s, "
              f"{args.steps} steps on {device}")
        print(f"cache build: {build_s:.2f} s for {audio_s:.0f} s of audio "
              f"({sum(f.stat().st_size for f in cache.directory.iterdir()) / 1e6:.1f} MB on disk)")
        print(f"arithmetic estimate in one precision (1 + teacher MACs / student train MACs): {estimate:.2f}x")
        ratio = None
        for amp in (False, True) if args.amp else (False,):
            sps = steps_per_second({"live": live, "cache": cached}, batches, args.steps, device, amp=amp)
            label = "student bf16 autocast, teacher fp32" if amp else "student fp32, teacher fp32"
            ratio = sps["cache"] / sps["live"]
            print(f"{label}: steps/s live teacher {sps['live']:.2f}, cached teacher {sps['cache']:.2f}, "
                  f"speed-up {ratio:.2f}x")

    # HuBERT-Base shape: the paper's Table 2 comparison (random weights; speed does not depend on them)
    from transformers import HubertConfig, HubertModel

    base = HubertModel(HubertConfig(layerdrop=0.0)).eval()
    student = build_student(base, layers=2).eval()
    n_t = sum(p.numel() for p in base.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    threads = torch.get_num_threads()
    wav = torch.randn(1, 16000 * 4)
    t_t = inference_time(HFUpstream(base), wav.clone(), args.reps)
    t_s = inference_time(HFUpstream(student), wav.clone(), args.reps)
    print(f"HuBERT-Base teacher {n_t / 1e6:.2f} M params, student {n_s / 1e6:.2f} M ({100 * n_s / n_t:.1f} %; "
          f"paper 23.49 M, 25 %)")
    print(f"CPU inference, 1 x 4 s, {threads} threads: teacher {1000 * t_t:.0f} ms, student {1000 * t_s:.0f} ms, "
          f"speed-up {t_t / t_s:.2f}x (paper 1.73x)")
    print(f"distill_cache_speedup: {ratio:.2f}x")


if __name__ == "__main__":
    main()
