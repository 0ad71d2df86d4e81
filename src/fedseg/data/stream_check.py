"""The pre-training checks of :mod:`fedseg.data.validate` for a split streamed from disk, case by case.

The same rules as for stacked tensors (channels, spatial rank, mask shape and dtype, NaN/inf,
labels in range), read one case at a time, so memory stays that of one case whatever the size of
the split, and cases may differ in shape.
"""

from __future__ import annotations

import torch

from fedseg.data.base import FederatedData, Problem, SegmentationSet

__all__ = ["streamed_set_problems"]

MAX_IDS = 10


def streamed_set_problems(site: str, split: str, s: SegmentationSet, data: FederatedData) -> list[Problem]:
    """Every problem of the streamed split ``s`` of ``site`` (see :func:`fedseg.data.validate.federation_problems`)."""
    where = f"site {site}, {split} split"
    n = len(s)
    problems: list[Problem] = []
    if not s.has_masks and (s.supervision == "pixel" or split != "train"):
        problems.append(Problem(where, f"no masks, but the split is {s.supervision}-supervised; only the train "
                                       "split of a box/image site may lack masks", site))
    for key, value in s.weak.items():
        if value.shape[0] != n:
            problems.append(Problem(where, f"weak label {key!r} has {value.shape[0]} entries for {n} images", site))
    if len(s.ids) != n:
        problems.append(Problem(where, f"{len(s.ids)} ids for {n} images", site))
    bad_shape: list[str] = []
    not_finite: list[str] = []
    bad_labels: list[str] = []
    for i in range(n):
        name = s.ids[i] if i < len(s.ids) else str(i)
        image, mask = s.case(i)
        if image.ndim != 1 + data.spatial_dims or image.shape[0] != data.in_channels or (
                mask is not None and (mask.shape[0] != 1 or mask.shape[1:] != image.shape[1:])):
            bad_shape.append(f"{name} {tuple(image.shape)}")
            continue
        if not bool(torch.isfinite(image).all()):
            not_finite.append(name)
        if mask is not None and mask.numel() and (int(mask.min()) < 0 or int(mask.max()) >= data.num_classes):
            bad_labels.append(f"{name} ({int(mask.min())}..{int(mask.max())})")
    if bad_shape:
        problems.append(Problem(where, f"case(s) of the wrong shape (expected ({data.in_channels}, *spatial) with "
                                       f"{data.spatial_dims} spatial axes and a matching mask): "
                                       f"{', '.join(bad_shape[:MAX_IDS])}", site))
    if not_finite:
        problems.append(Problem(where, f"NaN/inf intensities in case(s) {', '.join(not_finite[:MAX_IDS])}", site))
    if bad_labels:
        problems.append(Problem(where, f"mask values outside [0, {data.num_classes}) (num_classes) in case(s) "
                                       f"{', '.join(bad_labels[:MAX_IDS])}", site))
    return problems
