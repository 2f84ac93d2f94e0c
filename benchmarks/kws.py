"""On-device KWS latency: the small (1.6 M) student as PyTorch fp32, ONNX fp32 and ONNX int8 against
the wav2vec 2.0 Base-shaped teacher (95 M), side by side in one run, batch 1, CPU by default.

Every path starts from the waveform: the student's time includes its Kaldi fbank (PyTorch) before
the ONNX graph (which takes fbank), the teacher's its CNN. Weights are random (latency does not
depend on them); the student gets a linear classifier over 12 classes as the exported artefact.
The four are timed in interleaved rounds in alternating order after a warm-up round; each ratio
to the teacher is taken per round. Prints parameters, model file size, median [range] milliseconds
per second of audio and the ratios; the ONNX graphs' posteriors are checked against PyTorch.
Last line: ``kws_<arch>_onnx_int8_vs_teacher_latency: <ratio>x``.

    python benchmarks/kws.py [--seconds 1.0] [--repeats 20] [--threads 1] [--arch small] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _timing import describe_device, fmt_ratio, interleaved, ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0, help="audio per call (Speech Commands clips are 1 s)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: a phone-class core)")
    ap.add_argument("--arch", default="small", help="student arch (small = 1.6 M, large = 21 M)")
    ap.add_argument("--classes", type=int, default=12)
    ap.add_argument("--device", default="cpu", help="device of the PyTorch models (ONNX: CUDA provider when cuda)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

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
    teacher = Wav2Vec2Model(Wav2Vec2Config(layerdrop=0.0)).eval().to(device)  # wav2vec 2.0 Base shape (95 M)

    wav = (torch.randn(1, int(args.seconds * 16000)) * 0.1).to(device)
    clf.to(device)
    on_device = _OnDevice(clf).eval()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    s32 = ort.InferenceSession(info["onnx"], opts, providers=providers)
    s8 = ort.InferenceSession(info["onnx_int8"], opts, providers=providers)

    def fbank():
        with torch.inference_mode():
            return clf.encoder.front_end.raw(wav, None)[0].cpu().numpy()

    def torch_student():
        with torch.inference_mode():
            on_device(clf.encoder.front_end.raw(wav, None)[0])

    def teacher_fwd():
        with torch.inference_mode():
            teacher(wav, output_hidden_states=True)

    fns = {
        "teacher": teacher_fwd,
        "torch": torch_student,
        "onnx32": lambda: s32.run(None, {"fbank": fbank()}),
        "onnx8": lambda: s8.run(None, {"fbank": fbank()}),
    }
    times = interleaved(fns, args.repeats, device=device)
    rows = [
        ("teacher", "teacher wav2vec 2.0 Base, PyTorch fp32", sum(p.numel() for p in teacher.parameters()), None),
        ("torch", f"student {args.arch}, PyTorch fp32", info["params"], None),
        ("onnx32", f"student {args.arch}, ONNX fp32", info["params"], info["onnx_bytes"]),
        ("onnx8", f"student {args.arch}, ONNX int8", info["params"], info["onnx_int8_bytes"]),
    ]
    print(f"{args.seconds:g} s of audio, batch 1, PyTorch on {describe_device(device)}, ONNX on {s8.get_providers()[0]} "
          f"({args.threads} thread(s)); {args.repeats} rounds + 1 warm-up")
    print(f"ONNX parity: fp32 max |diff| {info['max_abs_diff_fp32']:.1e}, int8 {info['max_abs_diff_int8']:.1e} (posteriors)")
    print(f"{'model':<42}{'params':>10}{'file MB':>9}{'ms / s audio (median [range])':>32}{'vs teacher':>12}")
    for key, name, params, size in rows:
        t = sorted(1000 * x / args.seconds for x in times[key])
        mb = f"{size / 2**20:.2f}" if size else "-"
        med = t[len(t) // 2] if len(t) % 2 else (t[len(t) // 2 - 1] + t[len(t) // 2]) / 2
        r = ratio(times["teacher"], times[key])["median"]
        print(f"{name:<42}{params / 1e6:>9.2f}M{mb:>9}{f'{med:.2f} [{t[0]:.2f}-{t[-1]:.2f}]':>32}{r:>11.1f}x")
    for key in ("torch", "onnx8"):
        print(f"{dict((k, n) for k, n, *_ in rows)[key]} vs teacher: {fmt_ratio(ratio(times['teacher'], times[key]))}")
    print(f"kws_{args.arch}_onnx_int8_vs_teacher_latency: {ratio(times['teacher'], times['onnx8'])['median']:.1f}x")


if __name__ == "__main__":
    main()
