"""Find the cases of a multi-site folder: ``<root>/<site>/{images,masks}/`` + ``metadata.csv``.

Rules (the layout of ``shared/data/README.md`` and of nnU-Net's raw datasets):

* ``images/<case>.<ext>`` with ``masks/<case>.<ext>``: one file per case (PNG/JPG/BMP, or NIfTI
  3-D, or 4-D with channels last).
* ``images/<case>_0000.nii.gz, <case>_0001.nii.gz ...`` with ``masks/<case>.nii.gz``: one file per
  channel; the four-digit suffixes must run 0, 1, ... without a gap.
* ``metadata.csv`` (optional, per site): column ``id`` = case id; ``data.group_column`` names the
  column that groups cases of one patient or video.
* A box- or image-supervised site whose labels come from files (``data.supervision``,
  ``data.weak_labels.source: files``) may have images without a mask, or no ``masks/`` folder at
  all: such an image is a training case whose label is in the site's label file
  (:mod:`fedseg.data.supervision`). Everywhere else an image without mask is an error.

Only names are looked at (``infer_channels`` aside, which reads one case), so the structure of a
large dataset is checked in milliseconds. Every problem is returned with its path (never raised one at a time).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fedseg.config import DataConfig
from fedseg.config.site import slicing_configured, spec_key
from fedseg.data.scan import broken_link, case_variant, scan_root
from fedseg.data.site_spec import site_dir, slice_axis_of
from fedseg.io import IMAGE_2D_SUFFIXES, NIFTI_SUFFIXES, SUFFIXES, DataError, Problem, file_stem, file_suffix, read_image

__all__ = [
    "CaseFiles",
    "SiteIndex",
    "discover_sites",
    "scan_root",
    "index_site",
    "index_dataset",
    "infer_spatial_dims",
    "infer_channels",
]

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_MAX_LISTED = 10


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case.

    Attributes:
        site: site folder name.
        case_id: the case identifier (mask file stem).
        images: image file(s), channel order.
        mask: the mask file; ``None`` for an image without mask at a files-mode weak site (always a
            training case, labelled by the site's label file).
        group: value of the group column (the case id when there is no group column).
        metadata: the case's ``metadata.csv`` row (empty when none).
        volume: for a slice of a volume fed to a 2D model (:mod:`fedseg.data.slices`), the
            volume's case id (``None`` otherwise).
    """

    site: str
    case_id: str
    images: tuple[Path, ...]
    mask: Path | None
    group: str
    metadata: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    volume: str | None = None


@dataclass
class SiteIndex:
    """The cases found in one site folder (those with every file present).

    ``slice_axis``: the site's 3D volumes feed a 2D model as slices along this axis (``None``: not sliced).
    """

    name: str
    path: Path
    cases: list[CaseFiles]
    slice_axis: int | None = None


def discover_sites(root: Path) -> list[str]:
    """Every subdirectory of ``root`` that has an ``images/`` folder, sorted by name."""
    return scan_root(root)[0]


def _shown(items: list[str]) -> str:
    text = ", ".join(items[:_MAX_LISTED])
    return text + (f" ... ({len(items)} in all)" if len(items) > _MAX_LISTED else "")


def _list(folder: Path, site: str) -> tuple[dict[str, Path], list[Problem]]:
    """stem -> file for the recognised files of ``folder``; duplicates and stray files as problems."""
    found: dict[str, list[Path]] = {}
    stray = []
    problems: list[Problem] = []
    subfolders = []
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        return {}, [Problem(str(folder), f"cannot list the folder ({exc.strerror or exc})", site)]
    for p in entries:
        if p.name.startswith("."):
            continue
        broken = broken_link(p)
        if broken is not None:
            problems.append(Problem(str(p), f"{broken}: skipped", site, "warning"))
            continue
        if p.is_dir():
            subfolders.append(p.name)
            continue
        if not p.is_file():
            continue
        if file_suffix(p):
            found.setdefault(file_stem(p), []).append(p)
        elif p.name.lower() not in ("thumbs.db", "desktop.ini"):
            stray.append(p.name)
    problems += [
        Problem(str(folder), f"several files share the stem {stem!r}: {', '.join(f.name for f in files)}", site)
        for stem, files in found.items()
        if len(files) > 1
    ]
    if subfolders:
        problems.append(Problem(str(folder), f"subfolder(s) ignored (cases must be files directly in "
                                             f"{folder.name}/): {_shown(subfolders)}", site, "warning"))
    if stray:
        known = ", ".join(sorted({*IMAGE_2D_SUFFIXES, *NIFTI_SUFFIXES}))
        problems.append(Problem(str(folder), f"ignored file(s) that are not images ({known}): {_shown(stray)}", site,
                                "warning"))
    return {stem: files[0] for stem, files in found.items()}, problems


