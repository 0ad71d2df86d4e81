"""Checkpoints that cannot run code: saved as plain data, loaded with ``weights_only=True``.

Every ``.pt`` file fedseg reads (``checkpoints/last.pt`` and ``best.pt``, spilled client states,
the Flower ClientApps' state files, ``model.init_checkpoint``, ``fedseg eval/predict``) goes
through :func:`load_checkpoint`: ``torch.load(weights_only=True)``, whose unpickler builds only
tensors, ``torch.Size``/dtype/device and plain containers and scalars, and refuses any other
global (a pickle whose ``__reduce__`` calls ``os.system`` fails before anything runs). No type is
added with ``torch.serialization.add_safe_globals``: fedseg stores nothing else.

:func:`save_checkpoint` keeps that promise on the writing side: it converts the few non-plain
values that mean the same thing as a plain one (an enum member to its value, a 64-bit numpy
scalar to the Python number) and refuses anything else *when the file is written*, naming the
entry, so a checkpoint never turns out unreadable at ``--resume``. The file is written atomically
(:func:`fedseg.io.atomic.atomic_open`).
"""

from __future__ import annotations

import enum
import io
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedseg.io.atomic import atomic_open

__all__ = ["CheckpointError", "UnsafeCheckpointError", "load_checkpoint", "save_checkpoint", "plain_state"]

_SCALARS = (str, int, float, bool, complex, bytes, type(None))
_TORCH_VALUES = (torch.Tensor, torch.Size, torch.dtype, torch.device)
# numpy scalars whose Python counterpart has the same value and precision
_NUMPY_EXACT = (np.float64, np.int64, np.bool_)


class CheckpointError(ValueError):
    """A checkpoint file is missing or unreadable, or a state cannot be saved as plain data."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds objects other than tensors and plain data: unpickling it could run code."""


def _prefix(what: str | None, path: Path) -> str:
    return f"{what}: {path}" if what else str(path)


def load_checkpoint(path: Path | str | bytes, *, what: str | None = None, source: str | None = None) -> Any:
    """Read a ``torch.save`` file with ``torch.load(weights_only=True)`` onto the CPU.

    Args:
        path: the file, or its bytes (then ``source`` names where they came from).
        what: what the file is for the user (e.g. ``"--resume"``, ``"model.init_checkpoint"``),
            put in front of error messages.

    Raises:
        UnsafeCheckpointError: the file holds other objects (a pickled module, a class, a
            function call): refused without running anything. The message names the file and
            the refused global.
        CheckpointError: no such file, or not a readable torch file (truncated, foreign).
    """
    name = Path(source) if isinstance(path, bytes) and source else Path("<bytes>") if isinstance(path, bytes) \
        else Path(path)
    where = _prefix(what, name)
    if not isinstance(path, bytes) and not name.is_file():
        raise CheckpointError(f"{where}: no such file")
    handle: Any = io.BytesIO(path) if isinstance(path, bytes) else name
    try:
        return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch reports a forbidden global and plain garbage alike; the message tells them apart
        detail = str(exc.__context__ or exc).split(". Please")[0].strip()
        if "global" not in str(exc).lower():
            raise CheckpointError(f"{where}: not a readable torch checkpoint ({detail})") from exc
        raise UnsafeCheckpointError(
            f"{where}: refused by torch.load(weights_only=True): it holds objects other than tensors and "
            f"plain containers, which could run code when unpickled ({detail}). fedseg writes only tensors, "
            "dicts, lists and scalars: a file that needs more was not written by fedseg, or was changed since"
        ) from exc
    except Exception as exc:  # truncated or not a torch file: zipfile, EOF, runtime errors
        raise CheckpointError(f"{where}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc


def plain_state(obj: Any, where: str = "state") -> Any:
    """``obj`` with enum members replaced by their values and 64-bit numpy scalars by Python
    numbers; everything else must already be a tensor, ``torch.Size``/dtype/device, a scalar,
    ``None``, or a dict/list/tuple/set of those (what ``weights_only=True`` loads).

    Raises:
        CheckpointError: a value of another type, named by its path inside ``obj``.
    """
    if isinstance(obj, _TORCH_VALUES):
        return obj
    if isinstance(obj, enum.Enum):
        return plain_state(obj.value, where)
    if isinstance(obj, _NUMPY_EXACT):  # before the scalars: numpy.float64 subclasses float
        return obj.item()
    if type(obj) in _SCALARS:
        return obj
    if type(obj) in (dict, OrderedDict):
        return type(obj)((plain_state(k, f"{where} key {k!r}"), plain_state(v, f"{where}[{k!r}]"))
                         for k, v in obj.items())
    if type(obj) in (list, tuple, set):
        return type(obj)(plain_state(v, f"{where}[{i}]") for i, v in enumerate(obj))
    hint = " (convert numpy arrays with torch.from_numpy)" if isinstance(obj, (np.ndarray, np.generic)) else ""
    raise CheckpointError(
        f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be checkpointed: checkpoints hold only "
        f"tensors, scalars, None and dicts/lists/tuples of them, so that they load with torch.load(weights_only=True)"
        f"{hint}"
    )


def save_checkpoint(obj: Any, path: Path | str) -> None:
    """``torch.save`` the :func:`plain_state` of ``obj`` to ``path`` atomically.

    Raises:
        CheckpointError: ``obj`` holds a value that would not load with ``weights_only=True``
            (nothing is written).
    """
    data = plain_state(obj, where=Path(path).name)
    with atomic_open(path) as fh:
        torch.save(data, fh)
