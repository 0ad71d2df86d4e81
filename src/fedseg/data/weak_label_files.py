"""Weak labels read from files (``data.weak_labels.source: files``), for :mod:`fedseg.data.folder`.

Files under ``<root>/<site>/`` (``root`` = ``data.weak_labels.root`` or ``data.root``); the
folder reader then never opens the site's training mask files:

- ``boxes.json``: ``{"<case id>": box | [box, ...]}`` with ``box = {"x_min": .., "y_min": ..,
  "x_max": .., "y_max": ..}`` (3D: also ``z_min``, ``z_max``); or ``boxes.csv`` with columns
  ``id,x_min,y_min,x_max,y_max`` (3D: ``+ z_min,z_max``), one row per box. Coordinates are 0-based
  pixel/voxel indices on the image **file**'s grid, min and max inclusive; 2D ``x`` is the column
  and ``y`` the row, 3D ``x, y, z`` are the NIfTI voxel axes i, j, k. Several boxes of one image
  are merged into one box mask (their union). The box mask goes through the image's own
  preprocessing (resampling nearest, crop/pad), so it lands on the training grid.
- ``labels.csv``: ``id`` plus either ``label`` (binary: 1 = the image contains foreground) or one
  0/1 column per foreground class named as in ``data.label_names`` (default ``class1``...).

Every training image of a weak site needs an entry; a missing image, a box outside its image or
an entry that does not parse is an error naming the file (and line). What the labels mean, and
the ``derive`` source, are in :mod:`fedseg.data.supervision`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedseg.config import DataConfig
from fedseg.data.base import DataError
from fedseg.data.supervision import SupervisionKind
from fedseg.io import Volume

__all__ = ["WeakLabels", "read_weak_labels", "read_site_weak_labels", "box_volume", "case_box"]

_AXES = {2: ("y", "x"), 3: ("x", "y", "z")}  # coordinate name of each array axis (2D files are (H, W))


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


def read_site_weak_labels(cfg: DataConfig, site: str, kind: SupervisionKind, dims: int) -> WeakLabels:
    """Read the label file of weak site ``site`` under ``data.weak_labels.root`` (default ``data.root``).

    Raises:
        DataError: as :func:`read_weak_labels`.
    """
    root = Path(cfg.weak_labels.root if cfg.weak_labels.root is not None else cfg.root or ".")
    return read_weak_labels(root / site, kind, cfg, dims)


def case_box(labels: WeakLabels, case_id: str, image: Volume) -> Volume | None:
    """The box mask of a box site's training case on ``image``'s grid; ``None`` for an image site,
    whose case must then have a class vector.

    Raises:
        DataError: the case has no entry, or its box lies outside the image.
    """
    box = box_volume(labels, case_id, image) if labels.kind == SupervisionKind.BOX else None
    if box is None and case_id not in labels.classes:
        raise DataError(f"{labels.path}: no label for training image {case_id!r} (every training image of "
                        "an image-supervised site needs one)")
    return box
