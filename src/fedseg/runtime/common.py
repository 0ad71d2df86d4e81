"""Set-up steps every runtime (in-process and Flower) takes before it builds its federation: the
run directory (fresh or resumed), the data check before training and ``splits.json``, and what a
deployed site reports of its splits. The federation itself (algorithm, model, initial parameters,
client runtimes, server, ``run_info.json``) is built by :func:`fedseg.runtime.build.build_federation`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from fedseg.config import RunConfig
from fedseg.data.base import FederatedData, SiteData
from fedseg.data.build import build_federated_data
from fedseg.data.corrupt import apply_label_corruption
from fedseg.data.splits import write_splits
from fedseg.data.validate import validate_federation
from fedseg.engine.rundir import RunDir

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
    data = prepare_data(cfg, data if data is not None else build_federated_data(cfg.data, cfg.seed))
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


def prepare_run_dir(cfg: RunConfig, run_dir: Path, *, resume: bool, command: str | None) -> RunDir:
    """Check that ``run_dir`` may start (or resume) this run, create it, write config and command.

    A fresh run refuses a directory that already holds a checkpoint; ``resume=True`` requires one
    and the same configuration.

    Raises:
        RunError: the directory does not fit the request; the message says what to do.
    """
    run = RunDir(run_dir)
    text = config_text(cfg)
    if resume:
        if not run.checkpoint.is_file():
            raise RunError(f"--resume: no checkpoint at {run.checkpoint}; start the run without --resume")
        if run.config.is_file() and run.config.read_text() != text:
            raise RunError(
                f"--resume: the configuration differs from {run.config}; resume with the same config "
                "and --set values, or start a new run with another --out"
            )
    elif run.checkpoint.is_file():
        raise RunError(f"{run_dir} already holds a run (checkpoint {run.checkpoint}); use --resume or another --out")
    run.create()
    if not resume:
        # a fresh run: drop metrics of an earlier, checkpoint-less attempt
        run.metrics.unlink(missing_ok=True)
    run.config.write_text(text)
    if command:
        run.command.write_text(command + "\n")
    return run
