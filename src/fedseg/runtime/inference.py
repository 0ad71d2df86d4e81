"""Using a trained run: load its model (global or a client's personalised one) and evaluate it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedseg.algorithms import build_algorithm
from fedseg.config import DataConfig, RunConfig, load_config
from fedseg.data.base import SiteData
from fedseg.data.build import build_federated_data
from fedseg.data.folder import load_site_folder
from fedseg.engine.evaluate import evaluate
from fedseg.engine.rundir import RunDir
from fedseg.engine.state_store import ClientStateStore
from fedseg.engine.trainer import resolve_device
from fedseg.models import build_model
from fedseg.types import Params

__all__ = ["EvalError", "load_trained_model", "evaluate_run"]


class EvalError(RuntimeError):
    """The run directory or the requested model cannot be used."""


def _read_run(run_dir: Path) -> tuple[RunDir, RunConfig, dict[str, Any]]:
    run = RunDir(run_dir)
    for path in (run.config, run.info, run.checkpoint):
        if not path.is_file():
            raise EvalError(f"{run_dir} is not a finished fedseg run: missing {path.name} ({path})")
    cfg = load_config(run.config)
    info = json.loads(run.info.read_text())
    return run, cfg, info


def load_trained_model(run_dir: Path, client: str | None = None) -> tuple[nn.Module, RunConfig, dict[str, Any]]:
    """The run's global model, or ``client``'s personalised model, on the configured device."""
    run, cfg, info = _read_run(run_dir)
    ckpt = torch.load(run.checkpoint, map_location="cpu", weights_only=False)
    params: Params = ckpt["global_params"]
    algorithm = build_algorithm(cfg.algorithm)
    if client is not None:
        if client not in info["clients"]:
            raise EvalError(f"--client {client!r}: not a client of this run; clients: {', '.join(info['clients'])}")
        store = ClientStateStore(run.client_states, 0)
        store.restore(ckpt["client_states"])
        personal = algorithm.personal_params(params, store.load(client))
        params = personal if personal is not None else params
    elif not algorithm.has_global_model:
        raise EvalError(
            f"{info['algorithm']} has no global model; pass --client with one of: {', '.join(info['clients'])}"
        )
    device = resolve_device(cfg.train.device)
    model = build_model(cfg.model, info["spatial_dims"], info["in_channels"], info["num_classes"]).to(device)
    model.load_state_dict(params)
    model.eval()
    return model, cfg, info


def _folder_config(cfg: RunConfig) -> DataConfig:
    """Data settings for reading new folders the way the model was trained."""
    # A whole folder goes to the test split, so the training grouping column is irrelevant.
    data = cfg.data.model_copy(update={"group_column": None})
    if data.source == "synthetic":
        size = cfg.data.synthetic.size
        data = DataConfig(channels=1, num_classes=cfg.data.synthetic.num_classes, image_size=[size, size])
    return data


def _sites_at(path: Path, cfg: RunConfig) -> list[SiteData]:
    if not path.exists():
        raise EvalError(f"--data {path}: no such file or folder")
    dcfg = _folder_config(cfg)
    if (path / "images").is_dir():
        return [load_site_folder(path, dcfg, cfg.seed, all_to_test=True)]
    subdirs = sorted(p for p in path.iterdir() if (p / "images").is_dir())
    if not subdirs:
        raise EvalError(f"--data {path}: neither a site folder (with images/ and masks/) nor a root of site folders")
    return [load_site_folder(p, dcfg, cfg.seed, all_to_test=True) for p in subdirs]


def evaluate_run(
    run_dir: Path, *, data: Path | None = None, client: str | None = None, split: str = "test"
) -> list[dict[str, Any]]:
    """Per-site metrics of a trained model on the run's own ``split`` or on the site folder(s) at ``data``."""
    model, cfg, info = load_trained_model(run_dir, client)
    if data is None:
        if split not in ("train", "val", "test"):
            raise EvalError(f"--split {split!r}; allowed: train, val, test")
        sites = build_federated_data(cfg.data, cfg.seed).sites
    else:
        sites, split = _sites_at(data, cfg), "test"
    device = next(model.parameters()).device
    rows = []
    for site in sites:
        metrics = evaluate(model, getattr(site, split), num_classes=info["num_classes"], device=device,
                           batch_size=cfg.eval.batch_size)
        rows.append({"site": site.name, **metrics})
    return rows
