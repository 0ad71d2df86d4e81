"""Deterministic seeds derived from (run seed, round, client), so a resumed run replays exactly."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["derive_seed", "seed_everything", "configure_determinism"]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and platforms)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch global RNGs and return a fresh torch generator.

    Without an accelerator only the CPU generator is seeded: ``torch.manual_seed`` would also queue
    a lazy seeding of every absent backend (CUDA, XPU, MTIA), each recording a formatted stack trace,
    about 1-2 ms per call in a deep call stack (once per client and round), for an initialisation
    that cannot happen in this process. The CPU generator's state is the same either way.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    if torch.accelerator.is_available():
        torch.manual_seed(seed)  # the accelerator's generators too
    else:
        torch.default_generator.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def configure_determinism(enabled: bool) -> None:
    """Ask torch for deterministic kernels (warn-only where none exists, e.g. some CUDA ops)."""
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    if torch.backends.cudnn.is_available():  # type: ignore[no-untyped-call]
        torch.backends.cudnn.benchmark = not enabled
        torch.backends.cudnn.deterministic = enabled
