"""DistilHuBERT costs, measured side by side in one run.

1. Training steps per second with the teacher-feature cache vs with the live teacher (a 12-layer
   teacher at moderate width, a 2-layer student, the same batches). Both methods start from the
   same weights, see the same batches under the same random seeds and are timed in interleaved
   rounds (one pass over every batch each), in alternating order, after a warm-up round that
   meets every batch shape; the ratio is taken per round. Their losses must agree at the end
   (the cache stores the teacher's states in fp16), or the comparison is void.
   Arithmetic bounds the ratio: with the live teacher a step costs the teacher's forward pass
   plus the student's forward + backward (about 3 forward passes), so in one precision
   ``speed-up <= 1 + MACs(teacher) / (3 MACs(student))`` (a frozen CNN, ``feature_grad_mult 0``,
   has no backward pass: ``MACs(CNN) + 3 MACs(rest)`` in the denominator); the student is what
   the step trains, the student network and its prediction heads. MACs are counted on 1 s of audio. The benchmark prints the bound and the measured share of it, for a trained CNN
   (gradient x 0.1, s3prl's recipe) and a frozen one (``--feature-grad-mult`` lists the variants).
   ``--amp`` also measures the student in bf16 autocast with the teacher in fp32 (as s3prl trains
   with fp16); it is on by default on CUDA and on CPUs with AVX512-BF16 / AMX, where bf16 is fast.
2. Student vs teacher at HuBERT-Base shape (random init): parameter ratio and inference speed-up,
   batch size one (the paper's Table 2: 25 % and 1.73x), interleaved the same way.

Usage: ``python benchmarks/distill.py [--hidden 256 --conv 64 --rounds 5 --device cpu]``.
The last line is the headline ``distill_cache_speedup: <ratio>x (bound <b>x, <share> % of it)``:
the trained-CNN fp32 variant.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _timing import describe_device, fmt_ratio, fmt_time, interleaved, ratio


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


def train_rounds(make_method, batches, rounds: int, device, amp: bool = False, control: bool = False):
    """Time a pass over ``batches`` with the live teacher and with the cache, interleaved.

    ``make_method(cached)`` builds each method from the same seed. Returns (times per method,
    last loss per method). Step ``i`` of round ``r`` runs under seed ``(r, i)`` for both, so
    their dropout masks and parameters stay in step. ``control``: both methods use the cache (an
    A/A run: its ratio shows what the timing alone reports for equal work, ideally 1)."""
    methods = {"live": make_method(control), "cache": make_method(True)}
    opts = {k: torch.optim.Adam(m.trainable_parameters(), lr=1e-4) for k, m in methods.items()}
    last: dict[str, float] = {}
    state = {"round": 0}

    def run(name):
        method, opt = methods[name], opts[name]
        method.train()
        for i, b in enumerate(batches):
            torch.manual_seed(1000 * (state["round"] + 10) + i)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = method.step(b.to(device))["loss"]
            loss.backward()
            opt.step()
        last[name] = float(loss.detach())

    def set_round(r):
        state["round"] = r

    times = interleaved({k: (lambda k=k: run(k)) for k in methods}, rounds, device=device, round_fn=set_round)
    return times, last


def arithmetic_estimate(teacher, method, feature_grad_mult: float) -> float:
    """``1 + MACs(teacher fwd) / MACs(student fwd + bwd)``: the cache speed-up when every MAC costs
    the same. The student is what the step trains: the student network and the prediction heads.
    Backward ~ 2 x forward; a frozen CNN (``feature_grad_mult == 0``) has no backward."""
    from torch.utils.flop_counter import FlopCounterMode

    from s3kit.eval.efficiency import count_macs

    student = method.student
    t, s = count_macs(teacher), count_macs(student)
    if method.heads is not None:  # the heads run on the student's last layer: 50 frames per second
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            method.heads(torch.zeros(1, 50, method.heads.dim))
        s += counter.get_total_flops() / 2
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
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds, each a pass over every batch")
    ap.add_argument("--reps", type=int, default=5, help="inference rounds at HuBERT-Base shape")
    ap.add_argument("--feature-grad-mult", default="0.1,0",
                    help="comma-separated CNN gradient scales to measure (0.1: s3prl's recipe; 0 freezes the CNN)")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="also measure the student in bf16 autocast, teacher fp32 (default: on CUDA or a CPU with "
                         "AVX512-BF16 / AMX)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-base", action="store_true", help="skip the HuBERT-Base inference comparison")
    ap.add_argument("--control", action="store_true",
                    help="also time the cache against itself (A/A): the ratio equal work gets, ideally 1.00x")
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
        audio_s = sum(c.duration for c in cuts)
        amp_ok = device.type == "cuda" or torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX")
        amp = amp_ok if args.amp is None else args.amp
        print(f"teacher 12 x {args.hidden} (CNN {args.conv}), student 2 layers, {len(batches)} batches of "
              f"<= {args.batch_seconds:.0f} s, {args.rounds} rounds + 1 warm-up on {describe_device(device)}")
        print(f"cache build: {build_s:.2f} s for {audio_s:.0f} s of audio "
              f"({sum(f.stat().st_size for f in cache.directory.iterdir()) / 1e6:.1f} MB on disk)")
        headline = None
        for fgm in [float(x) for x in args.feature_grad_mult.split(",")]:
            cfg = DistilConfig(layers=2, targets=(4, 8, 12), feature_grad_mult=fgm)

            def make(cached, cfg=cfg):
                torch.manual_seed(0)
                return DistilHuBERT(teacher, cfg, cache=cache if cached else None).to(device)

            probe = make(False)
            bound = arithmetic_estimate(teacher.cpu(), probe.cpu(), fgm)
            teacher.to(device)
            del probe
            cnn = "frozen CNN" if fgm == 0 else f"CNN gradient x {fgm:g}"
            for use_amp in (False, True) if amp else (False,):
                times, last = train_rounds(make, batches, args.rounds, device, amp=use_amp)
                label = "student bf16 autocast, teacher fp32" if use_amp else "fp32"
                r = ratio(times["live"], times["cache"])
                gap = abs(last["live"] - last["cache"]) / max(abs(last["live"]), 1e-8)
                print(f"{cnn}, {label}: s / pass live {fmt_time(times['live'])}, cached {fmt_time(times['cache'])}; "
                      f"final loss live {last['live']:.4f}, cached {last['cache']:.4f} (rel. diff {gap:.1e})")
                if gap > 1e-2:
                    raise SystemExit("the cached and live runs diverged: the comparison is void")
                share = f", {100 * r['median'] / bound:.0f} % of the bound" if not use_amp else ""
                print(f"  cache speed-up {fmt_ratio(r)}; bound 1 + MACs(t) / MACs(s train) = {bound:.2f}x{share}")
                if not use_amp and headline is None:
                    headline = f"{r['median']:.2f}x (bound {bound:.2f}x, {100 * r['median'] / bound:.0f} % of it)"
                if args.control and not use_amp:
                    times, _ = train_rounds(make, batches, args.rounds, device, control=True)
                    print(f"  control, cache vs cache (A/A): {fmt_ratio(ratio(times['live'], times['cache']))}")

    if not args.skip_base:
        # HuBERT-Base shape: the paper's Table 2 comparison (random weights; speed does not depend on them)
        from transformers import HubertConfig, HubertModel

        base = HubertModel(HubertConfig(layerdrop=0.0)).eval()
        student = build_student(base, layers=2).eval()
        n_t = sum(p.numel() for p in base.parameters())
        n_s = sum(p.numel() for p in student.parameters())
        up_t, up_s = HFUpstream(base).to(device), HFUpstream(student).to(device)
        wav = torch.randn(1, 16000 * 4, device=device)

        def forward(up):
            def run():
                with torch.inference_mode():
                    up(wav)
            return run

        times = interleaved({"teacher": forward(up_t), "student": forward(up_s)}, args.reps, device=device)
        r = ratio(times["teacher"], times["student"])
        print(f"HuBERT-Base teacher {n_t / 1e6:.2f} M params, student {n_s / 1e6:.2f} M ({100 * n_s / n_t:.1f} %; "
              f"paper 23.49 M, 25 %)")
        print(f"inference, 1 x 4 s: teacher {fmt_time(times['teacher'], 1000, 'ms')}, student "
              f"{fmt_time(times['student'], 1000, 'ms')}, speed-up {fmt_ratio(r)} (paper 1.73x)")
    print(f"distill_cache_speedup: {headline}")


if __name__ == "__main__":
    main()