def _read_metadata(site_dir: Path, site: str, column: str | None) -> tuple[dict[str, dict[str, str]], list[Problem]]:
    path = site_dir / "metadata.csv"
    if not path.is_file():
        if column is None:
            return {}, []
        return {}, [Problem(str(path), f"missing; data.group_column={column!r} needs a metadata.csv with 'id' and "
                                       f"{column!r} columns", site)]
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return {}, [Problem(str(path), f"cannot read ({type(exc).__name__}: {exc})", site)]
    needed = ["id"] + ([column] if column else [])
    missing = [c for c in needed if c not in header]
    if missing:
        severity: Literal["error", "warning"] = "error" if column else "warning"
        return {}, [Problem(str(path), f"missing column(s) {', '.join(repr(c) for c in missing)}; columns are: "
                                       f"{', '.join(header)}", site, severity)]
    return {row["id"]: {k: (v or "").strip() for k, v in row.items() if k is not None} for row in rows}, []


def _folder_dims(site_folder: Path) -> int | None:
    """3 when the first image file of ``<site_folder>/images`` is NIfTI, 2 for a 2D format, None without one."""
    folder = site_folder / "images"
    if not folder.is_dir():
        return None
    for p in sorted(folder.iterdir()):
        suffix = file_suffix(p)
        if suffix and not p.name.startswith("."):
            return 3 if suffix in NIFTI_SUFFIXES else 2
    return None


def infer_spatial_dims(root: Path, sites: list[str]) -> int | None:
    """3 when the first image file found is NIfTI, 2 when it is a 2D format, None when there is none."""
    for site in sites:
        dims = _folder_dims(root / site)
        if dims is not None:
            return dims
    return None


def infer_channels(root: Path, sites: list[str]) -> int:
    """Channels of the first case found: its ``_NNNN`` channel files (NIfTI: times the 4th axis), or
    3 for a colour 2D image, else 1. For checking a dataset that comes without a config."""
    for site in sites:
        folder = root / site / "images"
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.iterdir() if file_suffix(p) and not p.name.startswith("."))
        if not files:
            continue
        first = files[0]
        stem = file_stem(first)
        match = _CHANNEL.match(stem)
        own_mask = any((root / site / "masks" / f"{stem}{suffix}").exists() for suffix in SUFFIXES)
        group = [first]
        if match is not None and not own_mask:
            group = [p for p in files if (m := _CHANNEL.match(file_stem(p))) is not None and m["case"] == match["case"]]
        try:
            return int(read_image(group).array.shape[0])
        except DataError:
            return len(group)
    return 1


def _masks_optional(cfg: DataConfig, site: str) -> bool:
    """A box/image site labelled by files: its images without mask are training cases."""
    return cfg.weak_labels.source == "files" and cfg.supervision.get(site, "pixel") != "pixel"


