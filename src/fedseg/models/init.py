"""Initial weights from a file (``model.init_checkpoint``): a pretrained or earlier model.

The file holds a state dict, or a checkpoint dict holding one under ``state_dict``, ``model`` or
``global_params`` (a fedseg ``checkpoints/*.pt``). It is read with ``torch.load(weights_only=True)``
(:func:`fedseg.io.safe.load_checkpoint`: tensors and plain containers only, a pickle that would
run code is refused), or with
``safetensors`` when the name ends in ``.safetensors``. Loading is strict: every key of the model
must be in the file with the same shape, and the file may hold nothing else, so a checkpoint of
another architecture never half-loads.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fedseg.io.safe import CheckpointError, UnsafeCheckpointError, load_checkpoint

__all__ = ["InitCheckpointError", "STATE_DICT_KEYS", "read_init_checkpoint", "check_state_dict",
           "load_init_checkpoint"]

STATE_DICT_KEYS: tuple[str, ...] = ("state_dict", "model", "global_params")
"""Where a checkpoint dict may hold the state dict, in the order they are tried."""

_SHOWN = 5  # keys named in an error; the rest are counted


class InitCheckpointError(ValueError):
    """The initial-weights file is missing, unreadable, unsafe, or does not fit the model."""


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def _state_dict_in(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict ``obj`` is or holds (see :data:`STATE_DICT_KEYS`)."""
    if not isinstance(obj, Mapping):
        raise InitCheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict (a mapping of names "
                                  f"to tensors) or a checkpoint dict with one under {', '.join(STATE_DICT_KEYS)}")
    if not obj:
        raise InitCheckpointError(f"{path}: holds an empty dict, not a state dict")
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}
    for key in STATE_DICT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            return _state_dict_in(inner, path)
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    raise InitCheckpointError(
        f"{path}: not a state dict (non-tensor entries: {_few(bad)}) and no state dict under "
        f"{', '.join(STATE_DICT_KEYS)}; save the model's state_dict() or a dict holding it under 'state_dict'"
    )


def read_init_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict stored in ``path`` and the file's SHA-256 (hex).

    Raises:
        InitCheckpointError: the file is missing or unreadable, would need code to unpickle
            (``weights_only=True`` refuses it), is ``.safetensors`` without the ``safetensors``
            package, or holds no state dict. The message names the file.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise InitCheckpointError(f"model.init_checkpoint: no such file {file}")
    raw = file.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if file.name.endswith(".safetensors"):
        try:
            safetensors_torch = importlib.import_module("safetensors.torch")
        except ImportError:
            raise InitCheckpointError(
                f"{file}: a .safetensors file needs the 'safetensors' package, which is not installed; "
                "install it, or save the state dict with torch.save to a .pt file"
            ) from None
        try:
            obj: object = safetensors_torch.load(raw)
        except Exception as exc:  # safetensors raises its own error types
            raise InitCheckpointError(f"{file}: not a readable safetensors file ({exc})") from exc
    else:
        try:
            obj = load_checkpoint(raw, source=str(file))
        except UnsafeCheckpointError as exc:
            raise InitCheckpointError(f"{exc}. Save only the state dict (torch.save(model.state_dict(), path))") from exc
        except CheckpointError as exc:
            raise InitCheckpointError(str(exc)) from exc
    return _state_dict_in(obj, file), digest


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Refuse ``state`` unless it has exactly the model's keys, each with the model's shape.

    Raises:
        InitCheckpointError: names the missing, unexpected and mis-shaped keys (first few of each)
            and the file.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} model key(s) missing from the file: {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} key(s) the model does not have: {_few(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_few(shapes)}")
    if problems:
        raise InitCheckpointError(
            f"{Path(path)} does not fit the model ({type(model).__name__}): "
            + "; ".join(problems) + ". The file must come from the same architecture and data shape"
        )


def load_init_checkpoint(model: nn.Module, path: str | Path) -> str:
    """Load the initial weights in ``path`` into ``model`` (in place, strictly).

    Args:
        model: the freshly built model (any device; tensors are copied onto its device).
        path: a ``.pt``/``.pth`` file (``torch.save``) or a ``.safetensors`` file.

    A model with an ``adapt_init_state(state) -> state`` method (SAM) first adapts the file's state
    dict (resized position tables, its own LoRA/L-MoE init for keys the official layout lacks);
    the strict check applies to the result.

    Returns:
        The SHA-256 of the file, so a run can record exactly which weights it started from.

    Raises:
        InitCheckpointError: see :func:`read_init_checkpoint` and :func:`check_state_dict`.
    """
    state, digest = read_init_checkpoint(path)
    adapt = getattr(model, "adapt_init_state", None)  # e.g. SAM: resize position tables, add LoRA/L-MoE init
    if callable(adapt):
        state = adapt(state)
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    return digest
