"""The shared training loop: schedule, exact resume, non-finite loss, DDP on 2 CPU processes."""

from __future__ import annotations

import os
import socket

import pytest
import torch
from torch import nn

from s3kit.train import TrainConfig, last_checkpoint, lr_factor, teardown_distributed, train


class ToyData:
    """7 batches per epoch, drawn from torch's global RNG (the trainer seeds it per batch)."""

    def __init__(self, n: int = 7, offset: float = 0.0):
        self.n, self.offset = n, offset

    def __iter__(self):
        for _ in range(self.n):
            x = torch.randn(8, 4)
            yield {"x": x, "y": x.sum(1, keepdim=True) * 0.5 + self.offset}


class ToyMethod(nn.Module):
    """MLP regression with dropout, so the model's RNG stream matters for exact resume."""

    def __init__(self, seed: int = 0, bad_at: int | None = None):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 1))
        self.calls = 0
        self.bad_at = bad_at

    def forward(self, x):
        return self.net(x)

    def step(self, batch):
        self.calls += 1
        loss = ((self.net(batch["x"]) - batch["y"]) ** 2).mean()
        if self.bad_at is not None and self.calls == self.bad_at:
            loss = loss * float("nan")
        return {"loss": loss, "mae": (self.net(batch["x"]) - batch["y"]).abs().mean()}


def _cfg(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path), total_steps=12, lr=1e-2, warmup=0.25, grad_accum=2, clip=1.0,
                log_every=1, val_every=6, save_every=3, keep_last=2, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_lr_schedule_hand_values():
    # 10 steps, 2 warm-up: 0.5, 1.0, then linear decay over 8 updates
    got = [lr_factor(s, 10, 2, "linear") for s in range(10)]
    assert got[:3] == [0.5, 1.0, 1.0]
    assert got[6] == pytest.approx(1 - 4 / 8)
    assert lr_factor(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(9, 10, 2, "constant") == 1.0
    assert TrainConfig(total_steps=200, warmup=0.07).warmup_steps == 14
    assert TrainConfig(total_steps=200, warmup=30).warmup_steps == 30


def test_training_lowers_loss_and_logs(tmp_path):
    res = train(ToyMethod(), ToyData(), _cfg(tmp_path, total_steps=30, grad_accum=1, lr=3e-2), val_data=ToyData(3))
    assert res.losses[30] < 0.3 * res.losses[1]
    assert res.val[-1][1]["loss"] < res.val[0][1]["loss"]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,split,name,value" and any(",val,loss," in r for r in rows)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step-00000027", "step-00000030"]  # keep_last=2


