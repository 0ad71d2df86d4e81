"""Set-up shared by every runtime (in-process and Flower): the run directory, the data check
before training and ``splits.json``, the seeded initial model, each client's splits and its
:class:`~fedseg.engine.client.ClientRuntime`, ``run_info.json``.

Both engines call these functions, so a client built inside a Flower ClientApp is the same object,
with the same initial weights and the same per-round seeds, as the one the in-process engine builds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from fedseg.algorithms import Algorithm
from fedseg.config import RunConfig
from fedseg.data.base import DataError, FederatedData, SegmentationSet, SiteData
from fedseg.data.build import build_federated_data
from fedseg.data.corrupt import apply_label_corruption
from fedseg.data.splits import write_splits
from fedseg.data.validate import validate_federation
from fedseg.engine.client import ClientRuntime
from fedseg.engine.rundir import RunDir
from fedseg.engine.seeding import seed_everything
from fedseg.losses import build_loss
from fedseg.models import build_model
from fedseg.records import InfoKey
from fedseg.types import Params

__all__ = [
    "POOLED_CLIENT",
    "RunError",
    "DataSpec",
    "cpu_params",
    "concat_sets",
    "client_splits",
    "prepare_data",
    "load_training_data",
    "SPLITS_FILE",
    "split_digest",
    "site_split_digests",
    "config_text",
    "prepare_run_dir",
    "init_model",
    "build_client_runtimes",
    "write_run_info",
]

POOLED_CLIENT = "pooled"


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


def cpu_params(model: nn.Module) -> Params:
    """CPU copies of the model's whole state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def concat_sets(sets: list[SegmentationSet]) -> SegmentationSet:
    """One split made of several sites' splits (the centralised reference pools them)."""
    shapes = {tuple(s.images.shape[1:]) for s in sets if len(s)}
    if len(shapes) > 1:
        raise DataError(
            f"centralized training pools all sites, which needs one image shape; got {sorted(shapes)}. "
            "Set data.image_size so every site is resized to the same shape."
        )
    return SegmentationSet(
        images=torch.cat([s.images for s in sets]),
        masks=torch.cat([s.pixel_masks() for s in sets]),  # weakly-supervised splits refuse pooling
        spacing=torch.cat([s.spacing for s in sets]),
        ids=[i for s in sets for i in s.ids],
    )


def client_splits(data: FederatedData, algorithm: Algorithm) -> dict[str, dict[str, SegmentationSet]]:
    """Each client's splits. The centralised reference adds a training-only "pooled" client
    (pooled train + val) and keeps the sites for evaluation. Clients are indexed in this order."""
    empty = [s.name for s in data.sites if len(s.train) == 0]
    if empty and not algorithm.pooled_data:
        raise DataError(f"site(s) with an empty training split: {', '.join(empty)}")
    splits: dict[str, dict[str, SegmentationSet]] = {}
    if algorithm.pooled_data:
        splits[POOLED_CLIENT] = {
            "train": concat_sets([s.train for s in data.sites]),
            "val": concat_sets([s.val for s in data.sites]),
        }
    for s in data.sites:
        splits[s.name] = {"train": s.train, "val": s.val, "test": s.test}
    return splits


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


def init_model(cfg: RunConfig, spec: DataSpec, device: torch.device) -> tuple[nn.Module, Params]:
    """The model on ``device`` and its seeded initial parameters (identical in every process)."""
    seed_everything(cfg.seed)
    model = build_model(cfg.model, spec.spatial_dims, spec.in_channels, spec.num_classes).to(device)
    return model, cpu_params(model)


def build_client_runtimes(
    cfg: RunConfig,
    algorithm: Algorithm,
    model: nn.Module,
    init_params: Params,
    splits: Mapping[str, Mapping[str, SegmentationSet]],
    spec: DataSpec,
    device: torch.device,
    *,
    indices: Mapping[str, int] | None = None,
) -> dict[str, ClientRuntime]:
    """One :class:`ClientRuntime` per client of ``splits``, all sharing ``model``.

    Args:
        indices: each client's index in the federation (it seeds the client's rounds); default:
            its position in ``splits``. A Flower ClientApp holding one site passes the index the
            server assigned, so its seeds match the in-process engine's.
    """
    loss_fn = build_loss(cfg.loss, spec.num_classes)
    return {
        name: ClientRuntime(
            client_id=name,
            client_index=position if indices is None else indices[name],
            algorithm=algorithm,
            model=model,
            init_params=init_params,
            loss_fn=loss_fn,
            cfg=cfg,
            splits=client_split,
            num_classes=spec.num_classes,
            device=device,
        )
        for position, (name, client_split) in enumerate(splits.items())
    }


def write_run_info(
    run: RunDir,
    cfg: RunConfig,
    algorithm: Algorithm,
    *,
    engine: str,
    sites: list[str],
    clients: list[str],
    spec: DataSpec,
    device: torch.device | str,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``run_info.json``: what the report and ``fedseg eval`` need to know about the run."""
    run.write_json(
        run.info,
        {
            "name": cfg.name,
            "engine": engine,
            "algorithm": algorithm.name,
            "algorithm_params": cfg.algorithm,
            "has_global_model": algorithm.has_global_model,
            "pooled_data": algorithm.pooled_data,
            "sites": sites,
            "clients": clients,
            "spatial_dims": spec.spatial_dims,
            "num_classes": spec.num_classes,
            "in_channels": spec.in_channels,
            "seed": cfg.seed,
            "device": str(device),
            InfoKey.OPTIMIZER_STATE: algorithm.resolved_optimizer_state(cfg.train.optimizer_state),
            InfoKey.JUDGED_BY: algorithm.judged_by,
            InfoKey.UNSEEN_POLICY: algorithm.unseen_policy,
            **(extra or {}),
        },
    )
