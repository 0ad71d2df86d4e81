"""The in-process simulation engine: every client in one process, deterministic, resumable.

The round logic lives in :class:`fedseg.engine.server.FederationServer` and the client side in
:class:`fedseg.engine.client.ClientRuntime`; this module is the in-process transport between them
(every message still goes through the wire format, so it is checked and its bytes counted as on
Flower) plus the set-up of a run. A run killed at any point resumes from the last completed round
and ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from fedseg.algorithms import Algorithm, build_algorithm
from fedseg.config import RunConfig
from fedseg.data.base import DataError, FederatedData, SegmentationSet
from fedseg.data.build import build_federated_data
from fedseg.engine.client import ClientRuntime
from fedseg.engine.progress import ProgressSink
from fedseg.engine.rundir import RunDir
from fedseg.engine.seeding import configure_determinism, seed_everything
from fedseg.engine.server import FederationServer, sample_clients
from fedseg.engine.state_store import ClientStateStore
from fedseg.engine.trainer import resolve_device
from fedseg.losses import build_loss
from fedseg.models import build_model
from fedseg.types import Params

__all__ = ["run_inprocess", "RunResult", "RunError", "InProcessExecutor", "sample_clients", "POOLED_CLIENT"]

POOLED_CLIENT = "pooled"


class RunError(RuntimeError):
    """The run cannot start or resume as asked; the message says why and what to do."""


@dataclass
class RunResult:
    run_dir: Path
    global_params: Params
    summary: dict[str, Any]


def _cpu_params(model: nn.Module) -> Params:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _concat(sets: list[SegmentationSet]) -> SegmentationSet:
    shapes = {tuple(s.images.shape[1:]) for s in sets if len(s)}
    if len(shapes) > 1:
        raise DataError(
            f"centralized training pools all sites, which needs one image shape; got {sorted(shapes)}. "
            "Set data.image_size so every site is resized to the same shape."
        )
    return SegmentationSet(
        images=torch.cat([s.images for s in sets]),
        masks=torch.cat([s.masks for s in sets]),
        spacing=torch.cat([s.spacing for s in sets]),
        ids=[i for s in sets for i in s.ids],
    )


def _client_splits(data: FederatedData, algorithm: Algorithm) -> dict[str, dict[str, SegmentationSet]]:
    """Each client's splits. The centralised reference adds a training-only "pooled" client
    (pooled train + val) and keeps the sites for evaluation. Clients are indexed in this order."""
    empty = [s.name for s in data.sites if len(s.train) == 0]
    if empty and not algorithm.pooled_data:
        raise DataError(f"site(s) with an empty training split: {', '.join(empty)}")
    splits: dict[str, dict[str, SegmentationSet]] = {}
    if algorithm.pooled_data:
        splits[POOLED_CLIENT] = {
            "train": _concat([s.train for s in data.sites]),
            "val": _concat([s.val for s in data.sites]),
        }
    for s in data.sites:
        splits[s.name] = {"train": s.train, "val": s.val, "test": s.test}
    return splits


def _config_text(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


class InProcessExecutor:
    """The in-process transport: every client is a :class:`ClientRuntime` in this process, sharing
    one model object (reset to the seeded init before each use); client states live in a
    :class:`ClientStateStore` and are checkpointed with the server."""

    def __init__(self, runtimes: dict[str, ClientRuntime], store: ClientStateStore, progress: ProgressSink) -> None:
        self.runtimes = runtimes
        self.store = store
        self.progress = progress

    def fit(self, rnd: int, clients: list[str], payload: bytes) -> dict[str, tuple[bytes, dict[str, Any]]]:
        out = {}
        for client_id in clients:
            state = self.store.load(client_id)
            out[client_id] = self.runtimes[client_id].fit(rnd, payload, state, self.progress)
            self.store.save(client_id, state, rnd)
        return out

    def evaluate(self, rnd: int, clients: list[str], payload: bytes, split: str) -> dict[str, list[dict[str, Any]]]:
        return {c: self.runtimes[c].evaluate(rnd, payload, self.store.load(c), split) for c in clients}

    def personalize(self, rnd: int, clients: list[str], payload: bytes) -> dict[str, dict[str, Any]]:
        out = {}
        for client_id in clients:
            state = self.store.load(client_id)
            out[client_id] = self.runtimes[client_id].personalize(rnd, payload, state, self.progress)
            self.store.save(client_id, state, rnd)
        return out

    def state_snapshot(self) -> Any:
        return self.store.snapshot()

    def restore(self, snapshot: Any) -> None:
        self.store.restore(snapshot)

    def committed(self) -> None:
        self.store.prune()


def run_inprocess(
    cfg: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    command: str | None = None,
    progress: ProgressSink | None = None,
    data: FederatedData | None = None,
    write_report: bool = True,
) -> RunResult:
    """Run (or resume) a federation in this process and return the final global parameters.

    Args:
        cfg: the validated run configuration.
        run_dir: output directory (created). A fresh run refuses a directory that already holds
            a checkpoint; ``resume=True`` requires one and the same configuration.
        command: the command line to record in ``command.txt``.
        data: pre-built data (tests); default: built from ``cfg.data``.
    """
    run = RunDir(run_dir)
    progress = progress or ProgressSink()
    config_text = _config_text(cfg)
    if resume:
        if not run.checkpoint.is_file():
            raise RunError(f"--resume: no checkpoint at {run.checkpoint}; start the run without --resume")
        if run.config.is_file() and run.config.read_text() != config_text:
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
    run.config.write_text(config_text)
    if command:
        run.command.write_text(command + "\n")
    configure_determinism(cfg.train.deterministic)
    data = data if data is not None else build_federated_data(cfg.data, cfg.seed)
    device = resolve_device(cfg.train.device)
    algorithm = build_algorithm(cfg.algorithm)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, data.spatial_dims, data.in_channels, data.num_classes).to(device)
    init_params = _cpu_params(model)
    loss_fn = build_loss(cfg.loss, data.num_classes)
    splits = _client_splits(data, algorithm)
    fit_clients = [POOLED_CLIENT] if algorithm.pooled_data else [s.name for s in data.sites]
    eval_clients = [s.name for s in data.sites]
    runtimes = {
        name: ClientRuntime(
            client_id=name,
            client_index=index,
            algorithm=algorithm,
            model=model,
            init_params=init_params,
            loss_fn=loss_fn,
            cfg=cfg,
            splits=client_splits,
            num_classes=data.num_classes,
            device=device,
        )
        for index, (name, client_splits) in enumerate(splits.items())
    }
    store = ClientStateStore(run.client_states, int(cfg.federation.state_spill_mb * 2**20))
    executor = InProcessExecutor(runtimes, store, progress)
    server = FederationServer(cfg, algorithm, init_params, run, fit_clients=fit_clients, eval_clients=eval_clients,
                              progress=progress)
    run.write_json(
        run.info,
        {
            "name": cfg.name,
            "engine": "inprocess",
            "algorithm": algorithm.name,
            "algorithm_params": cfg.algorithm,
            "has_global_model": algorithm.has_global_model,
            "pooled_data": algorithm.pooled_data,
            "sites": eval_clients,
            "clients": fit_clients,
            "spatial_dims": data.spatial_dims,
            "num_classes": data.num_classes,
            "in_channels": data.in_channels,
            "seed": cfg.seed,
            "device": str(device),
        },
    )
    summary = server.run_all(executor, resume=resume)
    if write_report:
        from fedseg.report import write_report as _write_report

        _write_report(run_dir)
    return RunResult(run_dir=run_dir, global_params=server.global_params, summary=summary)
