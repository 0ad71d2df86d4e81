"""Per-client state across rounds: in CPU memory, spilled to disk when large."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedseg.io.safe import CheckpointError, load_checkpoint, save_checkpoint
from fedseg.types import ClientState

__all__ = ["ClientStateStore", "state_nbytes", "atomic_torch_save"]


def state_nbytes(obj: Any) -> int:
    """Bytes of all tensors inside a (nested) state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    return 0


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Save a checkpoint or state atomically as plain data (:func:`fedseg.io.safe.save_checkpoint`:
    temp file + fsync + rename; refuses values ``torch.load(weights_only=True)`` would not load)."""
    save_checkpoint(obj, path)


class ClientStateStore:
    """Holds each client's state. States are kept in memory until their total size passes
    ``spill_bytes``; beyond that a state is written to ``<directory>/<client>.r<round>.pt`` and
    only its path is kept. Files are versioned by round so a checkpoint always refers to a
    consistent set; :meth:`prune` removes versions no checkpoint refers to."""

    def __init__(self, directory: Path, spill_bytes: int) -> None:
        self.directory = directory
        self.spill_bytes = spill_bytes
        self._memory: dict[str, ClientState] = {}
        self._sizes: dict[str, int] = {}  # state_nbytes of each in-memory state (kept with _memory)
        self._disk: dict[str, Path] = {}

    def load(self, client_id: str) -> ClientState:
        if client_id in self._memory:
            return self._memory[client_id]
        if client_id in self._disk:
            state: ClientState = load_checkpoint(self._disk[client_id], what=f"the state of client {client_id!r}")
            return state
        return {}

    def save(self, client_id: str, state: ClientState, rnd: int) -> None:
        size = state_nbytes(state)
        # the other clients' in-memory bytes, from the sizes kept at their save: one sum over
        # integers, not a walk over every state (quadratic in the clients per round)
        in_memory = sum(n for c, n in self._sizes.items() if c != client_id)
        if in_memory + size <= self.spill_bytes:
            self._memory[client_id] = state
            self._sizes[client_id] = size
            self._disk.pop(client_id, None)
            return
        path = self.directory / f"{client_id}.r{rnd}.pt"
        atomic_torch_save(state, path)
        self._memory.pop(client_id, None)
        self._sizes.pop(client_id, None)
        self._disk[client_id] = path

    def snapshot(self) -> dict[str, Any]:
        """What a checkpoint stores: in-memory states inline, spilled ones by file name."""
        return {"memory": self._memory, "disk": {c: p.name for c, p in self._disk.items()}}

    def restore(self, snap: dict[str, Any]) -> None:
        """Take the states of a checkpoint's :meth:`snapshot`.

        Raises:
            CheckpointError: a spilled state's file name is not a plain name in :attr:`directory`.
        """
        for client, name in snap["disk"].items():
            if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
                raise CheckpointError(f"the checkpoint names client {client!r}'s state file {name!r}; expected a file "
                                      f"name inside {self.directory}")
        self._memory = dict(snap["memory"])
        self._sizes = {c: state_nbytes(s) for c, s in self._memory.items()}
        self._disk = {c: self.directory / name for c, name in snap["disk"].items()}

    def prune(self) -> None:
        """Delete spilled state files that the current snapshot no longer refers to."""
        if not self.directory.is_dir():
            return
        keep = {p.name for p in self._disk.values()}
        for path in self.directory.glob("*.pt"):
            if path.name not in keep:
                path.unlink(missing_ok=True)