def index_site(site_dir: Path, cfg: DataConfig, spatial_dims: int, site: str | None = None) -> tuple[
    SiteIndex, list[Problem]
]:
    """Pair the images and masks of one site folder and attach metadata.

    Args:
        site_dir: ``<root>/<site>`` (or the site spec's ``path``).
        cfg: dataset spec (``channels``, ``group_column``, the site's spec).
        spatial_dims: 2 or 3: the kind of the site's files; files of the other kind are problems.
        site: the site name (default: the folder name).

    Returns:
        The complete cases, and every problem found: no ``images/``/``masks/`` folder, an empty
        site, files of the wrong kind, duplicated stems, an image without mask (error, except at
        a files-mode weak site, where it is a case with ``mask=None``), a mask without image
        (warning), missing or extra channel files, metadata rows missing or empty.
    """
    site = site or site_dir.name
    optional = _masks_optional(cfg, site)
    spec = cfg.site_spec(site)
    chosen = list(spec.channels) if spec is not None and isinstance(spec.channels, list) else None
    several = cfg.channels > 1 or (chosen is not None and max(chosen) > 0)
    problems: list[Problem] = []
    images_dir, masks_dir = site_dir / "images", site_dir / "masks"
    if not images_dir.is_dir():
        variant = case_variant(site_dir, "images")
        fix = f" (found '{variant}/': the name must be lower case)" if variant else ""
        return SiteIndex(site, site_dir, []), [Problem(str(site_dir), f"no images/ folder{fix}", site)]
    images, found = _list(images_dir, site)
    problems += found
    masks: dict[str, Path] = {}
    if masks_dir.is_dir():
        masks, found = _list(masks_dir, site)
        problems += found
    elif not optional:
        variant = case_variant(site_dir, "masks")
        fix = f" (found '{variant}/': the name must be lower case)" if variant else ""
        problems.append(Problem(str(site_dir), f"no masks/ folder{fix}", site))
    if not images:
        problems.append(Problem(str(images_dir), "site folder has no images (empty site)", site))
        return SiteIndex(site, site_dir, []), problems
    wanted = NIFTI_SUFFIXES if spatial_dims == 3 else IMAGE_2D_SUFFIXES
    wrong = [p.name for p in list(images.values()) + list(masks.values()) if file_suffix(p) not in wanted]
    if wrong:
        kind = "NIfTI (3D)" if spatial_dims == 3 else "PNG/JPG/BMP (2D)"
        problems.append(Problem(str(site_dir), f"file(s) of another kind than the dataset's {kind}: {_shown(wrong)}",
                                site))
        images = {s: p for s, p in images.items() if file_suffix(p) in wanted}
        masks = {s: p for s, p in masks.items() if file_suffix(p) in wanted}

    # A stem with its own mask is a one-file case; "<case>_NNNN" is channel NNNN of <case> when <case>
    # has the mask (or, with no mask either way, when the dataset has several channels).
    channel_files: dict[str, dict[int, Path]] = {}
    for stem, path in images.items():
        match = _CHANNEL.match(stem)
        if stem in masks or match is None or (match["case"] not in masks and not several):
            channel_files.setdefault(stem, {})[-1] = path
        else:
            channel_files.setdefault(match["case"], {})[int(match["channel"])] = path
    cases: dict[str, tuple[Path, ...]] = {}
    for case, files in sorted(channel_files.items()):
        if -1 in files:
            if len(files) > 1:
                problems.append(Problem(str(files[-1]), f"case {case!r} has both a single image file and channel "
                                                        "files", site))
                continue
            cases[case] = (files[-1],)
            continue
        indices = sorted(files)
        expected = list(range(max(indices) + 1))
        if indices != expected:
            missing = [f"{case}_{i:04d}" for i in expected if i not in files]
            problems.append(Problem(str(images_dir), f"case {case!r}: channel file(s) {', '.join(missing)} missing "
                                                     f"(found {', '.join(files[i].name for i in indices)})", site))
            continue
        if chosen is not None:
            if len(indices) <= max(chosen):
                problems.append(Problem(str(files[0]), f"case {case!r} has {len(indices)} channel file(s), but "
                                                       f"{spec_key(site)}.channels selects {chosen}", site))
                continue
        elif len(indices) != cfg.channels:
            problems.append(Problem(str(files[0]), f"case {case!r} has {len(indices)} channel file(s), expected "
                                                   f"{cfg.channels} (data.channels)", site))
            continue
        cases[case] = tuple(files[i] for i in indices)

    no_mask = [] if optional else [c for c in cases if c not in masks]
    for case in no_mask:
        problems.append(Problem(str(cases[case][0]), f"image without mask: no mask {case}.* in {masks_dir}", site))
    if masks_dir.is_dir():
        orphans = sorted(s for s in masks if s not in cases and s not in channel_files)
        if orphans:
            problems.append(Problem(str(masks_dir), f"mask(s) without image: {_shown(orphans)}", site, "warning"))

    column = cfg.group_column_of(site)
    metadata, found = _read_metadata(site_dir, site, column)
    problems += found
    complete = [c for c in cases if c in masks or optional]
    if column and metadata:
        absent = [c for c in complete if c not in metadata]
        if absent:
            problems.append(Problem(str(site_dir / "metadata.csv"), f"no row with id {_shown(absent)} (column 'id' "
                                                                    "must hold the case id, the mask file stem)", site))
        empty = [c for c in complete if c in metadata and not metadata[c].get(column, "")]
        if empty:
            problems.append(Problem(str(site_dir / "metadata.csv"), f"empty {column!r} for id(s) {_shown(empty)}",
                                    site))
        complete = [c for c in complete if c in metadata and metadata[c].get(column, "")]
    elif column:
        complete = []  # metadata problem already reported
    result = []
    for case in complete:
        row = metadata.get(case, {})
        group = row[column] if column else case
        result.append(CaseFiles(site, case, cases[case], masks.get(case), group, row))
    return SiteIndex(site, site_dir, result), problems


