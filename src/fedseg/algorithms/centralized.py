"""Centralised (pooled) training: the upper reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedseg.algorithms.base import Algorithm
from fedseg.algorithms.registry import ALGORITHMS

__all__ = ["Centralized"]


@ALGORITHMS.register("centralized")
@dataclass
class Centralized(Algorithm):
    """Centralised: one model trained on the pooled training data of all sites, evaluated per site.

    This is not federated: it is the reference that privacy rules out. The in-process engine
    pools the training splits into one client; a federated engine refuses it. One "round" is
    ``local_epochs`` epochs over the pooled data.
    """

    name: ClassVar[str] = "centralized"
    description: ClassVar[str] = "Centralized: one model on pooled data of all sites (upper reference, not FL)"
    pooled_data: ClassVar[bool] = True
    optimizer_state: ClassVar[str] = "persist"  # ordinary training: Adam is not restarted every round
