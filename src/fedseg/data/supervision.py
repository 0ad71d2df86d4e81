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
* ``files``: read from ``<root>/<site>/`` (``root`` = ``data.weak_labels.root`` or ``data.root``)
  by :mod:`fedseg.data.folder`, which then never opens the site's training mask files:

  - ``boxes.json``: ``{"<case id>": box | [box, ...]}`` with ``box = {"x_min": .., "y_min": ..,
    "x_max": .., "y_max": ..}`` (3D: also ``z_min``, ``z_max``); or ``boxes.csv`` with columns
    ``id,x_min,y_min,x_max,y_max`` (3D: ``+ z_min,z_max``), one row per box. Coordinates are 0-based
    pixel/voxel indices on the image **file**'s grid, min and max inclusive; 2D ``x`` is the column
    and ``y`` the row, 3D ``x, y, z`` are the NIfTI voxel axes i, j, k. Several boxes of one image
    are merged into one box mask (their union). The box mask goes through the image's own
    preprocessing (resampling nearest, crop/pad), so it lands on the training grid.
  - ``labels.csv``: ``id`` plus either ``label`` (binary: 1 = the image contains foreground) or one
    0/1 column per foreground class named as in ``data.label_names`` (default ``class1``...).

Every training image of a weak site needs an entry; a missing image, a box outside its image, an
unknown site or kind is an error naming the file or key. In ``files`` mode a weak site's images
need no mask file (nor a ``masks/`` folder): an image without mask is always a training case; the
cases with masks are split as configured (val/test need masks), so a site without any mask has
empty val/test splits and no evaluation metrics (:mod:`fedseg.data.layout`, :mod:`fedseg.data.folder`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms.utils import generate_spatial_bounding_box

from fedseg.config import ConfigError, DataConfig
from fedseg.data.base import DataError, FederatedData, SegmentationSet
from fedseg.io import Volume
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
    "apply_supervision",
    "WeakLabels",
    "read_weak_labels",
    "box_volume",
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

_AXES = {2: ("y", "x"), 3: ("x", "y", "z")}  # coordinate name of each array axis (2D files are (H, W))


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
    return dataclasses.replace(split, masks=None, weak=weak, supervision=kind.value)


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
            if train.masks is None:
                raise DataError(f"site {site.name}: the training split has no masks but data.supervision says pixel")
        elif train.masks is None:
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


# ---------------------------------------------------------------------------------------------- files
@dataclass
class WeakLabels:
    """The weak labels of one site read from its label file.

    Attributes:
        kind: box or image.
        path: the file read.
        boxes: box sites: case id -> list of ``{axis name: (min, max)}`` (inclusive).
        classes: image sites: case id -> foreground-class presence, one 0/1 per foreground class.
    """

    kind: SupervisionKind
    path: Path
    boxes: dict[str, list[dict[str, tuple[int, int]]]] = dataclasses.field(default_factory=dict)
    classes: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def vector(self, case_id: str) -> np.ndarray:
        """``(num_classes,)`` float32 class vector of an image site's case (background = 1)."""
        return np.asarray([1.0, *self.classes[case_id]], dtype=np.float32)


def _int(value: Any, where: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {value!r} is not a pixel index") from None
    if number != int(number):
        raise DataError(f"{where}: {value!r} is not a whole pixel index")
    return int(number)


def _parse_box(raw: Mapping[str, Any], dims: int, where: str) -> dict[str, tuple[int, int]]:
    needed = [f"{a}_{m}" for a in _AXES[dims] for m in ("min", "max")]
    missing = [k for k in needed if k not in raw]
    if missing:
        raise DataError(f"{where}: box misses {', '.join(missing)} (a {dims}D box needs {', '.join(needed)})")
    box = {a: (_int(raw[f"{a}_min"], where), _int(raw[f"{a}_max"], where)) for a in _AXES[dims]}
    bad = [a for a, (lo, hi) in box.items() if lo > hi]
    if bad:
        raise DataError(f"{where}: {', '.join(f'{a}_min > {a}_max' for a in bad)}")
    return box


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            return list(reader.fieldnames or []), list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None


def _read_boxes(site_dir: Path, dims: int) -> WeakLabels:
    json_path, csv_path = site_dir / "boxes.json", site_dir / "boxes.csv"
    if json_path.is_file():
        try:
            raw = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{json_path}: cannot read ({type(exc).__name__}: {exc})") from None
        if not isinstance(raw, dict):
            raise DataError(f"{json_path}: expected an object {{case id: box or [boxes]}}, got {type(raw).__name__}")
        out = WeakLabels(SupervisionKind.BOX, json_path)
        for case_id, entry in raw.items():
            entries = entry if isinstance(entry, list) else [entry]
            if not all(isinstance(e, dict) for e in entries):
                raise DataError(f"{json_path}: {case_id}: a box is an object with x_min, y_min, ... keys")
            out.boxes[str(case_id)] = [_parse_box(e, dims, f"{json_path}: {case_id}") for e in entries]
        return out
    if csv_path.is_file():
        header, rows = _read_csv(csv_path)
        if "id" not in header:
            raise DataError(f"{csv_path}: needs an 'id' column (columns: {', '.join(header)})")
        out = WeakLabels(SupervisionKind.BOX, csv_path)
        for line, row in enumerate(rows, start=2):
            out.boxes.setdefault(row["id"], []).append(_parse_box(row, dims, f"{csv_path}, line {line}"))
        return out
    raise DataError(f"{site_dir}: box-supervised site (data.supervision) without boxes.json or boxes.csv; see "
                    "fedseg.data.supervision for the format, or use data.weak_labels.source: derive")


def _read_classes(site_dir: Path, cfg: DataConfig) -> WeakLabels:
    path = site_dir / "labels.csv"
    if not path.is_file():
        raise DataError(f"{path}: missing; an image-supervised site (data.supervision) needs labels.csv with 'id' "
                        "and 'label' (binary) or one column per foreground class")
    header, rows = _read_csv(path)
    names = (list(cfg.label_names) if cfg.label_names else
             ["background", "foreground"] if cfg.num_classes == 2 else
             ["background"] + [f"class{k}" for k in range(1, cfg.num_classes)])[1:]
    if "id" in header and cfg.num_classes == 2 and "label" in header:
        columns = ["label"]
    elif "id" in header and all(n in header for n in names):
        columns = names
    else:
        raise DataError(f"{path}: needs columns 'id' and {'label or ' if cfg.num_classes == 2 else ''}"
                        f"{', '.join(names)} (got {', '.join(header)})")
    out = WeakLabels(SupervisionKind.IMAGE, path)
    for line, row in enumerate(rows, start=2):
        values = []
        for c in columns:
            text = (row.get(c) or "").strip()
            if text not in ("0", "1"):
                raise DataError(f"{path}, line {line}: column {c!r} must be 0 or 1, got {text!r}")
            values.append(float(text))
        out.classes[row["id"]] = values
    return out


def read_weak_labels(site_dir: Path, kind: SupervisionKind, cfg: DataConfig, dims: int) -> WeakLabels:
    """Read a weak site's label file from ``site_dir`` (see the module docstring for the formats).

    Raises:
        DataError: a missing or unreadable file, or an entry that does not parse (file and line named).
    """
    if kind == SupervisionKind.BOX:
        return _read_boxes(site_dir, dims)
    if kind == SupervisionKind.IMAGE:
        return _read_classes(site_dir, cfg)
    raise ValueError(f"no label file for {kind!r} supervision")


def box_volume(labels: WeakLabels, case_id: str, image: Volume) -> Volume:
    """The box mask of ``case_id`` on ``image``'s file grid (0/1, same geometry as the image).

    Raises:
        DataError: no box for the case, or a box outside the image (file, case and shape named).
    """
    boxes = labels.boxes.get(case_id)
    if not boxes:
        raise DataError(f"{labels.path}: no box for training image {case_id!r} (every training image of a "
                        "box-supervised site needs one)")
    shape = image.spatial_shape
    axes = _AXES[len(shape)]
    out = np.zeros(shape, dtype=np.uint8)
    for box in boxes:
        outside = [f"{a} {box[a][0]}..{box[a][1]} not in 0..{n - 1}" for a, n in zip(axes, shape, strict=True)
                   if box[a][0] < 0 or box[a][1] >= n]
        if outside:
            raise DataError(f"{labels.path}: box of {case_id!r} lies outside the image ({'; '.join(outside)}; "
                            f"image {image.paths[0] if image.paths else ''} has shape {shape})")
        out[tuple(slice(box[a][0], box[a][1] + 1) for a in axes)] = 1
    return Volume(array=out, spacing=image.spacing, affine=image.affine, paths=(labels.path,), header=image.header)