def _site_kind(cfg: DataConfig, name: str, folder: Path, federation: int) -> tuple[
    int, int | None, Problem | None
]:
    """The kind of a site's files (2 or 3), its slice axis, or the problem that keeps it out."""
    spec = cfg.site_spec(name)
    key = spec_key(name)
    given: int | None = spec.spatial_dims if spec is not None else None
    if given is None:
        given = _folder_dims(folder)
    own = given or federation
    axis = slice_axis_of(cfg, name)
    if own == 3 and federation == 2:
        if axis is None:
            return own, None, Problem(str(folder), f"the site holds 3D volumes but the federation is 2D: set "
                                                   f"{key}.slice_axis (or data.slice_axis) to feed them as slices", name)
        if spec is not None and spec.channels == "grey":
            return own, None, Problem(str(folder), f"{key}.channels = grey (luminance of RGB) applies to 2D images, "
                                                   "not to volumes; select channel files instead (e.g. [0])", name)
        return own, axis, None
    if own == 2 and federation == 3:
        return own, None, Problem(str(folder), f"the site holds 2D images but the federation is 3D (data.spatial_dims"
                                               f"{' and ' + key + '.spatial_dims' if spec is not None else ''})", name)
    if spec is not None and spec.slice_axis is not None:
        return own, None, Problem(str(folder), f"{key}.slice_axis is set but the site's images are 2D", name)
    return own, None, None


def index_dataset(cfg: DataConfig) -> tuple[list[SiteIndex], int, list[Problem]]:
    """Index every site of ``cfg.root`` (or ``cfg.sites``).

    Returns:
        The site indexes, the spatial dimension (``cfg.spatial_dims`` or inferred from the first
        image file), and all problems.
    """
    if cfg.root is None:
        return [], 2, [Problem("data.root", "not set; source 'folder' needs <root>/<site>/{images,masks}/")]
    root = Path(cfg.root)
    if not root.is_dir():
        return [], 2, [Problem(f"data.root {root}", "not a directory")]
    elsewhere = cfg.sites is not None and all((s := cfg.site_spec(n)) is not None and s.path is not None
                                              for n in cfg.sites)
    # sites that all name their own folders use data.root as a base only: its other folders are no concern
    available, problems = ([], []) if elsewhere else scan_root(root, cfg.sites)
    names = list(cfg.sites) if cfg.sites is not None else available
    if not names:
        return [], 2, [*problems, Problem(f"data.root {root}", "no site folder with an images/ subfolder")]
    present = []
    for name in names:
        folder = site_dir(cfg, name)
        if not folder.is_dir():
            where = f"{spec_key(name)}.path" if folder != root / name else "data.sites"
            problems.append(Problem(where, f"{folder} is not a directory; sites under root: "
                                           f"{', '.join(available) or 'none'}", name))
        else:
            present.append(name)
    first = next((d for n in present if (d := _folder_dims(site_dir(cfg, n))) is not None), None)
    dims = cfg.spatial_dims or (2 if slicing_configured(cfg) else None) or first or 2
    sites = []
    for name in present:
        folder = site_dir(cfg, name)
        own, axis, problem = _site_kind(cfg, name, folder, dims)
        if problem is not None:
            problems.append(problem)
            continue
        index, found = index_site(folder, cfg, own, site=name)
        index.slice_axis = axis
        sites.append(index)
        problems += found
    return sites, dims, problems
