"""The in-process simulation engine: every client in one process, deterministic, resumable.

One round: sample clients (seeded by run seed and round), encode the broadcast, run each client's
hooks on a freshly initialised model (as a separate process would), encode/decode every update
through the wire format (so messages are checked and bytes counted exactly as on Flower),
aggregate, validate every ``eval.every`` rounds, and checkpoint atomically. A run killed at any
point resumes from the last completed round and ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from fedseg.algorithms import Algorithm, build_algorithm
from fedseg.config import RunConfig
from fedseg.data.base import DataError, FederatedData, SegmentationSet, SiteData
from fedseg.data.build import build_federated_data
from fedseg.engine import wire
from fedseg.engine.client import overrides_personalize, run_client_personalization, run_client_round
from fedseg.engine.evaluate import evaluate
from fedseg.engine.progress import ProgressSink
from fedseg.engine.rundir import RunDir
from fedseg.engine.seeding import configure_determinism, derive_seed, seed_everything
from fedseg.engine.state_store import ClientStateStore, atomic_torch_save
from fedseg.engine.trainer import Trainer, resolve_device
from fedseg.losses import build_loss
from fedseg.models import build_model
from fedseg.types import Broadcast, ClientUpdate, Params

__all__ = ["run_inprocess", "RunResult", "RunError", "sample_clients", "POOLED_CLIENT", "SERVER"]

POOLED_CLIENT = "pooled"
SERVER = "__server__"
METRIC_KEYS = ("dice", "iou", "hd95", "precision", "recall", "n")


class RunError(RuntimeError):
    """The run cannot start or resume as asked; the message says why and what to do."""


@dataclass
class RunResult:
    run_dir: Path
    global_params: Params
    summary: dict[str, Any]


def sample_clients(clients: list[str], fraction: float, min_clients: int, seed: int, rnd: int) -> list[str]:
    """The clients of round ``rnd``: ``max(min_clients, round(fraction*K))`` of K, seeded."""
    k = min(len(clients), max(min_clients, int(round(fraction * len(clients)))))
    if k == len(clients):
        return list(clients)
    rng = np.random.default_rng([seed, rnd])
    chosen = sorted(rng.choice(len(clients), size=k, replace=False).tolist())
    return [clients[i] for i in chosen]


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


def _train_sets(data: FederatedData, algorithm: Algorithm) -> dict[str, SegmentationSet]:
    if algorithm.pooled_data:
        return {POOLED_CLIENT: _concat([s.train for s in data.sites])}
    empty = [s.name for s in data.sites if len(s.train) == 0]
    if empty:
        raise DataError(f"site(s) with an empty training split: {', '.join(empty)}")
    return {s.name: s.train for s in data.sites}


def _config_text(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


class _Simulation:
    def __init__(
        self, cfg: RunConfig, run: RunDir, data: FederatedData, progress: ProgressSink
    ) -> None:
        self.cfg = cfg
        self.run = run
        self.data = data
        self.progress = progress
        self.device = resolve_device(cfg.train.device)
        self.algorithm = build_algorithm(cfg.algorithm)
        seed_everything(cfg.seed)
        self.model = build_model(cfg.model, data.spatial_dims, data.in_channels, data.num_classes).to(self.device)
        self.eval_model = copy.deepcopy(self.model)
        self.loss_fn = build_loss(cfg.loss, data.num_classes)
        self.init_params = _cpu_params(self.model)
        self.train_sets = _train_sets(data, self.algorithm)
        self.val_sets = (
            {POOLED_CLIENT: _concat([s.val for s in data.sites])}
            if self.algorithm.pooled_data
            else {s.name: s.val for s in data.sites}
        )
        self.clients = list(self.train_sets)
        self.store = ClientStateStore(run.client_states, int(cfg.federation.state_spill_mb * 2**20))
        self.global_params: Params = copy.deepcopy(self.init_params)
        self.server_state = self.algorithm.init_server_state(self.global_params)
        self.phase = "federated"

    # ------------------------------------------------------------------ checkpointing
    def save_checkpoint(self, rnd: int, phase: str = "federated") -> None:
        atomic_torch_save(
            {
                "round": rnd,
                "phase": phase,
                "global_params": self.global_params,
                "server_state": self.server_state,
                "client_states": self.store.snapshot(),
            },
            self.run.checkpoint,
        )
        self.run.write_json(
            self.run.checkpoint_meta, {"round": rnd, "rounds": self.cfg.federation.rounds, "phase": phase}
        )
        self.store.prune()

    def load_checkpoint(self) -> int:
        ckpt = torch.load(self.run.checkpoint, map_location="cpu", weights_only=False)
        self.global_params = ckpt["global_params"]
        self.server_state = ckpt["server_state"]
        self.store.restore(ckpt["client_states"])
        self.phase = str(ckpt.get("phase", "federated"))
        return int(ckpt["round"])

    # ------------------------------------------------------------------ one round
    def _prepare_client(self, rnd: int, client_id: str, payload: bytes) -> tuple[Broadcast, dict[str, Any], Trainer]:
        """Decode the broadcast, reset the model to the seeded init, seed the round, build the trainer."""
        broadcast = wire.decode(payload)
        if not isinstance(broadcast, Broadcast):
            raise TypeError("the server payload did not decode to a Broadcast")
        self.model.load_state_dict(self.init_params)
        state = self.store.load(client_id)
        seed = derive_seed(self.cfg.seed, rnd, self.clients.index(client_id))
        seed_everything(seed)
        trainer = Trainer(
            self.train_sets[client_id],
            self.loss_fn,
            self.cfg.train,
            epochs=self.cfg.federation.local_epochs,
            device=self.device,
            seed=seed,
            state=state,
            on_epoch=lambda e, n, loss: self.progress.epoch_end(client_id, e, n, loss),
            eval_sets={"val": self.val_sets[client_id]},
            num_classes=self.data.num_classes,
            eval_batch_size=self.cfg.eval.batch_size,
        )
        return broadcast, state, trainer

    def client_round(self, rnd: int, client_id: str, payload: bytes) -> tuple[ClientUpdate, float]:
        broadcast, state, trainer = self._prepare_client(rnd, client_id, payload)
        self.progress.client_start(client_id, self.cfg.federation.local_epochs)
        start = time.perf_counter()
        update = run_client_round(
            self.algorithm, self.model, client_id=client_id, rnd=rnd, broadcast=broadcast, state=state, trainer=trainer
        )
        seconds = time.perf_counter() - start
        self.store.save(client_id, state, rnd)
        self.progress.client_end(client_id, float(update.metrics.get("loss", float("nan"))))
        return update, seconds

    def run_round(self, rnd: int) -> None:
        t_round = time.perf_counter()
        sampled = sample_clients(
            self.clients, self.cfg.federation.fraction, self.cfg.federation.min_clients, self.cfg.seed, rnd
        )
        self.progress.round_start(rnd, sampled)
        t0 = time.perf_counter()
        payload = wire.encode(self.algorithm.broadcast(rnd, self.global_params, self.server_state))
        overhead = time.perf_counter() - t0
        updates: list[ClientUpdate] = []
        records: list[dict[str, Any]] = []
        for client_id in sampled:
            update, seconds = self.client_round(rnd, client_id, payload)
            t0 = time.perf_counter()
            up_bytes = wire.encode(update)
            received = wire.decode(up_bytes)
            overhead += time.perf_counter() - t0
            if not isinstance(received, ClientUpdate):
                raise TypeError(f"{client_id}: the update did not decode to a ClientUpdate")
            updates.append(received)
            records.append(
                {
                    "round": rnd,
                    "site": client_id,
                    "kind": "train",
                    "loss": float(update.metrics.get("loss", float("nan"))),
                    "n": update.num_examples,
                    "bytes_up": len(up_bytes),
                    "bytes_down": len(payload),
                    "seconds": seconds,
                }
            )
        t0 = time.perf_counter()
        self.global_params, self.server_state = self.algorithm.aggregate(
            rnd, updates, self.global_params, self.server_state
        )
        overhead += time.perf_counter() - t0
        records.append(
            {
                "round": rnd,
                "site": SERVER,
                "kind": "round",
                "clients": len(sampled),
                "bytes_up": sum(r["bytes_up"] for r in records),
                "bytes_down": len(payload) * len(sampled),
                "seconds": time.perf_counter() - t_round,
                "overhead_seconds": overhead,
            }
        )
        last = rnd == self.cfg.federation.rounds
        if rnd % self.cfg.eval.every == 0 or last:
            records.extend(self.evaluate_all(rnd, "val"))
        self.run.append_metrics(records)
        self.save_checkpoint(rnd)
        val = [r["dice"] for r in records if r.get("kind") == "eval" and "dice" in r]
        self.progress.round_end(rnd, {"val_dice": float(np.nanmean(val)) if val else float("nan")})

    # ------------------------------------------------------------------ evaluation
    def _eval(self, params: Params, split: SegmentationSet) -> dict[str, float]:
        self.eval_model.load_state_dict(params)
        return evaluate(
            self.eval_model,
            split,
            num_classes=self.data.num_classes,
            device=self.device,
            batch_size=self.cfg.eval.batch_size,
        )

    def evaluate_all(self, rnd: int, split_name: str) -> list[dict[str, Any]]:
        records = []
        alg = self.algorithm
        for site in self.data.sites:
            split: SegmentationSet = getattr(site, split_name)
            if len(split) == 0:
                continue
            base = {"round": rnd, "site": site.name, "kind": "eval", "split": split_name}
            global_metrics = None
            if alg.has_global_model:
                global_metrics = self._eval(self.global_params, split)
                records.append({**base, "model": "global", **global_metrics})
            if self.cfg.eval.personalized and not alg.pooled_data:
                personal = alg.personal_params(self.global_params, self.store.load(site.name))
                if personal is not None:
                    records.append({**base, "model": "personal", **self._eval(personal, split)})
                elif global_metrics is not None:
                    records.append({**base, "model": "personal", **global_metrics})
        return records

    def personalize_all(self) -> None:
        """The algorithm's post-federation local phase on every client, then a checkpoint."""
        rounds = self.cfg.federation.rounds
        if self.phase == "personalized" or not overrides_personalize(self.algorithm):
            return
        broadcast = self.algorithm.broadcast(rounds + 1, self.global_params, self.server_state)
        broadcast.config["phase"] = "personalize"
        payload = wire.encode(broadcast)
        records = []
        for client_id in self.clients:
            bc, state, trainer = self._prepare_client(rounds + 1, client_id, payload)
            self.progress.client_start(client_id, self.cfg.federation.local_epochs)
            metrics = run_client_personalization(
                self.algorithm, self.model, client_id=client_id, rnd=rounds + 1, broadcast=bc, state=state,
                trainer=trainer,
            )
            self.store.save(client_id, state, rounds + 1)
            records.append({"round": rounds, "site": client_id, "kind": "personalize", **metrics})
        self.run.append_metrics(records)
        self.phase = "personalized"
        self.save_checkpoint(rounds, phase=self.phase)

    def finish(self) -> dict[str, Any]:
        rounds = self.cfg.federation.rounds
        self.personalize_all()
        records = self.evaluate_all(rounds, "test")
        self.run.append_metrics([{**r, "kind": "eval"} for r in records])
        summary: dict[str, Any] = {"algorithm": self.algorithm.name, "rounds": rounds, "test": {}}
        for r in records:
            summary["test"].setdefault(r["model"], {})[r["site"]] = {k: r[k] for k in METRIC_KEYS if k in r}
        for model_kind, sites in summary["test"].items():
            dice = [m["dice"] for m in sites.values()]
            summary.setdefault("mean", {})[model_kind] = {"dice": float(np.nanmean(dice)) if dice else float("nan")}
        self.run.write_json(self.run.summary, summary)
        return summary


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
    sim = _Simulation(cfg, run, data, progress)
    run.write_json(
        run.info,
        {
            "name": cfg.name,
            "algorithm": sim.algorithm.name,
            "algorithm_params": cfg.algorithm,
            "has_global_model": sim.algorithm.has_global_model,
            "pooled_data": sim.algorithm.pooled_data,
            "sites": [s.name for s in data.sites],
            "clients": sim.clients,
            "spatial_dims": data.spatial_dims,
            "num_classes": data.num_classes,
            "in_channels": data.in_channels,
            "seed": cfg.seed,
            "device": str(sim.device),
        },
    )
    start_round = 1
    if resume:
        start_round = sim.load_checkpoint() + 1
        run.truncate_metrics_after(start_round - 1, keep_personalize=sim.phase == "personalized")
    progress.start(cfg.federation.rounds, start_round)
    try:
        for rnd in range(start_round, cfg.federation.rounds + 1):
            sim.run_round(rnd)
        summary = sim.finish()
    finally:
        progress.stop()
    if write_report:
        from fedseg.report import write_report as _write_report

        _write_report(run_dir)
    return RunResult(run_dir=run_dir, global_params=sim.global_params, summary=summary)
