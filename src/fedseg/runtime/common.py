"""Set-up steps every runtime (in-process and Flower) takes before it builds its federation: the
run directory (fresh or resumed), the data check before training and ``splits.json``, and what a
deployed site reports of its splits. The federation itself (algorithm, model, initial parameters,
client runtimes, server, ``run_info.json``) is built by :func:`fedseg.runtime.build.build_federation`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from fedseg.config import RunConfig
from fedseg.data.base import FederatedData, SiteData
from fedseg.data.build import build_federated_data
from fedseg.data.cache import with_run_cache
from fedseg.data.corrupt import apply_label_corruption
from fedseg.data.splits import write_splits
from fedseg.data.validate import validate_federation
from fedseg.engine.rundir import MetricsError, RunDir, RunDirBusy, atomic_write_text, read_metrics
from fedseg.engine.state_store import ClientStateStore
from fedseg.io.atomic import is_temp
from fedseg.io.safe import CheckpointError, load_checkpoint

__all__ = [
    "RunError",
    "DataSpec",
    "prepare_data",
    "load_training_data",
    "SPLITS_FILE",
    "split_digest",
    "site_split_digests",
    "config_text",
    "prepare_run_dir",
]


class RunError(RuntimeError):
    """The run cannot start or resume as asked; the message says why and what to do."""


@dataclass(frozen=True)
class DataSpec:
    """What the model needs to know about the data (all a data-free server learns from clients)."""

    spatial_dims: int
    in_channels: int
    num_classes: int

    @classmethod
    def of(cls, data: FederatedData) -> DataSpec:
        return cls(spatial_dims=data.spatial_dims, in_channels=data.in_channels, num_classes=data.num_classes)


def prepare_data(cfg: RunConfig, data: FederatedData, *, partial: bool = False) -> FederatedData:
    """What every engine does to freshly built data: the opt-in label corruption of one site
    (``data.corrupt_labels``; never the test split), then validation (every problem at once).

    Args:
        partial: ``data`` holds only some sites (a Flower ClientApp's own): corruption applies
            only when its site is among them.
    """
    corrupt = cfg.data.corrupt_labels
    if corrupt is not None and (not partial or corrupt.site in {s.name for s in data.sites}):
        data = apply_label_corruption(data, corrupt, cfg.seed)
    validate_federation(data)
    return data


SPLITS_FILE = "splits.json"
"""The run-directory file listing every site's train/val/test case ids (``fedseg.data.splits``)."""


def load_training_data(cfg: RunConfig, run: RunDir, data: FederatedData | None = None) -> FederatedData:
    """The pre-training data step of every engine that holds the data (in-process, ``flower-sim``):
    build the federation from ``cfg.data`` (unless ``data`` is given), corrupt labels if asked,
    validate (every problem at once) and write ``splits.json`` into the run directory.

    Raises:
        DataError: the data cannot be trained on; the message lists each file or site with its
            problem (``fedseg run`` exits 2 with it, before any training).
    """
    if data is None:
        data = build_federated_data(with_run_cache(cfg.data, run.root), cfg.seed,
                                    mixed_shapes=cfg.train.patch_size is not None)
    data = prepare_data(cfg, data)
    write_splits(run.root / SPLITS_FILE, data, cfg.seed)
    return data


def split_digest(ids: Sequence[str]) -> str:
    """SHA-256 of a split's case ids, sorted, one per line (each ending in a newline): what a
    deployed site reports instead of the ids. ``printf '%s\\n' IDS | LC_ALL=C sort | sha256sum``
    gives the same digest."""
    text = "".join(f"{i}\n" for i in sorted(ids, key=lambda x: x.encode("utf-8")))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def site_split_digests(site: SiteData) -> dict[str, str]:
    """:func:`split_digest` of the site's train, val and test splits."""
    return {name: split_digest(part.ids) for name, part in (("train", site.train), ("val", site.val),
                                                             ("test", site.test))}


def config_text(cfg: RunConfig) -> str:
    """The resolved configuration as written to ``config.yaml`` (every default filled in)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


_BEFORE_TRAINING = frozenset({"config.yaml", "command.txt", SPLITS_FILE, "run_info.json", "metrics.jsonl"})
"""Files a run writes before its first round trains (``metrics.jsonl`` only when empty)."""

_ELSEWHERE = ("start a new run in another directory (--out DIR; a Flower deployment: flwr run ... "
              "--run-config 'run-dir=\"DIR\"'), or delete {dir} first")


def _held(run_dir: Path) -> list[Path]:
    """What ``run_dir`` holds, without the orphan temporary files of killed writes."""
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if not is_temp(p, legacy=True))


def _not_started(run: RunDir, text: str, held: list[Path]) -> bool:
    """Whether ``held`` is only what a run of this very configuration writes before it trains
    (e.g. the directory ``fedseg run --engine flower-sim`` prepared before its ServerApp starts,
    or a run that failed during data loading): starting again loses nothing."""
    for path in held:
        if path.is_dir():
            if any(path.iterdir()):
                return False
        elif path.name not in _BEFORE_TRAINING or (path == run.metrics and path.stat().st_size):
            return False
    return run.config.is_file() and run.config.read_text(encoding="utf-8") == text


def _describe(run: RunDir, held: list[Path]) -> str:
    if run.checkpoint_meta.is_file():
        try:
            meta = json.loads(run.checkpoint_meta.read_text(encoding="utf-8"))
            return f"a checkpoint of round {meta['round']} of {meta['rounds']}"
        except (ValueError, KeyError, TypeError):
            pass
    if run.checkpoint.is_file():
        return f"a checkpoint, {run.checkpoint}"
    if run.metrics.is_file():
        return "metrics.jsonl but no checkpoint yet"
    names = [p.name + ("/" if p.is_dir() else "") for p in held]
    return "files " + ", ".join(names[:6]) + (f" (+{len(names) - 6} more)" if len(names) > 6 else "")


def _check_checkpoints(run: RunDir) -> None:
    """Before anything else resumes: every file the resume will read (``last.pt``, ``best.pt``,
    the client state files the checkpoint names) loads with ``torch.load(weights_only=True)``,
    and ``metrics.jsonl`` holds whole records.

    Raises:
        RunError: a file is unreadable, or would run code when unpickled (the message names it).
    """
    try:
        last = load_checkpoint(run.checkpoint, what="--resume")
        if not isinstance(last, dict) or "round" not in last or "global_params" not in last:
            raise RunError(f"--resume: {run.checkpoint} is not a fedseg checkpoint (no round and global_params)")
        if run.best_checkpoint.is_file():
            load_checkpoint(run.best_checkpoint, what="--resume")
        snapshot = last.get("client_states")
        if isinstance(snapshot, dict) and isinstance(snapshot.get("disk"), dict):
            store = ClientStateStore(run.client_states, 0)
            store.restore(snapshot)
            for client in snapshot["disk"]:
                store.load(str(client))
        read_metrics(run.metrics)  # whole lines but a torn last one, which the resume drops
    except (CheckpointError, MetricsError) as exc:
        raise RunError(str(exc)) from exc


def prepare_run_dir(cfg: RunConfig, run_dir: Path, *, resume: bool, command: str | None) -> RunDir:
    """Check that ``run_dir`` may start (or resume) this run, create it, write config and command.

    A fresh run needs a new or empty directory: one that holds anything else is refused (never
    overwritten), except what this same configuration wrote before its first round (see
    :func:`_not_started`). ``resume=True`` needs a checkpoint and the same configuration. Both
    first delete the temporary files killed writes left there (:meth:`RunDir.remove_orphans`).

    Raises:
        RunError: the directory does not fit the request; the message names it and says what to do.
    """
    run = RunDir(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} is a file, not a run directory; choose another --out")
    try:  # one process at a time: the caller unlocks when its run ends (or its process dies)
        if run_dir.is_dir():
            run.lock()
        _prepare(cfg, run, resume=resume, command=command)
    except RunDirBusy as exc:
        raise RunError(str(exc)) from None
    except BaseException:
        run.unlock()
        raise
    return run


def _prepare(cfg: RunConfig, run: RunDir, *, resume: bool, command: str | None) -> None:
    """:func:`prepare_run_dir` once the directory (if it exists) is locked."""
    run_dir = run.root
    text = config_text(cfg)
    run.remove_orphans()
    if resume:
        if not run.checkpoint.is_file():
            if run.metrics.is_file():
                raise RunError(f"--resume: no checkpoint at {run.checkpoint}: the run stopped before its first round "
                               f"completed, so there is nothing to continue; delete {run_dir} and start the run "
                               "again without --resume, or use another --out")
            raise RunError(f"--resume: no checkpoint at {run.checkpoint}; start the run without --resume")
        if run.config.is_file() and run.config.read_text(encoding="utf-8") != text:
            raise RunError(
                f"--resume: the configuration differs from {run.config}; resume with the same config "
                "and --set values, or start a new run with another --out"
            )
        _check_checkpoints(run)
    else:
        held = _held(run_dir)
        if held and not run.config.is_file():
            raise RunError(f"{run_dir} is not empty ({_describe(run, held)}) and holds no fedseg run; a run starts "
                           "only in a new or empty directory: choose another --out")
        if held and not _not_started(run, text, held):
            raise RunError(f"{run_dir} already holds a run ({_describe(run, held)}); continue it with --resume, or "
                           + _ELSEWHERE.format(dir=run_dir))
    run.create()
    run.lock()
    if not resume:
        run.metrics.unlink(missing_ok=True)  # an empty one of a run that never trained
    atomic_write_text(run.config, text)
    if command:
        atomic_write_text(run.command, command + "\n")
