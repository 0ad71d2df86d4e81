"""The two small files of an nnU-Net dataset fedseg reads: ``dataset.json`` and a site file.

``dataset.json`` (nnU-Net v2, *nnUNet: documentation/dataset_format.md*): ``channel_names``
(``{"0": "T2", "1": "ADC"}``), ``labels`` (``{"background": 0, "tumour": 1}``; region-based lists
and an ``ignore`` label are refused with the reason), ``file_ending`` and ``numTraining``.

The site file (``data.nnunet.site_file``) splits one dataset into sites: a CSV with the case id
and site columns (its other columns are case metadata, e.g. a group column), or a JSON
``{case id: site}`` / ``{site: [case ids]}``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedseg.config import DataConfig
from fedseg.io import IMAGE_2D_SUFFIXES, NIFTI_SUFFIXES, DataError, Problem

__all__ = ["DATASET_JSON", "FORMAT", "NnUNetDataset", "read_dataset_json", "read_site_file", "shown"]

DATASET_JSON = "dataset.json"
FORMAT = "nnU-Net v2's dataset format (documentation/dataset_format.md)"
_MAX_LISTED = 10


def shown(items: list[str]) -> str:
    """At most ten items, comma-separated, with the total when there are more."""
    text = ", ".join(items[:_MAX_LISTED])
    return text + (f" ... ({len(items)} in all)" if len(items) > _MAX_LISTED else "")


@dataclass(frozen=True)
class NnUNetDataset:
    """The parts of one ``dataset.json`` fedseg uses.

    Attributes:
        path: the dataset folder.
        channel_names: input channel names, in channel order (``_0000``, ``_0001`` ...).
        labels: ``(name, value)`` per class, by increasing value (background = 0 first).
        file_ending: the image and label file suffix (``.nii.gz``, ``.png`` ...).
        num_training: ``numTraining`` (None when absent).
    """

    path: Path
    channel_names: tuple[str, ...]
    labels: tuple[tuple[str, int], ...]
    file_ending: str
    num_training: int | None

    @property
    def spatial_dims(self) -> int:
        return 3 if self.file_ending in NIFTI_SUFFIXES else 2


def read_dataset_json(folder: Path) -> NnUNetDataset:
    """Read and check ``<folder>/dataset.json``.

    Raises:
        DataError: the file is missing or not JSON, a required key (``channel_names``, ``labels``,
            ``file_ending``) is missing or malformed, an nnU-Net v1 file (``modality``), region-based
            labels (a list of values), an ``ignore`` label, no background 0, repeated values, or a
            file ending fedseg cannot read; every problem of the file together.
    """
    path = folder / DATASET_JSON
    if not path.is_file():
        raise DataError.at(path, f"missing: an nnU-Net dataset folder needs a dataset.json with channel_names, labels "
                                 f"and file_ending ({FORMAT})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError.at(path, f"cannot read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, dict):
        raise DataError.at(path, f"must hold a JSON object, got {type(raw).__name__}")
    problems: list[str] = []
    if "channel_names" not in raw and "modality" in raw:
        problems.append("has 'modality' but no 'channel_names': an nnU-Net v1 file; convert the dataset with "
                        "nnUNetv2_convert_old_nnUNet_dataset")
    missing = [k for k in ("channel_names", "labels", "file_ending") if k not in raw]
    if missing and not problems:
        problems.append(f"missing key(s) {', '.join(missing)} ({FORMAT})")
    channels = _channel_names(raw.get("channel_names"), problems) if "channel_names" in raw else ()
    labels = _labels(raw.get("labels"), problems) if "labels" in raw else ()
    ending = raw.get("file_ending")
    known = (*NIFTI_SUFFIXES, *IMAGE_2D_SUFFIXES)
    if "file_ending" in raw and (not isinstance(ending, str) or ending.lower() not in known):
        problems.append(f"file_ending {ending!r} is not one fedseg reads; allowed: {', '.join(known)}")
    count = raw.get("numTraining")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        problems.append(f"numTraining must be a count, got {count!r}")
        count = None
    if problems:
        raise DataError("\n".join(f"{path}: {p}" for p in problems), [Problem(str(path), p) for p in problems])
    return NnUNetDataset(folder, channels, labels, str(ending).lower(), count)


def _channel_names(value: Any, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(value, dict) or not value:
        problems.append(f"channel_names must be an object {{\"0\": name, ...}}, got {value!r}")
        return ()
    try:
        indexed = {int(k): str(v) for k, v in value.items()}
    except ValueError:
        problems.append(f"channel_names keys must be channel indices \"0\", \"1\" ..., got {list(value)}")
        return ()
    if sorted(indexed) != list(range(len(indexed))):
        problems.append(f"channel_names keys must run 0, 1, ... without a gap, got {sorted(indexed)}")
        return ()
    return tuple(indexed[i] for i in range(len(indexed)))


def _labels(value: Any, problems: list[str]) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, dict) or not value:
        problems.append(f"labels must be an object {{name: value, ...}}, got {value!r}")
        return ()
    regions = [name for name, v in value.items() if isinstance(v, (list, tuple))]
    if regions:
        problems.append(f"region-based labels ({shown(regions)} list several values) are not supported: fedseg "
                        "trains one class per label value; give every label one value, or merge values with "
                        "data.label_map")
    if "ignore" in value:
        problems.append("an 'ignore' label is not supported (fedseg has no unlabelled-voxel class); relabel those "
                        "voxels or map them with data.label_map")
    pairs = [(str(name), v) for name, v in value.items() if name != "ignore" and name not in regions]
    bad = [name for name, v in pairs if not isinstance(v, int) or isinstance(v, bool) or v < 0]
    if bad:
        problems.append(f"label value(s) of {shown(bad)} are not integers >= 0")
        return ()
    values = [v for _, v in pairs]
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        problems.append(f"label value(s) {repeated} are given to several names")
    if 0 not in values and not regions:
        problems.append("no label has value 0 (nnU-Net needs \"background\": 0)")
    if len(pairs) < 2 and not regions:
        problems.append("needs background and at least one foreground label")
    return tuple(sorted(pairs, key=lambda p: p[1]))


def read_site_file(path: Path, cfg: DataConfig) -> tuple[dict[str, tuple[str, dict[str, str]]], list[Problem]]:
    """case id -> (site, its CSV row) from ``data.nnunet.site_file``."""
    where = f"data.nnunet.site_file {path}"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [Problem(where, f"cannot read ({type(exc).__name__}: {exc})")]
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            return {}, [Problem(where, f"not JSON ({exc})")]
        if isinstance(raw, dict) and all(isinstance(v, str) for v in raw.values()):
            return {str(k): (v, {}) for k, v in raw.items()}, []
        if isinstance(raw, dict) and all(isinstance(v, list) and all(isinstance(i, str) for i in v)
                                         for v in raw.values()):
            out: dict[str, tuple[str, dict[str, str]]] = {}
            twice = sorted({i for ids in raw.values() for i in ids if sum(i in o for o in raw.values()) > 1})
            for site, ids in raw.items():
                out.update({i: (str(site), {}) for i in ids})
            return out, [Problem(where, f"case(s) {shown(twice)} listed under several sites")] if twice else []
        return {}, [Problem(where, "must be {case id: site} or {site: [case ids]}")]
    id_col, site_col = cfg.nnunet.id_column, cfg.nnunet.site_column
    try:
        reader = csv.DictReader(text.splitlines())
        header = list(reader.fieldnames or [])
        rows = list(reader)
    except csv.Error as exc:
        return {}, [Problem(where, f"cannot parse as CSV ({exc}); a .json file is read as JSON")]
    missing = [c for c in (id_col, site_col) if c not in header]
    if missing:
        return {}, [Problem(where, f"missing column(s) {', '.join(repr(c) for c in missing)} (data.nnunet.id_column "
                                   f"/ site_column); columns are: {', '.join(header)}")]
    table: dict[str, tuple[str, dict[str, str]]] = {}
    twice = []
    for row in rows:
        clean = {k: (v or "").strip() for k, v in row.items() if k is not None}
        if clean[id_col] in table:
            twice.append(clean[id_col])
        table[clean[id_col]] = (clean[site_col], clean)
    empty = sorted(i for i, (site, _) in table.items() if not site)
    problems = [Problem(where, f"case id(s) {shown(twice)} appear in several rows")] if twice else []
    if empty:
        problems.append(Problem(where, f"empty {site_col!r} for case id(s) {shown(empty)}"))
    return {i: v for i, v in table.items() if v[0]}, problems
