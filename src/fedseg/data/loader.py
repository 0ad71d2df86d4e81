"""Training batches read case by case through a :class:`torch.utils.data.DataLoader`.

The main process decides everything random: the order of the cases, the patch starts and (on the
device) the augmentation draws come from the trainer's per-round generators, exactly as on the
in-memory path. The loader's batch sampler only replays that plan, as lists of
``(case, patch start)`` items; workers (``train.num_workers``) read the cases (memory-mapped
``.npy`` files of the case cache), crop the patches and stack the batch. So a seed gives the same
batches with any number of workers, and a resumed round the same batches as an uninterrupted one.
The loader is given its own generator, so creating it never draws from torch's global one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fedseg.data.cases import CaseStore, ListCases
from fedseg.io.errors import DataError

__all__ = ["Item", "Sample", "LoadedBatch", "CaseDataset", "resolve_num_workers", "case_loader", "collate_cases"]

Item = tuple[int, tuple[int, ...] | None]
"""One batch position: the case index and the patch start (``None``: the whole case)."""

Sample = tuple[int, torch.Tensor | np.ndarray, torch.Tensor | np.ndarray | None]
"""One read item: the case index, its image ``(C, *spatial)`` and mask ``(1, *spatial)`` (or None), as
tensors or, for a patch of a memory-mapped case, unread array views of the stored dtypes."""

LoadedBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
"""``(case indices (B,) int64, images (B, C, *spatial), masks (B, 1, *spatial) or None)``."""

AUTO_GPU_WORKERS = 4
"""``train.num_workers: auto`` on CUDA: at most this many workers (one core is left to the trainer)."""


def resolve_num_workers(value: int | str, device: torch.device) -> int:
    """``train.num_workers``: an int as given; ``auto`` is 0 on CPU (workers would compete with the
    training threads for the same cores) and ``min(4, cpu_count - 1)`` on CUDA (reading and
    cropping overlap the GPU's compute)."""
    if value == "auto":
        if device.type != "cuda":
            return 0
        return max(0, min(AUTO_GPU_WORKERS, (os.cpu_count() or 1) - 1))
    if isinstance(value, str) or value < 0:
        raise ValueError(f"train.num_workers must be 'auto' or an int >= 0, got {value!r}")
    return int(value)


class CaseDataset(Dataset[Sample]):
    """Map-style dataset over ``(case, patch start)`` items of a case store.

    Args:
        cases: the split's cases.
        patch_size: patch size (items carry starts), or None (whole cases).
    """

    def __init__(self, cases: CaseStore, patch_size: Sequence[int] | None) -> None:
        self.cases = cases
        self.patch_size = None if patch_size is None else tuple(int(p) for p in patch_size)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, item: Item) -> Sample:
        case, start = item
        if start is None or self.patch_size is None:
            image, mask = self.cases.case(case)
            return case, image, mask
        window = self.cases.window(case, start, self.patch_size) if isinstance(self.cases, ListCases) else None
        if window is not None:  # memory-mapped views, read once when the batch is stacked
            return case, window[0], window[1]
        image, mask = self.cases.patch(case, start, self.patch_size)
        return case, image, mask


def _stack(parts: Sequence[torch.Tensor | np.ndarray], dtype: torch.dtype) -> torch.Tensor:
    """``parts`` stacked into one ``dtype`` tensor; arrays (memory-mapped windows of a stored
    dtype) are stacked as stored and converted once."""
    if all(isinstance(p, torch.Tensor) for p in parts):
        return torch.stack([p for p in parts if isinstance(p, torch.Tensor)]).to(dtype)
    arrays = [p.numpy() if isinstance(p, torch.Tensor) else p for p in parts]
    return torch.from_numpy(np.asarray(np.stack(arrays))).to(dtype)


def collate_cases(samples: list[Sample]) -> LoadedBatch | None:
    """Stack one batch (``None`` for an empty one, which DP-SGD's Poisson draws can give): images
    float32, masks int64, as tensors whatever the samples' dtypes."""
    if not samples:
        return None
    shapes = {tuple(image.shape) for _, image, _ in samples}
    if len(shapes) > 1:
        raise DataError(f"the cases of one batch differ in shape ({', '.join(map(str, sorted(shapes)))}); train on "
                        "patches (train.patch_size) or resize them to one shape (data.image_size)")
    idx = torch.tensor([case for case, _, _ in samples], dtype=torch.int64)
    images = _stack([image for _, image, _ in samples], torch.float32)
    masks = [mask for _, _, mask in samples]
    stacked = None if any(m is None for m in masks) else _stack([m for m in masks if m is not None], torch.int64)
    return idx, images, stacked


class _Plan:
    """A one-pass batch sampler replaying precomputed batches of items."""

    def __init__(self, plan: Iterable[list[Item]]) -> None:
        self._plan = plan

    def __iter__(self) -> Iterator[list[Item]]:
        return iter(self._plan)


def case_loader(
    cases: CaseStore,
    plan: Iterable[list[Item]],
    *,
    patch_size: Sequence[int] | None,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader[Sample]:
    """A loader yielding :data:`LoadedBatch` es (or None for an empty batch) in the order of ``plan``.

    Args:
        cases: the split's cases.
        plan: the batches, each a list of :data:`Item` s; drawn lazily, in order, in this process.
        patch_size: patch size of the items' starts, or None.
        num_workers: reader processes (0: read in this process).
        pin_memory: pin the batches (CUDA), so the copy to the device can overlap.
    """
    return DataLoader(
        CaseDataset(cases, patch_size),
        batch_sampler=_Plan(plan),
        num_workers=num_workers,
        collate_fn=collate_cases,
        pin_memory=pin_memory,
        generator=torch.Generator(),  # the loader's base seed; never torch's global generator
    )
