"""On-device KWS latency: the small (1.6 M) student as PyTorch fp32, ONNX fp32 and ONNX int8 against
the wav2vec 2.0 Base-shaped teacher (95 M), side by side in one run, batch 1, CPU.

Every path starts from the waveform: the student's time includes its Kaldi fbank (PyTorch) before
the ONNX graph (which takes fbank), the teacher's its CNN. Weights are random (latency does not
depend on them); the student gets a linear classifier over 12 classes as the exported artefact.
Prints parameters, model file size and median milliseconds per second of audio.

    python benchmarks/kws.py [--seconds 1.0] [--repeats 20] [--threads 1] [--arch small]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0, help="audio per call (Speech Commands clips are 1 s)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: a phone-class core)")
    ap.add_argument("--arch", default="small", help="student arch (small = 1.6 M, large = 21 M)")
    ap.add_argument("--classes", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import onnxruntime as ort
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from s3kit import checkpoint
    from s3kit.config import to_dict
    from s3kit.eval.kws import KWSClassifier, _OnDevice, export_onnx
    from s3kit.models.kws_student import UPSTREAM_LOADER, KWSStudent, config_for

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    clf = KWSClassifier(KWSStudent(config_for(args.arch)), args.classes).eval()
    classes = [f"c{i}" for i in range(args.classes)]
    ckpt = checkpoint.save(tmp / "clf", {f"classifier.{k}": v for k, v in clf.state_dict().items()}, None,
                           class_name="KWSFinetune", upstream=UPSTREAM_LOADER, student_config=to_dict(clf.encoder.config),
                           encoder_prefix="classifier.encoder.", kws={"classes": classes, "label_key": "keyword"})
    info = export_onnx(ckpt, tmp / "onnx", quantize=True, check=True, seconds=args.seconds)
    teacher = Wav2Vec2Model(Wav2Vec2Config(layerdrop=0.0)).eval()  # wav2vec 2.0 Base shape (95 M)

    wav = torch.randn(1, int(args.seconds * 16000)) * 0.1
    on_device = _OnDevice(clf).eval()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    s32 = ort.InferenceSession(info["onnx"], opts, providers=["CPUExecutionProvider"])
    s8 = ort.InferenceSession(info["onnx_int8"], opts, providers=["CPUExecutionProvider"])

    def fbank():
        with torch.inference_mode():
            return clf.encoder.front_end.raw(wav, None)[0].numpy()

    def torch_student():
        with torch.inference_mode():
            on_device(clf.encoder.front_end.raw(wav, None)[0])

    def teacher_fwd():
        with torch.inference_mode():
            teacher(wav, output_hidden_states=True)

    rows = [
        ("teacher wav2vec 2.0 Base, PyTorch fp32", sum(p.numel() for p in teacher.parameters()), None,
         _median_ms(teacher_fwd, args.repeats)),
        (f"student {args.arch}, PyTorch fp32", info["params"], None, _median_ms(torch_student, args.repeats)),
        (f"student {args.arch}, ONNX fp32", info["params"], info["onnx_bytes"],
         _median_ms(lambda: s32.run(None, {"fbank": fbank()}), args.repeats)),
        (f"student {args.arch}, ONNX int8", info["params"], info["onnx_int8_bytes"],
         _median_ms(lambda: s8.run(None, {"fbank": fbank()}), args.repeats)),
    ]
    print(f"{args.seconds:g} s of audio, batch 1, {args.threads} thread(s); ONNX parity: fp32 max |diff| "
          f"{info['max_abs_diff_fp32']:.1e}, int8 {info['max_abs_diff_int8']:.1e} (posteriors)")
    print(f"{'model':<42}{'params':>10}{'file MB':>9}{'ms / s audio':>14}{'vs teacher':>12}")
    t_ms = rows[0][3] / args.seconds
    for name, params, size, ms in rows:
        per_s = ms / args.seconds
        mb = f"{size / 2**20:.2f}" if size else "-"
        print(f"{name:<42}{params / 1e6:>9.2f}M{mb:>9}{per_s:>14.2f}{t_ms / per_s:>11.1f}x")
    print(f"kws_{args.arch}_vs_teacher_latency: {rows[0][3] / rows[1][3]:.1f}x")


if __name__ == "__main__":
    main()
