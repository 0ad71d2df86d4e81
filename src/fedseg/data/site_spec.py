"""Reading one site through its spec (``data.sites`` entries, :class:`fedseg.config.SiteSpec`).

* :func:`site_config`: the ``data`` section as the site sees it (its label map, preprocessing,
  group column); the reader and :mod:`fedseg.data.preprocess` take it unchanged.
* :func:`read_site_image`: the site's channel selection. Channel files (``<case>_0000``...) not
  selected are never opened; a single file is read whole (a 2D file as RGB) and its selected
  channels kept; ``grey`` is the luminance of an RGB image (Pillow's ITU-R 601-2 ``L`` conversion).
* Volumes fed to a 2D model as slices are preprocessed as 3D volumes with the site's
  ``preprocess`` (without the federation's 2D target), then cut by :mod:`fedseg.data.slices`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from fedseg.config import DataConfig
from fedseg.config.site import spec_key
from fedseg.io import NIFTI_SUFFIXES, DataError, Volume, file_suffix, read_image

__all__ = ["site_dir", "slice_axis_of", "is_sliced", "site_config", "read_site_image", "spec_settings", "describe_spec"]


def site_dir(cfg: DataConfig, site: str) -> Path:
    """The folder of ``site``: its spec's ``path`` (relative paths under ``data.root``), else ``<root>/<site>``."""
    root = Path(cfg.root) if cfg.root is not None else Path(".")
    spec = cfg.site_spec(site)
    if spec is not None and spec.path is not None:
        return spec.path if spec.path.is_absolute() else root / spec.path
    return root / site


def slice_axis_of(cfg: DataConfig, site: str) -> int | None:
    """The axis along which the site's volumes are sliced: its spec's, else ``data.slice_axis``."""
    spec = cfg.site_spec(site)
    if spec is not None and spec.slice_axis is not None:
        return spec.slice_axis
    return cfg.slice_axis


def is_sliced(cfg: DataConfig, site: str, first_file: Path) -> bool:
    """Whether a case of ``site`` (its first image file) is a volume fed to the 2D model as slices."""
    return cfg.spatial_dims == 2 and slice_axis_of(cfg, site) is not None and file_suffix(first_file) in NIFTI_SUFFIXES


def site_config(cfg: DataConfig, site: str, sliced: bool = False) -> DataConfig:
    """The ``data`` section as ``site`` is read and preprocessed.

    Args:
        cfg: the federation's ``data`` section.
        site: the site name.
        sliced: the site's volumes feed a 2D model as slices: preprocessing is 3D (the site's
            ``preprocess``, else ``data.preprocess`` without its 2D target spacing/shape), and the
            slices are resized to the federation's target shape afterwards.

    Returns:
        ``cfg`` itself for a site without spec that is not sliced, else a copy with the site's
        ``label_map``, ``group_column``, ``modality`` and preprocessing. A site ``preprocess``
        replaces ``data.preprocess``; its ``target_shape``, when unset, stays the federation's
        (every site must reach one input shape).
    """
    spec = cfg.site_spec(site)
    if spec is None and not sliced:
        return cfg
    update: dict[str, object] = {}
    pre = None
    if spec is not None:
        for name in ("label_map", "group_column", "modality"):
            if getattr(spec, name) is not None:
                update[name] = getattr(spec, name)
        pre = spec.preprocess
    if sliced:
        flat = cfg.preprocess.model_copy(update={"target_spacing": None, "target_shape": None})
        update.update(preprocess=pre or flat, image_size=None, spatial_dims=3)
    elif pre is not None:
        update["preprocess"] = pre if pre.target_shape is not None else pre.model_copy(
            update={"target_shape": cfg.target_shape()})
    return cfg.model_copy(update=update) if update else cfg


def spec_settings(cfg: DataConfig, site: str) -> str:
    """The site's spec as canonical JSON ('' without one): it enters the cache key of its cases."""
    spec = cfg.site_spec(site)
    if spec is None and cfg.slice_axis is None:
        return ""
    body = spec.model_dump(mode="json") if spec is not None else {}
    return json.dumps({"spec": body, "slice_axis": cfg.slice_axis}, sort_keys=True)


Reader = Callable[..., Volume]
""":func:`fedseg.io.read_image`'s signature: ``(paths, channels=None) -> Volume``."""


def read_site_image(site: str, images: Sequence[Path], cfg: DataConfig, reader: Reader = read_image) -> Volume:
    """Read one case's image with the site's channel selection.

    Args:
        site: the site name (its spec's ``channels``).
        images: the case's image file(s), channel order.
        cfg: the federation's ``data`` section.
        reader: the file reader (the loader passes its own, so tests can count decodes).

    Returns:
        ``(data.channels, *spatial)`` float32 volume.

    Raises:
        DataError: unreadable files, or a selection asking for a channel the case lacks (naming
            the site and the key).
    """
    spec = cfg.site_spec(site)
    if spec is None or spec.channels is None:
        return reader(images, channels=cfg.channels)
    key = f"{spec_key(site)}.channels"
    if spec.channels == "grey":
        if len(images) != 1 or file_suffix(images[0]) in NIFTI_SUFFIXES:
            raise DataError.at(images[0], f"{key} = grey (luminance of an RGB image) needs one 2D image file per "
                                          f"case; this case has {len(images)} file(s)")
        return reader(images, channels=1)
    chosen = list(spec.channels)
    if len(images) > 1:
        if max(chosen) >= len(images):
            raise DataError.at(images[0], f"{key} selects channel(s) {chosen} but the case has {len(images)} channel "
                                          f"file(s) (_0000.._{len(images) - 1:04d})")
        return reader([images[i] for i in chosen], channels=len(chosen))
    two_d = file_suffix(images[0]) not in NIFTI_SUFFIXES
    volume = reader(images, channels=3 if two_d else None)
    available = int(volume.array.shape[0])
    if max(chosen) >= available:
        what = "an RGB image has channels 0, 1, 2" if two_d else f"the file holds {available} channel(s)"
        raise DataError.at(images[0], f"{key} selects channel(s) {chosen} but {what}")
    return replace(volume, array=volume.array[chosen])


def describe_spec(cfg: DataConfig, site: str, sliced: bool) -> str:
    """One line for ``fedseg data check``: what the site's spec changes ('' when nothing)."""
    spec = cfg.site_spec(site)
    parts = []
    if spec is not None:
        if spec.modality:
            parts.append(f"modality {spec.modality}")
        if spec.channels is not None:
            parts.append(f"channels {spec.channels if spec.channels == 'grey' else list(spec.channels)} -> "
                         f"{cfg.channels}")
        if spec.label_map is not None:
            parts.append("label_map " + ", ".join(f"{k}->{v}" for k, v in sorted(spec.label_map.items())))
        if spec.preprocess is not None:
            changed = spec.preprocess.model_dump(exclude_defaults=True)
            parts.append("preprocess " + (", ".join(f"{k}={v}" for k, v in changed.items()) or "defaults"))
        if spec.group_column is not None:
            parts.append(f"grouped by {spec.group_column}")
        if spec.path is not None:
            parts.append(f"folder {site_dir(cfg, site)}")
    if sliced:
        keep = spec.slice_keep_empty if spec is not None and spec.slice_keep_empty is not None \
            else cfg.slice_keep_empty
        parts.append(f"3D -> 2D slices along axis {slice_axis_of(cfg, site)}"
                     + (f", {keep:g} of empty slices kept" if keep is not None else ""))
    return "; ".join(parts)