def test_resume_after_kill_gives_identical_losses(tmp_path):
    straight = train(ToyMethod(), ToyData(), _cfg(tmp_path / "a"))

    class Kill(Exception):
        pass

    def kill(step, logs):
        if step == 8:  # after the step-6 checkpoint, mid-epoch, mid-warm-up-decay
            raise Kill

    with pytest.raises(Kill):
        train(ToyMethod(), ToyData(), _cfg(tmp_path / "b"), callbacks=[kill])
    assert last_checkpoint(tmp_path / "b").name == "step-00000006"
    resumed = train(ToyMethod(seed=123), ToyData(), _cfg(tmp_path / "b"))  # other init: weights must come from ckpt
    assert sorted(resumed.losses) == list(range(7, 13))
    for s in range(7, 13):
        assert resumed.losses[s] == pytest.approx(straight.losses[s], abs=1e-6, rel=0)
    # the CSV keeps no rows from the killed run beyond the checkpoint twice
    steps = [int(r.split(",")[0]) for r in (tmp_path / "b" / "metrics.csv").read_text().splitlines()[1:]
             if ",train,loss," in r]
    assert steps == list(range(1, 13))
    # final weights equal
    from s3kit import checkpoint

    wa, _ = checkpoint.load(last_checkpoint(tmp_path / "a"))
    wb, _ = checkpoint.load(last_checkpoint(tmp_path / "b"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_nonfinite_loss_names_the_step(tmp_path):
    with pytest.raises(FloatingPointError, match="at step 3"):
        train(ToyMethod(bad_at=5), ToyData(), _cfg(tmp_path))  # micro-batch 5 = step 3 with grad_accum=2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    method = ToyMethod(seed=rank)  # different init per rank: DDP must broadcast rank 0's
    cfg = TrainConfig(out_dir=os.path.join(out, "run"), total_steps=6, lr=1e-2, warmup=0.0, grad_accum=2,
                      clip=1.0, save_every=100, progress=False, device="cpu")
    train(method, ToyData(offset=float(rank)), cfg)  # different data per rank
    torch.save({k: v.clone() for k, v in method.state_dict().items()}, os.path.join(out, f"rank{rank}.pt"))
    teardown_distributed()
    os._exit(0)  # results are on disk: skip interpreter teardown, where gloo threads can still abort


def test_ddp_two_cpu_ranks_end_equal(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    init = ToyMethod(seed=0).state_dict()
    assert any(not torch.equal(w0[k], init[k]) for k in w0)  # it trained
    for k in w0:
        assert torch.allclose(w0[k], w1[k], atol=1e-6), k


def test_progress_bar_shows_the_methods_progress_keys(tmp_path, capsys):
    """A method's ``progress_keys`` pick what the bar shows (DVCC: its loss is always 2)."""
    method = ToyMethod()
    method.progress_keys = ("mae",)
    train(method, ToyData(), _cfg(tmp_path / "a", total_steps=3, progress=True))
    err = capsys.readouterr().err
    assert "mae=" in err and "loss=" not in err
    train(ToyMethod(), ToyData(), _cfg(tmp_path / "b", total_steps=3, progress=True))
    err = capsys.readouterr().err
    assert "loss=" in err and "mae=" not in err


class AutocastProbe(ToyMethod):
    """Records whether its step ran under CPU autocast, and in which dtype."""

    def step(self, batch):
        self.seen = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        return super().step(batch)


def test_amp_cpu_runs_steps_under_bf16_autocast_and_still_learns(tmp_path):
    plain, mixed = AutocastProbe(), AutocastProbe()
    train(plain, ToyData(), _cfg(tmp_path / "fp32", total_steps=4))
    assert plain.seen[0] is False  # amp alone is CUDA only: CPU steps stay fp32
    res = train(mixed, ToyData(), _cfg(tmp_path / "bf16", total_steps=40, amp_cpu=True, grad_accum=1, val_every=100))
    assert mixed.seen == (True, torch.bfloat16)
    assert res.losses[40] < 0.5 * res.losses[1]
    assert next(mixed.parameters()).dtype == torch.float32  # autocast, not a bf16 model


def test_torchrun_distill_two_ranks_exits_cleanly(tmp_path):
    """The real command under torchrun (2 gloo ranks): both ranks train, rank 0 writes the checkpoint,
    and every process exits 0 (the CLI leaves the process group before interpreter teardown)."""
    import subprocess
    import sys

    from s3kit.checkpoint import load
    from s3kit.data.manifest import save_cuts
    from s3kit.testing import tiny_hf_dir, tone_cuts

    manifest = save_cuts(tone_cuts(tmp_path / "audio", n=8, seconds=(0.4, 0.6)), tmp_path / "train.jsonl.gz")
    teacher = tiny_hf_dir(tmp_path / "teacher", kind="hubert", layers=2, seed=1)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "s3kit", "distill", "distilhubert", "--teacher", str(teacher), "--manifest",
           str(manifest), "--out", str(out), "layers=1", "targets=[1,2]", "train.progress=false",
           "max_duration=1", "train.total_steps=3", "train.device=cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr
    _, meta = load(last_checkpoint(out))
    assert meta["trainer_state"]["step"] == 3 and len(meta["trainer_state"]["rng"]) == 2  # both ranks
