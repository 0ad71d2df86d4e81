"""The attack simulator: sites that send hostile updates or train on flipped labels (benchmarks only).

Configured by the ``attack`` section (:class:`fedseg.config.AttackConfig`) and applied client side
at the named sites only, so both engines attack the same way:

* update attacks (``scale``, ``sign_flip``, ``gaussian``): :class:`UpdateAttack` rewrites the
  update after local training, before the up codec (the client runtime's ``fit``);
* ``label_flip``: :func:`attack_splits` flips the attacking sites' training masks when the
  federation is built (validation and test masks stay true, so every score measures the truth).

Per floating tensor ``w_k`` of the update (params and extras), with ``w`` the same tensor of the
broadcast the client received and ``s`` the resolved ``attack.scale``:

* scale: ``w + s (w_k - w)``; sign_flip: ``w - s (w_k - w)``; tensors without a broadcast
  counterpart of the same shape are sent unchanged;
* gaussian: ``w_k + N(0, noise_std^2)``, drawn from a generator seeded by (run seed, round,
  client index), so a resumed run attacks identically.

Integer tensors (``num_batches_tracked``), ``num_examples`` and metrics are never changed. A run
under attack says so in ``run_info.json`` (:func:`attack_info`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fedseg.config import AttackConfig, ConfigError
from fedseg.config.attack import UPDATE_ATTACKS, check_attack_sites
from fedseg.data.base import SegmentationSet
from fedseg.data.corrupt import flip_labels
from fedseg.engine.seeding import derive_seed
from fedseg.types import Broadcast, ClientUpdate, TensorDict

__all__ = ["UpdateAttack", "update_attack", "attack_splits", "attack_info", "require_known_sites"]

_NOISE_STREAM = 0xA77AC
"""Keeps the Gaussian attack's generator apart from the round's training seed."""


@dataclass(frozen=True)
class UpdateAttack:
    """What one attacking client does to its update (see the module docstring)."""

    kind: str
    factor: float = 1.0
    noise_std: float = 0.0
    seed: int = 0
    client_index: int = 0

    def __post_init__(self) -> None:
        if self.kind not in UPDATE_ATTACKS:
            raise ValueError(f"update attack {self.kind!r} is unknown; allowed: {', '.join(UPDATE_ATTACKS)}")

    def apply(self, update: ClientUpdate, broadcast: Broadcast, rnd: int) -> ClientUpdate:
        """The attacked copy of ``update`` (``broadcast``: what the client started from this round)."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, rnd, self.client_index, _NOISE_STREAM))
        params = self._tensors(update.params, broadcast.params, gen)
        extras = self._tensors(update.extras, broadcast.extras, gen)
        return dataclasses.replace(update, params=params, extras=extras)

    def _tensors(self, tensors: TensorDict, reference: Mapping[str, torch.Tensor], gen: torch.Generator
                 ) -> TensorDict:
        out: TensorDict = {}
        for key in sorted(tensors):  # a fixed order: the noise does not depend on dict order
            value = tensors[key]
            out[key] = value
            if not value.is_floating_point():
                continue
            if self.kind == "gaussian":
                noise = torch.randn(value.shape, generator=gen, dtype=torch.float64) * self.noise_std
                out[key] = (value.to(torch.float64) + noise).to(value.dtype)
                continue
            ref = reference.get(key)
            if ref is None or ref.shape != value.shape:
                continue
            sign = 1.0 if self.kind == "scale" else -1.0
            base = ref.to(torch.float64)
            out[key] = (base + sign * self.factor * (value.to(torch.float64) - base)).to(value.dtype)
        return {k: out[k] for k in tensors}


def update_attack(cfg: AttackConfig, client_id: str, *, seed: int, client_index: int) -> UpdateAttack | None:
    """The update attack client ``client_id`` applies, or None (not an attacking site, or a data attack)."""
    if cfg.kind not in UPDATE_ATTACKS or client_id not in cfg.sites:
        return None
    return UpdateAttack(cfg.kind, factor=cfg.factor, noise_std=cfg.noise_std, seed=seed, client_index=client_index)


def attack_splits(splits: Mapping[str, Mapping[str, SegmentationSet]], cfg: AttackConfig, num_classes: int
                  ) -> dict[str, dict[str, SegmentationSet]]:
    """``splits`` with the ``train`` masks of every attacking site flipped (``label_flip`` only).

    Unchanged splits are shared, not copied; weakly-supervised training splits (no masks) are
    refused.

    Raises:
        ConfigError: an attacking site trains without pixel masks.
    """
    out = {name: dict(parts) for name, parts in splits.items()}
    if cfg.kind != "label_flip":
        return out
    for name in cfg.sites:
        train = out.get(name, {}).get("train")
        if train is None:
            continue  # not held by this process (a ClientApp holds its own site only)
        if not train.has_masks:
            raise ConfigError(f"attack.kind label_flip: site {name} has no pixel masks to flip "
                              f"({train.supervision}-supervised); attack another site")
        out[name]["train"] = train.with_masks(flip_labels(train.pixel_masks(), num_classes, cfg.label_mode))
    return out


def require_known_sites(cfg: AttackConfig, sites: list[str]) -> None:
    """Refuse attack sites that are not sites of the federation.

    Raises:
        ConfigError: the unknown names, with the sites and a did-you-mean.
    """
    try:
        check_attack_sites(cfg, sites)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def attack_info(cfg: AttackConfig) -> dict[str, Any]:
    """What ``run_info.json`` records of the attack (empty when there is none)."""
    if cfg.kind == "none":
        return {}
    info: dict[str, Any] = {"kind": cfg.kind, "sites": list(cfg.sites)}
    if cfg.kind in ("scale", "sign_flip"):
        info["scale"] = cfg.factor
    elif cfg.kind == "gaussian":
        info["noise_std"] = cfg.noise_std
    elif cfg.kind == "label_flip":
        info["label_mode"] = cfg.label_mode
    return info
