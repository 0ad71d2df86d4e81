"""Mixed supervision: the label kind of every site and the weak labels of box/image sites.

A site declares how its **training** split is labelled (``data.supervision``, default ``pixel``):

* ``pixel``: masks, as usual;
* ``box``: one box mask per image (1 inside the bounding box of the lesion, 0 outside);
* ``image``: an image-level class vector per image (which classes are present).

The training split of a box/image site carries **no mask** (``SegmentationSet.masks is None``);
its weak labels live in ``SegmentationSet.weak`` and reach training batches as ``Batch.extras``
(:class:`WeakKey`). Val/test splits keep their masks: they are read by the evaluator only (the
test split never reaches an algorithm hook, the val split only through ``trainer.evaluate``).

Where weak labels come from (``data.weak_labels.source``):

* ``derive`` (experiments): computed from the masks once, at data-preparation time
  (:func:`apply_supervision`), then the training masks are dropped. Boxes are the masks' bounding
  boxes (MONAI ``generate_spatial_bounding_box``, N-d) grown by a margin per side, fixed or drawn
  from ``[lo, hi]`` (inclusive) by a generator seeded per (seed, site); image labels are "class c
  is present".
* ``files``: read from ``<root>/<site>/`` (``boxes.json``/``boxes.csv``, ``labels.csv``) by
  :mod:`fedseg.data.weak_label_files` for :mod:`fedseg.data.folder`, which then never opens the
  site's training mask files.

Every training image of a weak site needs an entry; a missing image, a box outside its image, an
unknown site or kind is an error naming the file or key. In ``files`` mode a weak site's images
need no mask file (nor a ``masks/`` folder): an image without mask is always a training case; the
cases with masks are split as configured (val/test need masks), so a site without any mask has
empty val/test splits and no evaluation metrics (:mod:`fedseg.data.layout`, :mod:`fedseg.data.folder`).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping, Sequence
from enum import StrEnum

import numpy as np
import torch
from monai.transforms.utils import generate_spatial_bounding_box

from fedseg.config import ConfigError, DataConfig
from fedseg.data.base import DataError, FederatedData, SegmentationSet
from fedseg.registry import suggest

__all__ = [
    "SupervisionKind",
    "WeakKey",
    "SUPERVISION_CODES",
    "site_supervision",
    "files_mode_sites",
    "box_bounds",
    "box_mask",
    "boxes_from_masks",
    "image_labels_from_masks",
    "weak_split",
    "weak_training_split",
    "apply_supervision",
]


class SupervisionKind(StrEnum):
    """How a site's training images are labelled."""

    PIXEL = "pixel"
    BOX = "box"
    IMAGE = "image"


class WeakKey(StrEnum):
    """Names of the weak labels in ``SegmentationSet.weak`` and ``Batch.extras``."""

    BOX_MASK = "box_mask"  # (N, 1, *spatial) uint8, 1 inside the box
    IMAGE_LABEL = "image_label"  # (N, num_classes) float32, 1 = class present (background included)
    SUPERVISION = "supervision"  # (N,) int64, SUPERVISION_CODES


SUPERVISION_CODES: dict[str, int] = {SupervisionKind.PIXEL: 0, SupervisionKind.BOX: 1, SupervisionKind.IMAGE: 2}


def site_supervision(cfg: DataConfig, sites: Sequence[str], *, strict: bool = True) -> dict[str, SupervisionKind]:
    """The label kind of every site (``pixel`` unless ``data.supervision`` names it).

    Args:
        strict: ``sites`` is the whole federation, so a name it lacks is an error. Data restricted
            by ``data.sites`` (e.g. a Flower SuperNode's own site) is checked by the server instead,
            which knows every site (``fedseg.engine.server.FederationServer``).

    Raises:
        ConfigError: ``data.supervision`` names a site that is not in the data (key and sites named).
    """
    unknown = [s for s in cfg.supervision if s not in sites]
    if unknown and strict:
        hints = "".join(suggest(s, list(sites)) for s in unknown)
        raise ConfigError(
            f"data.supervision names unknown site(s) {', '.join(repr(s) for s in unknown)}; sites: "
            f"{', '.join(sites)}.{hints}"
        )
    return {s: SupervisionKind(cfg.supervision.get(s, "pixel")) for s in sites}


def files_mode_sites(cfg: DataConfig, sites: Sequence[str]) -> dict[str, SupervisionKind]:
    """Weak sites whose labels are read from files (``data.weak_labels.source: files``); else ``{}``."""
    if cfg.weak_labels.source != "files":
        return {}
    kinds = site_supervision(cfg, sites, strict=cfg.sites is None)
    return {s: k for s, k in kinds.items() if k != SupervisionKind.PIXEL}


# ---------------------------------------------------------------------------------------------- boxes
def box_bounds(mask: torch.Tensor | np.ndarray) -> tuple[list[int], list[int]] | None:
    """``(start, end)`` (end exclusive) of the foreground (``> 0``) of a ``(*spatial)`` mask, N-d;
    ``None`` when it has no foreground."""
    arr = torch.as_tensor(mask)
    start, end = generate_spatial_bounding_box(arr[None], select_fn=lambda x: x > 0)
    if all(e <= s for s, e in zip(start, end, strict=True)):
        return None
    return [int(s) for s in start], [int(e) for e in end]


def box_mask(shape: Sequence[int], start: Sequence[int], end: Sequence[int]) -> torch.Tensor:
    """A ``(*shape)`` uint8 mask, 1 on ``[start, end)`` along every axis."""
    out = torch.zeros(tuple(shape), dtype=torch.uint8)
    out[tuple(slice(int(s), int(e)) for s, e in zip(start, end, strict=True))] = 1
    return out


