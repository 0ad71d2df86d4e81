"""Per-site data specs: the two spellings, and the checks that every site reaches the common input.

A federation may mix sites that differ in channels, label values, modality and preprocessing
(brain MR volumes beside breast ultrasound PNGs beside RGB dermoscopy). ``data.sites`` lists the
sites; an entry may be a plain name or ``{name: ..., channels: ..., label_map: ..., ...}``
(:class:`fedseg.config.data.SiteSpec`). Entries are moved into ``data.site_specs`` (site ->
spec) when the config is read, so ``data.sites`` stays a list of names for everything else and a
saved config (which writes ``site_specs``) reads back to the same specs.

Every site must end with the model's ``data.channels`` input channels and reach every class
``0..data.num_classes-1``; :func:`check_site_specs` refuses a config that cannot, naming the site
and the key, before any file is opened. What can only be known from the files (how many channel
files a case has, whether a site holds volumes) is checked when the sites are indexed
(:mod:`fedseg.data.layout`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedseg.config.data import DataConfig, SiteSpec

__all__ = ["site_entries_to_specs", "check_site_specs", "spec_key", "selected_count", "slicing_configured"]


def spec_key(site: str) -> str:
    """How messages name a site's spec: ``data.sites[<site>]``."""
    return f"data.sites[{site}]"


def selected_count(spec: SiteSpec) -> int | None:
    """Input channels a spec's ``channels`` selection gives (``grey``: 1), ``None`` when unset."""
    if spec.channels is None:
        return None
    return 1 if spec.channels == "grey" else len(spec.channels)


def slicing_configured(cfg: DataConfig) -> bool:
    """Whether any site may be fed to the model as slices (``data.slice_axis`` or a site's)."""
    return cfg.slice_axis is not None or any(s.slice_axis is not None for s in cfg.site_specs.values())


def site_entries_to_specs(raw: Any) -> Any:
    """Move the ``{name: ..., ...}`` entries of ``data.sites`` into ``data.site_specs``.

    Args:
        raw: the ``data`` section as given (a mapping; anything else is returned unchanged).

    Returns:
        The section with ``sites`` a list of names and ``site_specs`` holding the entries.

    Raises:
        ValueError: an entry without a string ``name``, or a site given both as an entry and in
            ``data.site_specs``.
    """
    if not isinstance(raw, Mapping) or not isinstance(raw.get("sites"), list):
        return raw
    entries = raw["sites"]
    if not any(isinstance(e, Mapping) for e in entries):
        return raw
    given = raw.get("site_specs") or {}
    if not isinstance(given, Mapping):
        return raw  # the field validator reports the wrong type
    specs = dict(given)
    names: list[Any] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            names.append(entry)
            continue
        name = entry.get("name")
        if not isinstance(name, str):
            raise ValueError(f"data.sites[{i}] is a site entry without a 'name' (got {dict(entry)}); write "
                             "{name: <site folder>, channels: ..., label_map: ...}")
        if name in specs and name not in names:
            raise ValueError(f"data.sites[{i}] ({name}) also has an entry in data.site_specs; give its spec once")
        if name not in names:
            specs[name] = {k: v for k, v in entry.items() if k != "name"}
        names.append(name)
    return {**raw, "sites": names, "site_specs": specs}


def _check_channels(cfg: DataConfig, site: str, spec: SiteSpec) -> None:
    key = f"{spec_key(site)}.channels"
    if isinstance(spec.channels, list):
        if not spec.channels:
            raise ValueError(f"{key} is empty; list the channel indices that feed the model (e.g. [0]) or write grey")
        bad = [c for c in spec.channels if c < 0]
        if bad or len(set(spec.channels)) != len(spec.channels):
            raise ValueError(f"{key} {spec.channels}: channel indices must be >= 0 and distinct")
    count = selected_count(spec)
    if count is not None and count != cfg.channels:
        raise ValueError(f"{key} = {spec.channels!r} gives {count} input channel(s), but data.channels is "
                         f"{cfg.channels}: every site must feed the model the same channels; select "
                         f"{cfg.channels} (e.g. {list(range(cfg.channels))}) or change data.channels")


