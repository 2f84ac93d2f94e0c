"""The one training loop every s3kit method uses (distillation, pretraining, probing, rewiring).

A *method* is an ``nn.Module`` with

* ``step(batch) -> dict[str, Tensor]`` holding ``"loss"`` (other entries are logged);
* optional ``validate(batch) -> dict`` (default: ``step`` under ``no_grad``);
* optional ``progress_keys``: the entries shown in the progress bar (default ``("loss",)``; DVCC's
  loss is 2 by construction, so it shows its two views instead);
* optional ``on_step_end(step)`` (e.g. an EMA update), ``trainable_parameters()`` (default: every
  parameter with ``requires_grad``), ``param_groups()`` (optimiser groups, overrides the former);
* optional ``checkpoint_state()`` / ``load_checkpoint_state(state)`` (default ``state_dict``;
  DistilHuBERT leaves its frozen teacher out) and ``checkpoint_meta() -> dict`` (extra keys
  written into the checkpoint's ``config.json``, e.g. ``"upstream"``).

The trainer owns the optimiser and learning-rate schedule (linear warm-up, then linear or cosine
decay to zero, or constant), gradient accumulation, clipping, autocast on CUDA, logging (CSV
always; TensorBoard event files when the optional ``tensorboard`` package is installed), a tqdm
bar, periodic validation, checkpoints (safetensors + JSON via :mod:`s3kit.checkpoint`) and
**exact resume**: model, optimiser, RNG states and the data position (epoch + batches consumed)
are restored, and every batch is drawn under an RNG seeded by ``(seed, epoch, index)`` so the
data pipeline never perturbs the model's random stream.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised from the
environment (gloo on CPU, nccl on CUDA) and the method is wrapped in
``DistributedDataParallel``; every step goes through the DDP wrapper (calling ``.module``
directly would skip the gradient all-reduce, DEPENDENCIES.md §4). The data must be sharded per
rank (s3kit's lhotse loader does it by itself when built after :func:`setup_distributed`).

Bad audio: an s3kit loader (:func:`s3kit.data.loader.make_loader`) built without a policy gets
``TrainConfig.on_bad_audio`` (``skip``: unusable cuts are dropped, logged once, counted in
``metrics.csv`` as ``skipped_audio`` and listed in ``out_dir/skipped_audio.jsonl``; more than
``max_bad_share`` of them stops the run). Under DDP a rank that stops on its data (a bad file under
``error``, the share limit) stops every rank with its message, at the same step: no rank hangs in
a collective waiting for it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import random
import re
import shutil
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from s3kit import checkpoint
from s3kit.data.badaudio import MAX_BAD_SHARE, OnBadAudio, check_policy, skipped_path

CKPT_DIR = "checkpoints"
STATE_KEY = "trainer_state"
_STEP_RE = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class TrainConfig:
    """Procedure options of the loop. Defaults follow DistilHuBERT's s3prl runner
    (REFERENCE-NOTES.md §F: lr 2e-4, 7 % warm-up, linear decay, betas (0.9, 0.98), eps 1e-6)."""

    out_dir: str = "runs/train"
    total_steps: int = 200_000  # optimiser updates (DistilHuBERT §3.1: 200k)
    lr: float = 2e-4
    warmup: float = 0.07  # a fraction of total_steps when < 1, else a number of steps
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    optimizer: Literal["adam", "adamw"] = "adam"
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.0
    grad_accum: int = 1
    clip: float | None = 5.0  # s3prl runner's gradient_clipping
    amp: bool = True  # CUDA: bf16 autocast where supported, else fp16 with a grad scaler
    amp_cpu: bool = False  # with amp, bf16 autocast on CPU too (fast on CPUs with AMX / AVX512-BF16)
    log_every: int = 50
    val_every: int = 1000
    save_every: int = 10_000  # s3prl runner's save_step
    save_at: list[int] = field(default_factory=list)  # extra checkpoints kept for good
    keep_last: int = 2
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    on_bad_audio: OnBadAudio = "skip"  # training data: drop an unusable cut (s3kit.data.badaudio); "error" stops
    max_bad_share: float = MAX_BAD_SHARE  # with "skip": stop once more than this share of the cuts was unusable

    def __post_init__(self):
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {self.keep_last}")
        check_policy(self.on_bad_audio)
        if not 0.0 <= self.max_bad_share <= 1.0:
            raise ValueError(f"max_bad_share must be in [0, 1], got {self.max_bad_share}")

    @property
    def bad_audio_options(self) -> dict[str, Any]:
        """``on_bad_audio`` / ``max_bad_share`` as keywords for the loaders and passes over the
        training data that run before :func:`train` (teacher caches, feature statistics, k-means)."""
        return {"on_bad_audio": self.on_bad_audio, "max_bad_share": self.max_bad_share}

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup * self.total_steps)) if self.warmup < 1 else int(self.warmup)


@dataclass
class TrainResult:
    """What :func:`train` returns: the final step, per-step train losses (this run's steps, keyed
    by step), validation history ``[(step, {name: value})]``, the last checkpoint directory and
    the number of training cuts skipped as unusable audio (all ranks)."""

    step: int
    losses: dict[int, float]
    val: list[tuple[int, dict[str, float]]]
    checkpoint: Path | None
    out_dir: Path
    skipped_audio: int = 0


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier for update ``step`` (0-based): linear warm-up over ``warmup``
    updates to 1, then ``linear`` / ``cosine`` decay to 0 at ``total``, or ``constant``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- distributed


def setup_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; initialises the process group from torchrun's env vars
    when ``WORLD_SIZE > 1`` (idempotent). nccl on CUDA, gloo on CPU."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return rank, world, dev


def teardown_distributed() -> None:
    """Destroy the process group, if any, while the interpreter is fully alive: gloo's worker threads
    that outlive it can abort the process at exit ("terminate called without an active exception")."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()  # drop DDP reducers and pending work that still point at the group
        dist.destroy_process_group()