def boxes_from_masks(masks: torch.Tensor, margin: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """Noisy box masks from masks (FedMix's experiments): the foreground's bounding box (all
    foreground classes together, [ASSUME]), each side moved out by a margin drawn uniformly from
    ``margin = (lo, hi)`` (inclusive; ``(m, m)`` is fixed), clamped to the image.

    Args:
        masks: ``(N, 1, *spatial)`` class indices, 2D or 3D.
        margin: ``(lo, hi)`` pixels per side.
        rng: draws ``2 * D`` margins per image (low side then high side, axis by axis), also for
            images without foreground (they get an empty box), so one image never shifts another's.

    Returns:
        ``(N, 1, *spatial)`` uint8, 1 inside the box.
    """
    if masks.ndim < 3 or masks.shape[1] != 1:
        raise ValueError(f"masks must be (N, 1, *spatial), got {tuple(masks.shape)}")
    spatial = tuple(int(n) for n in masks.shape[2:])
    out = torch.zeros((masks.shape[0], 1, *spatial), dtype=torch.uint8)
    lo, hi = margin
    for i in range(masks.shape[0]):
        draws = rng.integers(lo, hi + 1, size=(len(spatial), 2))
        bounds = box_bounds(masks[i, 0])
        if bounds is None:
            continue
        start = [max(0, s - int(d[0])) for s, d in zip(bounds[0], draws, strict=True)]
        end = [min(n, e + int(d[1])) for e, d, n in zip(bounds[1], draws, spatial, strict=True)]
        out[i, 0] = box_mask(spatial, start, end)
    return out


def image_labels_from_masks(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(N, num_classes)`` float32: 1 where class c occurs in image i (background included)."""
    flat = masks.reshape(masks.shape[0], -1).long()
    return torch.stack([(flat == c).any(dim=1) for c in range(num_classes)], dim=1).to(torch.float32)


def weak_split(split: SegmentationSet, kind: SupervisionKind, labels: Mapping[str, torch.Tensor]) -> SegmentationSet:
    """``split`` without masks, carrying ``labels`` and the supervision code instead."""
    weak = dict(labels)
    weak[WeakKey.SUPERVISION.value] = torch.full((len(split),), SUPERVISION_CODES[kind], dtype=torch.int64)
    return dataclasses.replace(split.with_masks(None), weak=weak, supervision=kind.value)


def weak_training_split(images: torch.Tensor, spacing: torch.Tensor, ids: list[str], kind: SupervisionKind,
                        labels: np.ndarray) -> SegmentationSet:
    """A weak site's training split read from files (:mod:`fedseg.data.folder`).

    Args:
        images: ``(N, C, *spatial)`` float32, preprocessed.
        spacing: ``(N, D)`` float64.
        ids: case ids, one per image.
        kind: box or image.
        labels: box sites ``(N, *spatial)`` uint8 box masks on the training grid; image sites
            ``(N, num_classes)`` float32 class vectors (background included).
    """
    weak = ({WeakKey.BOX_MASK.value: torch.from_numpy(labels)[:, None]} if kind == SupervisionKind.BOX
            else {WeakKey.IMAGE_LABEL.value: torch.from_numpy(labels)})
    split = SegmentationSet(images=images, masks=None, spacing=spacing, ids=ids)
    return weak_split(split, kind, weak)


def apply_supervision(data: FederatedData, cfg: DataConfig, seed: int) -> FederatedData:
    """Give every box/image site of ``data`` a weak training split (``data.supervision``).

    ``derive``: weak labels from the training masks, which are then dropped (this is the only
    place they are read). ``files``: the folder loader already built weak training splits; this
    checks them. Val/test splits are never changed. ``data`` itself is not modified.

    Raises:
        ConfigError: an unknown site in ``data.supervision``.
        DataError: ``files`` mode on data that the folder loader did not prepare.
    """
    kinds = site_supervision(cfg, [s.name for s in data.sites], strict=cfg.sites is None)
    if all(k == SupervisionKind.PIXEL for k in kinds.values()):
        return data
    lo_hi = cfg.weak_labels.margin_range()
    base_seed = cfg.weak_labels.seed if cfg.weak_labels.seed is not None else seed
    sites = []
    for site in data.sites:
        kind = kinds[site.name]
        train = site.train
        if kind == SupervisionKind.PIXEL:
            if not train.has_masks:
                raise DataError(f"site {site.name}: the training split has no masks but data.supervision says pixel")
        elif not train.has_masks:
            if train.supervision != kind.value:
                raise DataError(f"site {site.name}: weak training labels are {train.supervision!r}, "
                                f"data.supervision says {kind.value!r}")
        elif cfg.weak_labels.source == "files":
            raise DataError(f"site {site.name}: data.weak_labels.source is 'files' but the training split still holds "
                            "masks (only the folder loader reads label files); use 'derive' for data built in code")
        else:
            masks = train.pixel_masks()
            if kind == SupervisionKind.BOX:
                rng = np.random.default_rng([base_seed, zlib.crc32(site.name.encode())])
                labels = {WeakKey.BOX_MASK.value: boxes_from_masks(masks, lo_hi, rng)}
            else:
                labels = {WeakKey.IMAGE_LABEL.value: image_labels_from_masks(masks, data.num_classes)}
            train = weak_split(train, kind, labels)
            site = dataclasses.replace(site, train=train)
        sites.append(site)
    return dataclasses.replace(data, sites=sites)
