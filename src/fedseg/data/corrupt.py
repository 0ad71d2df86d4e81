"""Deliberate label corruption of one site: an explicit, opt-in experiment option.

Used to test robust aggregation (FedSegNet's AAM should lose less than FedAvg when one site
annotates badly). Set ``data.corrupt_labels: {site: Toshiba_Aplio300, mode: shuffle}`` in a run
config; the engine applies it after the data is built. Only the named site's ``train`` and/or
``val`` masks change; **the test split is never corrupted**, so test metrics still measure the
true labels.

Modes:

* ``dilate``: every foreground class grows by ``radius`` voxels into the background (MONAI
  morphological dilation with a ``(2r+1)^d`` box per class; classes never overwrite each other);
* ``erode``: every foreground class shrinks by ``radius`` voxels (MONAI erosion; the removed
  voxels become background);
* ``shuffle``: masks are permuted across the split's images by a seeded derangement, so every
  image gets another image's mask (the same sizes must match; they do after resampling).
"""

from __future__ import annotations

import dataclasses

import torch
from monai.transforms.utils_morphological_ops import dilate, erode

from fedseg.config import LabelCorruptionConfig
from fedseg.data.base import DataError, FederatedData, SegmentationSet

__all__ = ["corrupt_masks", "flip_labels", "apply_label_corruption"]


def corrupt_masks(masks: torch.Tensor, mode: str, *, radius: int = 5, seed: int = 0) -> torch.Tensor:
    """A corrupted copy of ``masks``.

    Args:
        masks: ``(N, 1, *spatial)`` int64 class indices (2D or 3D), 0 = background.
        mode: ``"dilate"``, ``"erode"`` or ``"shuffle"`` (see the module docstring).
        radius: dilation/erosion radius in voxels (>= 1).
        seed: seeds the shuffle permutation.

    Returns:
        ``(N, 1, *spatial)`` int64, same shape as ``masks``.

    Raises:
        ValueError: an unknown ``mode``, ``radius < 1`` or a mask that is not ``(N, 1, *spatial)``.
    """
    if masks.ndim not in (4, 5) or masks.shape[1] != 1:
        raise ValueError(f"masks must be (N, 1, H, W) or (N, 1, D, H, W), got {tuple(masks.shape)}")
    if mode == "shuffle":
        n = masks.shape[0]
        if n < 2:
            return masks.clone()
        gen = torch.Generator().manual_seed(seed)
        # a random cyclic shift of a random order: a derangement, so no image keeps its own mask
        order = torch.randperm(n, generator=gen)
        shifted = order.roll(1 + int(torch.randint(n - 1, (1,), generator=gen)))
        perm = torch.empty_like(order)
        perm[order] = shifted
        return masks[perm].clone()
    if mode not in ("dilate", "erode"):
        raise ValueError(f"corrupt_labels.mode {mode!r} is unknown; allowed: dilate, erode, shuffle")
    if radius < 1:
        raise ValueError(f"corrupt_labels.radius must be >= 1, got {radius}")
    size = 2 * radius + 1
    out = masks.clone()
    classes = [int(c) for c in torch.unique(masks).tolist() if c != 0]
    for c in classes:
        region = (masks == c).to(torch.float32)
        if mode == "dilate":
            grown = dilate(region, filter_size=size) > 0.5
            out[grown & (out == 0)] = c
        else:
            kept = erode(region, filter_size=size) > 0.5
            out[(masks == c) & ~kept] = 0
    return out


def flip_labels(masks: torch.Tensor, num_classes: int, mode: str = "invert") -> torch.Tensor:
    """A label-flipped copy of ``masks`` (the ``attack.kind: label_flip`` data poisoning).

    Args:
        masks: ``(N, 1, *spatial)`` int64 class indices in ``[0, num_classes)``.
        num_classes: C, background included (>= 2).
        mode: ``"invert"``: class c becomes C-1-c (foreground <-> background with C = 2);
            ``"permute"``: c becomes (c+1) mod C (every class moves).

    Raises:
        ValueError: an unknown ``mode``, ``num_classes < 2`` or a label outside ``[0, num_classes)``.
    """
    if num_classes < 2:
        raise ValueError(f"label flipping needs at least 2 classes, got {num_classes}")
    if masks.numel() and (int(masks.min()) < 0 or int(masks.max()) >= num_classes):
        raise ValueError(f"mask labels must lie in [0, {num_classes}), got [{int(masks.min())}, {int(masks.max())}]")
    if mode == "invert":
        return (num_classes - 1) - masks
    if mode == "permute":
        return (masks + 1) % num_classes
    raise ValueError(f"attack.label_mode {mode!r} is unknown; allowed: invert, permute")


def apply_label_corruption(data: FederatedData, cfg: LabelCorruptionConfig, seed: int) -> FederatedData:
    """A copy of ``data`` whose site ``cfg.site`` has corrupted ``cfg.splits`` masks.

    ``data`` itself is not modified (a caller may reuse it); unchanged tensors are shared.

    Raises:
        DataError: ``cfg.site`` is not a site of ``data`` (the sites are listed).
    """
    names = [s.name for s in data.sites]
    if cfg.site not in names:
        raise DataError(f"data.corrupt_labels.site {cfg.site!r} is not a site; sites: {', '.join(names)}")
    sites = []
    for site in data.sites:
        if site.name == cfg.site:
            splits: dict[str, SegmentationSet] = {"train": site.train, "val": site.val, "test": site.test}
            for offset, split in enumerate(cfg.splits):
                current = splits[split]
                masks = corrupt_masks(current.pixel_masks(), cfg.mode, radius=cfg.radius, seed=seed * 1000 + offset)
                splits[split] = current.with_masks(masks)
            site = dataclasses.replace(site, train=splits["train"], val=splits["val"], test=splits["test"])
        sites.append(site)
    return dataclasses.replace(data, sites=sites)