class _StepForward(nn.Module):
    """Routes DDP's ``forward`` to the method's ``step`` so DDP sees every step."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, batch):
        return self.method.step(batch)


# ----------------------------------------------------------------------------- RNG + data position


def _rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    np_state = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    py_state = random.getstate()
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py_state[0], list(py_state[1]), py_state[2]]}
    return tensors, meta


def _set_rng_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    name, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


@contextlib.contextmanager
def _isolated_rng(seed: int):
    """Run the data pipeline under its own seed; restore the model's RNG streams afterwards."""
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


def _batch_seed(seed: int, epoch: int, index: int, rank: int) -> int:
    return zlib.crc32(f"{seed}:{epoch}:{index}:{rank}".encode())


class _DataCursor:
    """Endless iteration over ``data`` epoch after epoch, with a restorable (epoch, index)."""

    def __init__(self, data: Iterable, seed: int, rank: int, epoch: int = 0, index: int = 0):
        self.data, self.seed, self.rank = data, seed, rank
        self.epoch, self.index = epoch, 0
        self._it = None
        self._start(epoch, skip=index)

    def _start(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.index = epoch, 0
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(epoch)
        elif isinstance(getattr(self.data, "epoch", None), int):
            self.data.epoch = epoch  # s3kit's AudioLoader: each iter() uses (then advances) .epoch
        with _isolated_rng(_batch_seed(self.seed, epoch, -1, self.rank)):
            self._it = iter(self.data)
        for _ in range(skip):  # resume: replay the consumed batches of this epoch
            self._next_raw()

    def _next_raw(self):
        with _isolated_rng(_batch_seed(self.seed, self.epoch, self.index, self.rank)):
            batch = next(self._it)
        self.index += 1
        return batch

    def next(self):
        try:
            return self._next_raw()
        except StopIteration:
            if self.index == 0:
                raise ValueError("training data is empty (an epoch yielded no batch)") from None
            self._start(self.epoch + 1)
            return self._next_raw()


def _all_ranks_ok(error: BaseException | None, world: int, device: torch.device) -> None:
    """Under DDP, raise on every rank when any rank failed to get its data (so none waits forever
    in the next collective); the failing rank re-raises its own error."""
    if world > 1:
        import torch.distributed as dist

        flag = torch.tensor([0.0 if error is None else 1.0], device=device)
        dist.all_reduce(flag)
        if flag.item() > 0:
            parts = [None] * world
            dist.all_gather_object(parts, None if error is None else f"{type(error).__name__}: {error}")
            if error is None:
                rank, msg = next((r, m) for r, m in enumerate(parts) if m is not None)
                from s3kit.audio import AudioError

                cls = AudioError if msg.split(":", 1)[0] in ("AudioError", "BadAudioShareError") else RuntimeError
                raise cls(f"rank {rank} stopped on its data, so every rank stops: {msg}")
    if error is not None:
        raise error


def _next_batch(cursor: _DataCursor, world: int, device: torch.device):
    try:
        batch, error = cursor.next(), None
    except Exception as e:  # a bad file (on_bad_audio="error"), the skip share limit, empty data
        batch, error = None, e
    _all_ranks_ok(error, world, device)
    return batch


def _skipped_count(data, world: int, device: torch.device) -> int:
    bad = getattr(data, "bad_audio", None)
    n = torch.tensor([float(len(bad)) if bad is not None else 0.0], device=device)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(n)
    return int(n.item())


# ----------------------------------------------------------------------------- optimiser state


def _flatten_optimizer(state: dict) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """torch optimizer state_dict -> (tensors, JSON): no pickle anywhere."""
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for k, v in per_param.items():
            if isinstance(v, Tensor):
                tensors[f"{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


# ----------------------------------------------------------------------------- logging


class _Logger:
    """CSV (long format ``step,split,name,value``) always; TensorBoard when installed."""

    def __init__(self, out_dir: Path, resume_step: int, enabled: bool):
        self.enabled = enabled
        self.path = out_dir / "metrics.csv"
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and resume_step >= 0:
            # drop rows a killed run wrote after the checkpoint we resume from
            with open(self.path, newline="") as f:
                rows = [r for r in csv.reader(f)][1:]
            keep = [r for r in rows if r and int(r[0]) <= resume_step]
            checkpoint.write_atomic(self.path, "step,split,name,value\n" + "".join(",".join(r) + "\n" for r in keep))
        elif not self.path.exists() or resume_step < 0:
            checkpoint.write_atomic(self.path, "step,split,name,value\n")
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the optional `tensorboard` package

            self.tb = SummaryWriter(str(out_dir / "tb"))
        except ImportError:
            self.tb = None

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            for k, v in values.items():
                f.write(f"{step},{split},{k},{v:.8g}\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self):
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------- checkpoints


def checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``out_dir/checkpoints`` as ``[(step, dir)]``, oldest first."""
    root = Path(out_dir) / CKPT_DIR
    found = []
    if root.is_dir():
        for d in root.iterdir():
            m = _STEP_RE.match(d.name)
            if m and (d / checkpoint.MODEL_FILE).exists() and (d / checkpoint.CONFIG_FILE).exists():
                found.append((int(m.group(1)), d))
    return sorted(found)


def last_checkpoint(out_dir: str | Path) -> Path | None:
    found = checkpoints(out_dir)
    return found[-1][1] if found else None


def _model_state(method: nn.Module) -> dict[str, Tensor]:
    fn = getattr(method, "checkpoint_state", None)
    return fn() if fn is not None else method.state_dict()


def _load_model_state(method: nn.Module, state: dict[str, Tensor], source: Path) -> None:
    fn = getattr(method, "load_checkpoint_state", None)
    if fn is not None:
        fn(state)
        return
    checkpoint.check_compatible(method, state, source=str(source))
    method.load_state_dict(state)


# ----------------------------------------------------------------------------- the loop


def _trainable(method: nn.Module):
    if hasattr(method, "param_groups"):
        return method.param_groups()
    params = method.trainable_parameters() if hasattr(method, "trainable_parameters") else method.parameters()
    return [p for p in params if p.requires_grad]


def _to(batch, device):
    if device.type == "cpu":
        return batch
    if hasattr(batch, "to"):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def _scalar(v) -> float:
    return float(v.detach().float().mean()) if isinstance(v, Tensor) else float(v)


def validate(method: nn.Module, data: Iterable, device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean of ``method.validate(batch)`` (or ``step``) over ``data``, in eval mode, no grad."""
    device = torch.device(device)
    was_training = method.training
    method.eval()
    fn = getattr(method, "validate", None) or method.step
    sums: dict[str, float] = {}
    n = 0
    error = None
    with torch.no_grad():
        try:
            for batch in data:
                out = fn(_to(batch, device))
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + _scalar(v)
                n += 1
        except Exception as e:  # e.g. a bad file in the validation split: every rank must stop
            error = e
    method.train(was_training)
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    _all_ranks_ok(error, dist.get_world_size() if distributed else 1, device)
    if distributed:
        # lhotse shards validation cuts across ranks too: average over every rank's batches
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (sums, n))
        sums, n = {}, 0
        for part_sums, part_n in parts:
            n += part_n
            for k, v in part_sums.items():
                sums[k] = sums.get(k, 0.0) + v
    if n == 0:
        raise ValueError("validation data is empty")
    return {k: v / n for k, v in sums.items()}


def train(
    method: nn.Module,
    train_data: Iterable,
    cfg: TrainConfig,
    val_data: Iterable | None = None,
    callbacks: list[Callable[[int, dict[str, float]], None]] = (),
    resume: bool = True,
    config: Any = None,
) -> TrainResult:
    """Train ``method`` for ``cfg.total_steps`` updates; resumes from the last checkpoint in
    ``cfg.out_dir`` when ``resume`` (the default). ``callbacks(step, logs)`` run after every
    update. ``config`` (a dataclass/dict) is stored in checkpoints next to the train config."""
    rank, world, device = setup_distributed(cfg.device)
    is_main = rank == 0
    out_dir = Path(cfg.out_dir)
    method.to(device)
    method.train()

    params = _trainable(method)
    if not params:
        raise ValueError(f"{type(method).__name__} has no trainable parameters")
    progress_keys = tuple(getattr(method, "progress_keys", ("loss",)))
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])

    use_amp = cfg.amp and (device.type == "cuda" or (device.type == "cpu" and cfg.amp_cpu))
    amp_dtype = torch.bfloat16 if device.type == "cpu" or (use_amp and torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    step, epoch, index = 0, 0, 0
    ckpt = last_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        state, meta = checkpoint.load(ckpt)
        _load_model_state(method, state, ckpt)
        ts = meta[STATE_KEY]
        optimizer.load_state_dict(_unflatten_optimizer(checkpoint.load_tensors(ckpt, "optimizer"), ts["optimizer"]))
        rng = checkpoint.load_tensors(ckpt, f"rng{rank}" if (ckpt / f"rng{rank}.safetensors").exists() else "rng0")
        _set_rng_state(rng, ts["rng"][str(rank)] if str(rank) in ts["rng"] else ts["rng"]["0"])
        if ts.get("scaler"):
            scaler.load_state_dict(ts["scaler"])
        step, epoch, index = ts["step"], ts["epoch"], ts["index"]
    else:
        torch.manual_seed(cfg.seed + rank)  # own dropout stream per rank; DDP broadcasts rank 0's weights
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)

    model = method
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(_StepForward(method), device_ids=[device.index] if device.type == "cuda" else None)
        step_fn = model
    else:
        step_fn = method.step

    if ckpt is not None and "cursor" in ts["rng"].get(str(rank), {}):
        epoch, index = ts["rng"][str(rank)]["cursor"]  # this rank's own position (ranks may skip differently)
    if hasattr(train_data, "set_bad_audio") and not getattr(train_data, "policy_set", True):
        train_data.set_bad_audio(cfg.on_bad_audio, cfg.max_bad_share)
    if getattr(train_data, "bad_audio", None) is not None:
        train_data.bad_audio.log_to(skipped_path(out_dir, rank))
    cursor = _DataCursor(train_data, cfg.seed, rank, epoch, index)
    logger = _Logger(out_dir, step if ckpt is not None else -1, is_main)
    warmup = cfg.warmup_steps
    losses: dict[int, float] = {}
    val_hist: list[tuple[int, dict[str, float]]] = []
    last_saved = ckpt
    bar = None
    if is_main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.total_steps, initial=step, desc=f"train {out_dir.name}", dynamic_ncols=True)

    def save(at: int) -> Path:
        nonlocal last_saved
        # every rank contributes its RNG state; rank 0 writes
        rng_t, rng_m = _rng_state()
        rng_m["cursor"] = [cursor.epoch, cursor.index]
        gathered = [(rng_t, rng_m)]
        if world > 1:
            import torch.distributed as dist

            gathered = [None] * world
            dist.all_gather_object(gathered, (rng_t, rng_m))
        path = out_dir / CKPT_DIR / f"step-{at:08d}"
        if is_main:
            opt_t, opt_m = _flatten_optimizer(optimizer.state_dict())
            ts = {"step": at, "epoch": cursor.epoch, "index": cursor.index, "optimizer": opt_m,
                  "rng": {str(r): g[1] for r, g in enumerate(gathered)},
                  "scaler": scaler.state_dict() if scaler.is_enabled() else None}
            extra = {"optimizer": opt_t, **{f"rng{r}": g[0] for r, g in enumerate(gathered)}}
            meta = dict(method.checkpoint_meta()) if hasattr(method, "checkpoint_meta") else {}
            cfg_dict = {"train": dataclasses.asdict(cfg)}
            if config is not None:
                cfg_dict["method"] = checkpoint._config_dict(config)
            checkpoint.save(path, _model_state(method), cfg_dict, extra_tensors=extra,
                            class_name=type(method).__name__, **{STATE_KEY: ts}, **meta)
            _prune(out_dir, cfg)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        last_saved = path
        return path

    try:
        while step < cfg.total_steps:
            factor = lr_factor(step, cfg.total_steps, warmup, cfg.schedule)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * factor
            optimizer.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                batch = _to(_next_batch(cursor, world, device), device)
                sync = micro == cfg.grad_accum - 1 or world == 1
                ctx = model.no_sync() if not sync else contextlib.nullcontext()
                with ctx:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        out = step_fn(batch)
                    if "loss" not in out:
                        raise KeyError(f"{type(method).__name__}.step() must return a dict with 'loss'")
                    loss = out["loss"]
                    if not torch.isfinite(loss.detach()).all():
                        raise FloatingPointError(
                            f"non-finite loss ({float(loss.detach())}) at step {step + 1} "
                            f"(micro-batch {micro + 1}/{cfg.grad_accum}); lower the learning rate, "
                            f"enable clipping or check the input at epoch {cursor.epoch}, batch {cursor.index}"
                        )
                    scaler.scale(loss / cfg.grad_accum).backward()
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + _scalar(v) / cfg.grad_accum
            if cfg.clip is not None:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                                           cfg.clip)
                sums["grad_norm"] = float(grad_norm)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            if hasattr(method, "on_step_end"):
                method.on_step_end(step)
            losses[step] = sums["loss"]
            sums["lr"] = cfg.lr * factor
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{sums[k]:.4f}" for k in progress_keys if k in sums})
            if step % cfg.log_every == 0 or step == cfg.total_steps:
                if getattr(train_data, "bad_audio", None) is not None:
                    sums["skipped_audio"] = _skipped_count(train_data, world, device)
                logger.log(step, "train", sums)
            for cb in callbacks:
                cb(step, sums)
            if val_data is not None and (step % cfg.val_every == 0 or step == cfg.total_steps):
                vals = validate(method, val_data, device)
                val_hist.append((step, vals))
                logger.log(step, "val", vals)
            if step % cfg.save_every == 0 or step in cfg.save_at or step == cfg.total_steps:
                save(step)
    finally:
        if bar is not None:
            bar.close()
        logger.close()
    skipped = _skipped_count(train_data, world, device)
    return TrainResult(step=step, losses=losses, val=val_hist, checkpoint=last_saved, out_dir=out_dir,
                       skipped_audio=skipped)


def _prune(out_dir: Path, cfg: TrainConfig) -> None:
    """Keep the newest ``keep_last`` checkpoints plus every ``save_at`` step."""
    found = checkpoints(out_dir)
    removable = [(s, d) for s, d in found if s not in cfg.save_at]
    for _, d in removable[: max(0, len(removable) - cfg.keep_last)]:
        shutil.rmtree(d, ignore_errors=True)


__all__ = ["TrainConfig", "TrainResult", "checkpoints", "last_checkpoint", "lr_factor", "setup_distributed",
           "train", "validate"]
