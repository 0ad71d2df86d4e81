"""The run's model: built under the run's seed, optionally from ``model.init_checkpoint``, and the
check that it offers what the algorithm needs (used by every engine, before any data is read)."""

from __future__ import annotations

import torch
from torch import nn

from fedseg.algorithms import Algorithm
from fedseg.config import ConfigError, RunConfig
from fedseg.engine.seeding import seed_everything
from fedseg.models import build_model
from fedseg.models.init import InitCheckpointError, load_init_checkpoint
from fedseg.models.taps import AuxOutputError
from fedseg.runtime.common import DataSpec, RunError
from fedseg.types import Params

__all__ = ["check_model_outputs", "cpu_params", "init_model"]


def cpu_params(model: nn.Module) -> Params:
    """CPU copies of the model's whole state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def check_model_outputs(cfg: RunConfig, algorithm: Algorithm) -> None:
    """Refuse, before any data is read, an algorithm that needs auxiliary outputs (e.g. FedBCS's
    prototype levels) the configured model does not offer.

    The model is built on the ``meta`` device (no memory, no weights) with the configured channels
    and classes; a model that cannot be built that way is left to the real build after loading.

    Raises:
        ConfigError: the algorithm's outputs are not offered by ``model.name`` (names both keys and
            what the model offers).
    """
    data = cfg.data
    dims = data.spatial_dims or (data.synthetic.spatial_dims if data.source == "synthetic" else 2)
    classes = data.synthetic.num_classes if data.source == "synthetic" else data.num_classes
    try:
        with torch.device("meta"):
            model = build_model(cfg.model, dims, data.channels, classes)
    except Exception:  # noqa: BLE001 - the real build, with the data's shape, reports it
        return
    try:
        algorithm.aux_outputs(model)
    except AuxOutputError as exc:
        raise ConfigError(
            f"algorithm.name {algorithm.name!r} needs auxiliary outputs that model.name {cfg.model.name!r} does not "
            f"offer: {exc}"
        ) from exc


def init_model(cfg: RunConfig, spec: DataSpec, device: torch.device) -> tuple[nn.Module, Params, str | None]:
    """The model on ``device``, its initial parameters (identical in every process) and the SHA-256
    of ``model.init_checkpoint`` (None when unset).

    The model is built under ``seed_everything(cfg.seed)``; with ``model.init_checkpoint`` its
    weights are then replaced, strictly, by the file's (:func:`fedseg.models.init.load_init_checkpoint`).

    Raises:
        RunError: the init checkpoint is missing, unreadable, unsafe or does not fit the model; the
            message names the file and the first offending keys.
    """
    seed_everything(cfg.seed)
    model = build_model(cfg.model, spec.spatial_dims, spec.in_channels, spec.num_classes).to(device)
    digest = None
    if cfg.model.init_checkpoint:
        try:
            digest = load_init_checkpoint(model, cfg.model.init_checkpoint)
        except InitCheckpointError as exc:
            raise RunError(f"model.init_checkpoint: {exc}") from exc
    return model, cpu_params(model), digest
