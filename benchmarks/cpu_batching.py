"""CPU inference plan for s3kit's small fbank / log-mel encoders: length-sorted batches of up to
16 s (their ``cpu_batch_seconds``, what ``inference_plan`` now gives them) against one utterance at
a time (the CPU plan of waveform-CNN models), side by side in one run.

The demo's encoders at random initialisation: the tiny MelHuBERT (4 x 192, the teacher's and its
students' shape), the KWS student (``small``, 1.6 M, 100 Hz fbank) and the small M2D ViT (4 x 192 on
80 x 4 log-mel patches). Two sets of audio: 1 s clips (the keyword corpus) and log-normal lengths of
1.5-5 s (the sentences). Each pass runs the upstream over every utterance from waveforms already in
memory and time-averages every state; both plans' pooled states are checked equal. Interleaved
rounds in alternating order after a warm-up round; ratios per round (paired).
Last line: ``cpu_batching_melhubert_clips: <ratio>x`` (one at a time / batched, MelHuBERT on 1 s clips).

    python benchmarks/cpu_batching.py [--clips 120] [--sentences 40] [--rounds 7] [--threads 1]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _timing import describe_device, fmt_ratio, fmt_time, interleaved, ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=120, help="1 s clips")
    ap.add_argument("--sentences", type=int, default=40, help="utterances of 1.5-5 s")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from s3kit.data.loader import cpu_batch_seconds_of
    from s3kit.models.kws_student import KWSStudent, KWSStudentUpstream
    from s3kit.models.kws_student import config_for as kws_config
    from s3kit.models.m2d_vit import M2DUpstream, ViTEncoder, arch_config
    from s3kit.models.melhubert import MelHubert, MelHubertUpstream
    from s3kit.models.melhubert import config_for as melhubert_config

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    models = {
        "melhubert": MelHubertUpstream(MelHubert(melhubert_config("tiny", dropout=0.0))).eval(),
        "kws_student": KWSStudentUpstream(KWSStudent(kws_config("small"))).eval(),
        "m2d": M2DUpstream(ViTEncoder(arch_config("small"))).eval(),
    }
    sets = {
        "clips": [torch.randn(16000) * 0.1 for _ in range(args.clips)],
        "sentences": [torch.randn(int(16000 * np.clip(rng.lognormal(np.log(2.9), 0.35), 1.5, 5.0))) * 0.1
                      for _ in range(args.sentences)],
    }

    def batches(wavs: list[torch.Tensor], seconds: float | None):
        """One utterance each (None) or length-sorted batches of up to ``seconds`` of audio."""
        order = sorted(range(len(wavs)), key=lambda i: -len(wavs[i]))
        groups, cur, dur = [], [], 0.0
        for i in order:
            d = len(wavs[i]) / 16000
            if cur and (seconds is None or dur + d > seconds):
                groups.append(cur)
                cur, dur = [], 0.0
            cur.append(i)
            dur += d
        groups.append(cur)
        out = []
        for g in groups:
            lengths = torch.tensor([len(wavs[i]) for i in g])
            padded = torch.zeros(len(g), int(lengths.max()))
            for b, i in enumerate(g):
                padded[b, : len(wavs[i])] = wavs[i]
            out.append((g, padded, lengths))
        return out

    def run(up, plan):
        pooled = {}
        with torch.inference_mode():
            for g, wav, lengths in plan:
                hidden = up(wav, lengths)
                feats = hidden.pooled(list(range(up.num_layers)))
                for b, i in enumerate(g):
                    pooled[i] = feats[b]
        return pooled

    print(f"{describe_device('cpu')}; {args.rounds} rounds + 1 warm-up; pooled states of every layer")
    headline = None
    for name, up in models.items():
        seconds = cpu_batch_seconds_of(up)
        params = sum(p.numel() for p in up.parameters())
        assert seconds is not None, f"{name}: expected a cpu_batch_seconds"
        for set_name, wavs in sets.items():
            one, batched = batches(wavs, None), batches(wavs, seconds)
            a, b = run(up, one), run(up, batched)
            diff = max(float((a[i] - b[i]).abs().max()) for i in a)
            assert diff < 1e-3, f"{name} / {set_name}: batched and one-at-a-time states differ by {diff:.1e}"
            times = interleaved({"one": lambda: run(up, one), "batched": lambda: run(up, batched)}, args.rounds)
            r = ratio(times["one"], times["batched"])
            audio = sum(len(w) for w in wavs) / 16000
            print(f"{name} ({params / 1e6:.1f} M), {set_name} ({len(wavs)} utterances, {audio:.0f} s, "
                  f"{len(batched)} batches of <= {seconds:g} s): one at a time {fmt_time(times['one'])}, batched "
                  f"{fmt_time(times['batched'])}; max |diff| {diff:.1e}")
            print(f"  batched vs one at a time: {fmt_ratio(r)}")
            if name == "melhubert" and set_name == "clips":
                headline = r["median"]
    print(f"cpu_batching_melhubert_clips: {headline:.2f}x")


if __name__ == "__main__":
    main()
