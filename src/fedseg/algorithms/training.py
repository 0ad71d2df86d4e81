"""What an algorithm's client half works with: the training :class:`Batch`, the engine's
:class:`LocalTrainer` (implemented by ``fedseg.engine.trainer.Trainer``) and the round's
:class:`ClientContext`. Re-exported by :mod:`fedseg.algorithms.base`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from fedseg.data.base import MissingMaskError
from fedseg.types import Broadcast, ClientState

__all__ = ["Batch", "BatchLoss", "ClientContext", "EpochHook", "ExtraLoss", "LocalTrainer", "StateKey"]


class Batch:
    """One training batch on the training device.

    Attributes:
        image: ``(B, C, *spatial)`` float32.
        mask: ``(B, 1, *spatial)`` int64 class indices. A batch of a weakly-supervised site has
            none: reading ``mask`` then raises :class:`~fedseg.data.base.MissingMaskError`
            (check :attr:`has_mask`), so no code path can train on a mask that is not there.
        extras: other per-sample tensors, first dimension B (weak labels: ``box_mask``,
            ``image_label``, the ``supervision`` code; see :mod:`fedseg.data.supervision`).
        aux: the auxiliary outputs of this step's forward pass, ``{name: tensor}`` with their
            autograd graph, for the names the algorithm's :meth:`Algorithm.aux_outputs` declared
            (filled by ``LocalTrainer.fit`` after the forward pass; empty otherwise).
    """

    __slots__ = ("image", "_mask", "extras", "aux")

    def __init__(
        self, image: torch.Tensor, mask: torch.Tensor | None = None, extras: dict[str, torch.Tensor] | None = None
    ) -> None:
        self.image = image
        self._mask = mask
        self.extras: dict[str, torch.Tensor] = {} if extras is None else extras
        self.aux: dict[str, torch.Tensor] = {}

    @property
    def has_mask(self) -> bool:
        """Whether the batch carries pixel masks."""
        return self._mask is not None

    @property
    def mask(self) -> torch.Tensor:
        if self._mask is None:
            raise MissingMaskError(
                "this training batch comes from a weakly-supervised site (data.supervision) and carries no pixel "
                "mask; an algorithm that needs pixel masks cannot train on it (use fedmix, or leave the site out "
                "with federation.train_sites)"
            )
        return self._mask

    def __repr__(self) -> str:
        mask = None if self._mask is None else tuple(self._mask.shape)
        return f"Batch(image={tuple(self.image.shape)}, mask={mask}, extras={sorted(self.extras)})"


ExtraLoss = Callable[[nn.Module, Batch, torch.Tensor], "torch.Tensor | None"]
"""``(model, batch, logits) -> extra loss or None``, added to the task loss each step."""

BatchLoss = Callable[[nn.Module, Batch, torch.Tensor], torch.Tensor]
"""``(model, batch, logits) -> loss``: replaces the task loss (e.g. a loss on pseudo-labels)."""

EpochHook = Callable[[nn.Module, int, int], None]
"""``(model, epoch, epochs)``: called by ``fit`` before/after local epoch ``epoch`` (1-based) of ``epochs``."""


class LocalTrainer(Protocol):
    """What the engine offers an algorithm for local training (implemented in ``fedseg.engine``)."""

    num_examples: int
    epochs: int
    device: torch.device
    supervision: str
    """Label kind of the training split: ``"pixel"``, ``"box"`` or ``"image"`` (data.supervision)."""

    def fit(
        self,
        model: nn.Module,
        *,
        epochs: int | None = None,
        extra_loss: ExtraLoss | None = None,
        trainable: set[str] | None = None,
        optimizer_key: str = "optimizer",
        loss: BatchLoss | None = None,
        extras: Mapping[str, torch.Tensor] | None = None,
        subset: torch.Tensor | None = None,
        aux_outputs: Mapping[str, str] | None = None,
        on_epoch_start: EpochHook | None = None,
        on_epoch_end: EpochHook | None = None,
    ) -> dict[str, float]:
        """Train ``model`` for ``epochs`` (default: the configured local epochs), with one optimizer
        for the whole call (never restarted between epochs).

        Parameters whose ``requires_grad`` is off (the algorithm's frozen keys: the engine turns it
        off for the round) are never optimised.

        Args:
            trainable: parameter names to optimise (default: all); others are frozen for the call.
            optimizer_key: where the optimizer state lives in client state when it persists
                across rounds, so a second model (Ditto, FedMix) keeps a separate optimizer.
            loss: replaces the task loss (which needs pixel masks); ``extra_loss`` is still added.
            extras: per-sample tensors of the training split (first dimension ``num_examples``,
                e.g. pseudo-labels), added to every batch's ``extras`` for its samples.
            subset: indices of the training samples to use (default: all), e.g. selected
                pseudo-labels; epochs then run over the subset only.
            aux_outputs: ``{name: exact named_modules path}``: the outputs of those modules are
                captured in every training forward pass and handed to ``loss``/``extra_loss`` as
                ``batch.aux[name]`` (with gradients); the hooks exist only during the call.
            on_epoch_start, on_epoch_end: called before/after each local epoch.

        Returns:
            ``{"loss": mean total loss, "task_loss": mean task loss, "steps": n}``.
        """
        ...

    def batches(self, *, shuffle: bool = False) -> Iterator[Batch]:
        """One pass over the client's training data (for prototypes, banks, statistics), never
        augmented; unshuffled batches follow the split's order. Each batch's ``extras`` holds
        the samples' weak labels and ``index`` (their positions in the split)."""
        ...

    def task_loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The configured segmentation loss (Dice + CE)."""
        ...

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        """Metrics of ``model`` on the client's own ``split`` (val by default): Dice, IoU, HD95
        (mm), precision, recall and ``n`` -- for aggregation weights such as FedSegNet's AAM."""
        ...


class StateKey:
    """Keys the base class uses in client state."""

    LOCAL_PARAMS = "local_params"
    BEST_VAL = "best_val"  # engine: personal model at the best val round {"round", "dice", "params"}
    LAST_VAL = "last_val"  # engine: the personal model's latest val score {"round", "dice"}


@dataclass
class ClientContext:
    """Everything a client hook may read or write in one round.

    Attributes:
        client_id: the site name.
        round: the round number (1-based).
        broadcast: the server's message for this round.
        state: persistent per-client state (CPU tensors; saved by the engine after the round).
        scratch: per-round transient storage (device tensors allowed; discarded after the round).
        device: the training device.
    """

    client_id: str
    round: int
    broadcast: Broadcast
    state: ClientState
    device: torch.device
    scratch: dict[str, Any] = field(default_factory=dict)
