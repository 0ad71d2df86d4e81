"""Federated algorithms: one file each, registered by name.

Adding one = one file with an ``@ALGORITHMS.register`` class, one import below, one test.
"""

from __future__ import annotations

from fedseg.algorithms import (  # noqa: F401  (registration)
    centralized,
    ditto,
    fedavg,
    fedbcs,
    fedbn,
    fedmix,
    fedoap,
    fedper,
    fedprox,
    fedrep,
    fedsam,
    fedsegnet,
    lgfedavg,
    local,
    pfedsam,
)
from fedseg.algorithms.base import Algorithm, Batch, ClientContext, LocalTrainer
from fedseg.algorithms.registry import ALGORITHMS, AlgorithmConfigError, build_algorithm

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "AlgorithmConfigError",
    "Batch",
    "ClientContext",
    "LocalTrainer",
    "build_algorithm",
]
