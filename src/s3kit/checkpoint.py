"""Checkpoints are a directory of safetensors + JSON, written atomically; loading never unpickles.

Layout of a checkpoint directory::

    model.safetensors     the model's state_dict (contiguous tensors; shared storage copied)
    config.json           {"class": "...", "config": {...}, **meta}
    <name>.safetensors    optional extra tensor groups (optimizer state, EMA, ...) via save_tensors
    <name>.json           optional extra metadata via save_json

A directory is written as ``DIR.tmp-<pid>`` and renamed into place, so a kill mid-write never
leaves a half checkpoint under the final name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or does not fit the model."""


def _config_dict(config: Any) -> dict:
    if config is None:
        return {}
    if dataclasses.is_dataclass(config):
        from s3kit.config import to_dict

        return to_dict(config)
    if isinstance(config, dict):
        return config
    if hasattr(config, "to_dict"):  # transformers PretrainedConfig
        return config.to_dict()
    raise TypeError(f"config must be a dataclass or dict, got {type(config).__name__}")


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage and non-contiguous views: store independent copies
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a single file atomically (temp file + fsync + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(tmp, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(
    directory: str | Path,
    model: nn.Module | dict[str, torch.Tensor],
    config: Any = None,
    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
    **meta: Any,
) -> Path:
    """Save ``model`` (module or state_dict) and ``config`` to ``directory`` atomically.

    ``extra_tensors`` maps a name to a flat tensor dict stored as ``<name>.safetensors``;
    ``meta`` is stored next to the config in ``config.json`` (JSON-serialisable values).
    """
    directory = Path(directory)
    state = model.state_dict() if isinstance(model, nn.Module) else model
    cls = type(model).__name__ if isinstance(model, nn.Module) else meta.pop("class_name", None)
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(_contiguous(state), str(tmp / MODEL_FILE))
    for name, tensors in (extra_tensors or {}).items():
        save_file(_contiguous(tensors), str(tmp / f"{name}.safetensors"))
    body = {"class": cls, "config": _config_dict(config), **meta}
    (tmp / CONFIG_FILE).write_text(json.dumps(body, indent=2, sort_keys=True, default=str))
    old = None
    if directory.exists():
        old = directory.with_name(f"{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
    os.replace(tmp, directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return directory


def load(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, meta)`` from a checkpoint directory; ``meta["config"]`` is the config dict."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    for f in (MODEL_FILE, CONFIG_FILE):
        if not (directory / f).exists():
            raise CheckpointError(f"{directory}: incomplete checkpoint, {f} is missing")
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{directory / CONFIG_FILE}: not valid JSON ({e})") from e
    try:
        state = load_file(str(directory / MODEL_FILE))
    except Exception as e:  # safetensors raises its own error types on truncation
        raise CheckpointError(f"{directory / MODEL_FILE}: unreadable safetensors file ({e})") from e
    return state, meta


def load_tensors(directory: str | Path, name: str) -> dict[str, torch.Tensor]:
    """An extra tensor group saved with ``save(..., extra_tensors={name: ...})``."""
    path = Path(directory) / f"{name}.safetensors"
    if not path.exists():
        raise CheckpointError(f"{path}: not found in checkpoint")
    return load_file(str(path))


def check_compatible(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape
    )
    if missing or unexpected or shapes:
        lines = [f"{source} does not fit {type(model).__name__} (different architecture or config):"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if keys:
                shown = keys[:10] + ([f"... and {len(keys) - 10} more"] if len(keys) > 10 else [])
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(shown))
        raise CheckpointError("\n".join(lines))


def load_into(model: nn.Module, directory: str | Path) -> dict[str, Any]:
    """Load weights from ``directory`` into ``model`` (strict, with a readable mismatch error);
    returns the checkpoint's meta dict."""
    state, meta = load(directory)
    check_compatible(model, state, source=str(directory))
    model.load_state_dict(state)
    return meta