def _check_labels(cfg: DataConfig, site: str, spec: SiteSpec) -> None:
    if spec.label_map is None:
        return
    key = f"{spec_key(site)}.label_map"
    targets = set(spec.label_map.values())
    bad = sorted(v for v in targets if not 0 <= v < cfg.num_classes)
    if bad:
        raise ValueError(f"{key} targets {bad} are not class indices in [0, {cfg.num_classes}) (data.num_classes)")
    missing = sorted(set(range(cfg.num_classes)) - targets)
    if missing:
        raise ValueError(f"{key} reaches classes {sorted(targets)} but the federation has {cfg.num_classes} "
                         f"(data.num_classes): site {site} would never label class(es) {missing}; map a file value "
                         "to each class")


def _check_dims(cfg: DataConfig, site: str, spec: SiteSpec) -> None:
    key = spec_key(site)
    axis = spec.slice_axis if spec.slice_axis is not None else cfg.slice_axis
    if spec.spatial_dims == 2 and spec.slice_axis is not None:
        raise ValueError(f"{key}.slice_axis slices 3D volumes, but {key}.spatial_dims is 2")
    if spec.spatial_dims == 3 and cfg.spatial_dims == 2 and axis is None:
        raise ValueError(f"{key}.spatial_dims is 3 (volumes) but data.spatial_dims is 2: set {key}.slice_axis (or "
                         "data.slice_axis) to feed its volumes to the 2D model as slices")
    if spec.spatial_dims == 2 and cfg.spatial_dims == 3:
        raise ValueError(f"{key}.spatial_dims is 2 but data.spatial_dims is 3: a 3D model cannot take 2D images")
    if spec.slice_keep_empty is not None and axis is None:
        raise ValueError(f"{key}.slice_keep_empty needs slicing: set {key}.slice_axis or data.slice_axis")
    if spec.slice_axis is not None and spec.preprocess is not None:
        for name in ("target_spacing", "target_shape"):
            value = getattr(spec.preprocess, name)
            if value is not None and len(value) != 3:
                raise ValueError(f"{key}.preprocess.{name} applies to the 3D volume before slicing and needs 3 "
                                 f"values, got {value} (the slices are resized to the federation's target shape)")


def check_site_specs(cfg: DataConfig) -> None:
    """Refuse specs that cannot reach the federation's input channels and classes.

    Raises:
        ValueError: naming the site and the key (``data.sites[<site>].<key>``): a channel
            selection of another size than ``data.channels``, a label map outside or short of the
            classes, slicing asked of a 3D federation or of 2D files, a 3D site in a 2D federation
            without a slice axis, a spec for a site ``data.sites`` leaves out.
    """
    if cfg.spatial_dims == 3 and slicing_configured(cfg):
        raise ValueError("data.slice_axis (or a site's slice_axis) feeds 3D volumes to a 2D model as slices, but "
                         "data.spatial_dims is 3; set data.spatial_dims: 2 or remove the slice axis")
    if cfg.slice_keep_empty is not None and not slicing_configured(cfg):
        raise ValueError("data.slice_keep_empty needs slicing: set data.slice_axis (or a site's slice_axis)")
    if not cfg.site_specs:
        return
    if cfg.source == "synthetic":
        raise ValueError("per-site specs (entries of data.sites, data.site_specs) need real data (data.source folder)")
    if cfg.sites is not None:
        unknown = sorted(set(cfg.site_specs) - set(cfg.sites))
        if unknown:
            raise ValueError(f"data.site_specs names site(s) {unknown} that data.sites leaves out (sites: "
                             f"{', '.join(cfg.sites)})")
    for site, spec in cfg.site_specs.items():
        _check_channels(cfg, site, spec)
        _check_labels(cfg, site, spec)
        _check_dims(cfg, site, spec)
        sliced = spec.slice_axis is not None or (cfg.slice_axis is not None and spec.spatial_dims == 3)
        if sliced and cfg.weak_labels.source == "files" and cfg.supervision.get(site, "pixel") != "pixel":
            raise ValueError(f"{spec_key(site)}: weak labels read from files cannot be sliced; use "
                             "data.weak_labels.source derive for a sliced site")
