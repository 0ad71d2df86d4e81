"""Shared fixtures: deterministic seeding and tiny configurations."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from fedseg.engine.seeding import seed_everything

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed() -> None:
    seed_everything(0)


@pytest.fixture(autouse=True, scope="session")
def _preprocessed_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Keep the preprocessed-case cache of every test out of the checkout's .fedseg_cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FEDSEG_CACHE_DIR", str(tmp_path_factory.mktemp("fedseg_cache")))
    yield
    mp.undo()


PROTOTYPE_ALGORITHMS = ("fedbcs", "fpl", "fedproto")
"""Algorithms that read feature taps only the FedBCS U-Net offers (2D): tiny_config gives them a tiny one."""

SAM_ALGORITHMS = ("fedsam", "pfedsam")
"""Algorithms that fine-tune Segment-Anything: tiny_config gives them a tiny SAM."""

TINY_SAM: dict[str, Any] = {"name": "sam", "image_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 2,
                            "num_heads": 2, "prompt_embed_dim": 16, "decoder_mlp_dim": 32, "iou_head_hidden_dim": 16,
                            "lora_rank": 2, "moe_experts": 2, "moe_top_k": 1}
"""A SAM that trains in well under a second per round on 16x16 images."""


def tiny_config(algorithm: dict[str, Any] | str = "fedavg", *, dims: int = 2, rounds: int = 2, sites: int = 2,
                **extra: Any) -> dict[str, Any]:
    """A run config that trains in well under a second per round."""
    algo = {"name": algorithm} if isinstance(algorithm, str) else algorithm
    if algo.get("name") == "fedoap":  # 1 fine-tuning epoch (default 10) keeps the sweeps quick
        algo = {"finetune_epochs": 1, **algo}
    cfg: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "data": {
            "source": "synthetic",
            "synthetic": {
                "num_sites": sites,
                "spatial_dims": dims,
                "size": 16 if dims == 2 else 8,
                "samples_per_site": [8, 6, 5, 4][:sites],
            },
        },
        "model": ({"name": "fedbcs_unet", "features": [4, 8, 16], "fusion_channels": 8}
                  if algo.get("name") in PROTOTYPE_ALGORITHMS else
                  {"name": "fedoap_unet", "features": [4, 8, 16], "dca_heads": 8} if algo.get("name") == "fedoap" else
                  {"channels": [4, 8], "strides": [2], "num_res_units": 0}),
        "train": {"batch_size": 4, "lr": 1e-2},
        "federation": {"rounds": rounds, "local_epochs": 1},
        "eval": {"every": 1},
        "algorithm": algo,
    }
    if algo.get("name") in SAM_ALGORITHMS:
        cfg["model"] = dict(TINY_SAM)
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


@pytest.fixture
def sent_updates(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every ClientUpdate the engine encodes for the wire, in order."""
    from fedseg.engine import wire
    from fedseg.types import ClientUpdate

    sent: list[Any] = []
    original = wire.encode

    def spy(message: Any) -> bytes:
        if isinstance(message, ClientUpdate):
            sent.append(message)
        return original(message)

    monkeypatch.setattr(wire, "encode", spy)
    return sent


@contextmanager
def task_identity() -> Iterator[None]:
    """Flower stamps run/node/task ids from the process's task identity into every new Message."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.fixture
def flower_process() -> Iterator[None]:
    """A ServerApp and ClientApps driven in this process: a task identity and empty app caches."""
    from fedseg.runtime.flower.client_app import clear_cache

    clear_cache()
    with task_identity():
        yield
    clear_cache()


def tensor_digest(tensors: dict[str, Any]) -> str:
    """SHA-256 over the names and bytes of ``tensors`` (sorted by name): "unchanged" checks."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        value: torch.Tensor = tensors[key]
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
