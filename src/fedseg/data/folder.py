"""Reader for real 2D multi-site folders: ``<root>/<site>/{images,masks}/``.

Layout (see ``shared/data/README.md``): every site folder holds ``images/`` and ``masks/``
with PNG, JPG or BMP files; an image and its mask share the file stem, and mask pixel value
= class index. An optional ``metadata.csv`` per site has an ``id`` column (the file stem)
and columns such as a patient or video id, which :attr:`DataConfig.group_column` names so
that all images of one group land in the same split.

Every problem of a site (missing mask, unreadable file, size mismatch, bad labels, missing
metadata) is collected and reported together in one :class:`DataError`.
"""

from __future__ import annotations

import csv
import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fedseg.config import DataConfig, SplitConfig
from fedseg.data.base import DataError, FederatedData, SegmentationSet, SiteData

__all__ = [
    "IMAGE_SUFFIXES",
    "split_counts",
    "split_groups",
    "discover_sites",
    "load_site_folder",
    "load_folder_federation",
    "folder_label_names",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_MAX_LISTED = 10


def split_counts(n: int, split: SplitConfig) -> tuple[int, int, int]:
    """Numbers of train/val/test items (cases or groups) for ``n`` items.

    Fractions are rounded; train always gets at least 1 item, and val/test get at least 1
    when their fraction is > 0 and ``n >= 3``.

    Args:
        n: number of items, >= 0.
        split: the fractions.

    Returns:
        ``(n_train, n_val, n_test)`` summing to ``n``.
    """
    if n <= 0:
        return 0, 0, 0
    n_val = int(round(n * split.val))
    n_test = int(round(n * split.test))
    if n >= 3:
        if split.val > 0:
            n_val = max(1, n_val)
        if split.test > 0:
            n_test = max(1, n_test)
    while n - n_val - n_test < 1:
        floor_val = 1 if (n >= 3 and split.val > 0) else 0
        floor_test = 1 if (n >= 3 and split.test > 0) else 0
        if n_test - floor_test >= n_val - floor_val and n_test > floor_test:
            n_test -= 1
        elif n_val > floor_val:
            n_val -= 1
        elif n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def split_groups(
    groups: Sequence[str], split: SplitConfig, seed: int, site: str
) -> tuple[set[str], set[str], set[str]]:
    """Deterministically assign unique group values to train/val/test.

    The sorted unique groups are shuffled by ``numpy.random.default_rng`` seeded with
    ``seed`` and ``zlib.crc32(site)`` (stable across processes, unlike ``hash``).

    Args:
        groups: group value of every item (duplicates allowed).
        split: the fractions, applied to the number of unique groups.
        seed: run seed.
        site: site name, so that sites get different shuffles.

    Returns:
        The train, val and test group sets (disjoint).
    """
    unique = sorted(set(groups))
    rng = np.random.default_rng([int(seed) & ((1 << 63) - 1), zlib.crc32(site.encode("utf-8"))])
    order = [unique[i] for i in rng.permutation(len(unique))]
    n_train, n_val, _ = split_counts(len(unique), split)
    return set(order[:n_train]), set(order[n_train : n_train + n_val]), set(order[n_train + n_val :])


def discover_sites(root: Path) -> list[str]:
    """Every subdirectory of ``root`` that has an ``images/`` folder, sorted by name."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "images").is_dir())


def folder_label_names(num_classes: int) -> list[str]:
    """Default label names: ``background, foreground`` or ``background, class1, ...``."""
    if num_classes == 2:
        return ["background", "foreground"]
    return ["background"] + [f"class{k}" for k in range(1, num_classes)]


@dataclass
class _Decoded:
    image: np.ndarray | None = None  # (C, H, W) float32, z-scored
    mask: np.ndarray | None = None  # (H, W) int64
    size: tuple[int, int] | None = None  # original (H, W)
    problem: str | None = None


def _list_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Map stem -> file for the image files in ``folder``; report duplicated stems."""
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(p.stem, []).append(p)
    problems = [
        f"{folder}: several files share the stem {stem!r}: {', '.join(f.name for f in files)}"
        for stem, files in found.items()
        if len(files) > 1
    ]
    return {stem: files[0] for stem, files in found.items()}, problems


def _decode(
    image_path: Path, mask_path: Path, channels: int, num_classes: int, image_size: tuple[int, int] | None
) -> _Decoded:
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(image_path) as im:
            img = im.convert(mode)
    except Exception as exc:  # PIL raises many types for broken files
        return _Decoded(problem=f"{image_path}: unreadable image ({type(exc).__name__}: {exc})")
    try:
        with Image.open(mask_path) as mk:
            mk.load()
            if mk.mode in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L"):
                mask_img = mk.copy() if mk.mode != "1" else mk.convert("L").point(lambda v: 1 if v else 0)
            elif mk.mode in ("RGB", "RGBA", "LA"):
                arr = np.asarray(mk)
                bands = arr.shape[2] - (1 if mk.mode in ("RGBA", "LA") else 0)
                if bands > 1 and not all(np.array_equal(arr[..., 0], arr[..., b]) for b in range(1, bands)):
                    return _Decoded(
                        problem=f"{mask_path}: colour mask (mode {mk.mode}) with differing channels; "
                        f"masks must hold class indices in a single channel"
                    )
                mask_img = Image.fromarray(np.ascontiguousarray(arr[..., 0]))
            else:
                mask_img = mk.convert("L")
    except Exception as exc:
        return _Decoded(problem=f"{mask_path}: unreadable mask ({type(exc).__name__}: {exc})")
    size = (img.height, img.width)
    if (mask_img.height, mask_img.width) != size:
        return _Decoded(
            problem=f"size mismatch: image {image_path} is {img.width}x{img.height} (WxH) but mask "
            f"{mask_path} is {mask_img.width}x{mask_img.height}"
        )
    mask = np.asarray(mask_img).astype(np.int64)
    bad = np.unique(mask[(mask >= num_classes) | (mask < 0)])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:_MAX_LISTED]) + (" ..." if bad.size > _MAX_LISTED else "")
        return _Decoded(
            problem=f"{mask_path}: mask values {shown} are not class indices in [0, {num_classes}) "
            f"(data.num_classes={num_classes})"
        )
    if image_size is not None:
        h, w = image_size
        if (h, w) != size:
            img = img.resize((w, h), Image.Resampling.BILINEAR)
            resized = Image.fromarray(mask.astype(np.int32)).resize((w, h), Image.Resampling.NEAREST)
            mask = np.asarray(resized).astype(np.int64)
    arr = np.asarray(img, dtype=np.float32)
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    arr = (arr - arr.mean()) / max(float(arr.std()), 1e-6)
    return _Decoded(image=np.ascontiguousarray(arr, dtype=np.float32), mask=mask, size=size)


def _read_groups(site_dir: Path, column: str, stems: list[str]) -> tuple[dict[str, str], list[str]]:
    """Group value per stem from ``metadata.csv``; problems instead of exceptions."""
    path = site_dir / "metadata.csv"
    if not path.is_file():
        return {}, [
            f"{path}: missing; data.group_column={column!r} needs a metadata.csv with 'id' and {column!r} columns"
        ]
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return {}, [f"{path}: cannot read ({type(exc).__name__}: {exc})"]
    missing_cols = [c for c in ("id", column) if c not in header]
    if missing_cols:
        return {}, [
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing_cols)}; "
            f"columns are: {', '.join(header)}"
        ]
    table: dict[str, str] = {}
    empty: list[str] = []
    for row in rows:
        value = (row.get(column) or "").strip()
        if not value:
            empty.append(row["id"])
        table[row["id"]] = value
    problems = []
    absent = [s for s in stems if s not in table]
    if absent:
        shown = ", ".join(absent[:_MAX_LISTED])
        if len(absent) > _MAX_LISTED:
            shown += f" ... ({len(absent)} in all)"
        problems.append(f"{path}: no row with id {shown} (column 'id' must hold the image file stem)")
    empty_used = [s for s in empty if s in set(stems)]
    if empty_used:
        problems.append(f"{path}: empty {column!r} for id(s) {', '.join(empty_used[:_MAX_LISTED])}")
    return {s: table[s] for s in stems if s in table}, problems


def _check_sizes(cfg: DataConfig) -> tuple[tuple[int, int] | None, tuple[float, float]]:
    image_size = None
    if cfg.image_size is not None:
        if len(cfg.image_size) != 2 or min(cfg.image_size) < 1:
            raise DataError(f"data.image_size must be [H, W] with positive ints, got {cfg.image_size}")
        image_size = (int(cfg.image_size[0]), int(cfg.image_size[1]))
    spacing = (1.0, 1.0)
    if cfg.pixel_spacing is not None:
        if len(cfg.pixel_spacing) != 2 or min(cfg.pixel_spacing) <= 0:
            raise DataError(f"data.pixel_spacing must be [dy, dx] in mm (> 0), got {cfg.pixel_spacing}")
        spacing = (float(cfg.pixel_spacing[0]), float(cfg.pixel_spacing[1]))
    return image_size, spacing


def _resized_spacing(
    spacing: tuple[float, float], original: tuple[int, int], shape: tuple[int, ...]
) -> tuple[float, float]:
    """Spacing of the resized pixels: a file of ``original`` (H, W) resized to ``shape``."""
    if tuple(original) == tuple(shape):
        return spacing
    return (spacing[0] * original[0] / shape[0], spacing[1] * original[1] / shape[1])


def _make_set(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    ids: list[str],
    spacings: list[tuple[float, float]],
    channels: int,
    shape: tuple[int, ...],
) -> SegmentationSet:
    n = len(ids)
    if n:
        img = torch.from_numpy(np.stack(images))
        msk = torch.from_numpy(np.stack(masks)[:, None])
    else:
        img = torch.zeros((0, channels) + shape, dtype=torch.float32)
        msk = torch.zeros((0, 1) + shape, dtype=torch.int64)
    return SegmentationSet(
        images=img,
        masks=msk,
        spacing=torch.tensor(spacings, dtype=torch.float64).reshape(n, 2),
        ids=list(ids),
    )


def load_site_folder(site_dir: Path, cfg: DataConfig, seed: int, all_to_test: bool = False) -> SiteData:
    """Read one site folder ``<site_dir>/{images,masks}/`` into memory and split it.

    Images are converted to grey (``channels=1``) or RGB (``channels=3``), resized to
    ``cfg.image_size`` (bilinear; masks nearest) and z-scored per image. The split is by
    ``cfg.group_column`` of ``metadata.csv`` when set (no group in two splits), otherwise by
    image, deterministic in ``seed`` and the site name. ``cfg.pixel_spacing`` (default 1.0) is
    the spacing of the *file's* pixels; the returned spacing is rescaled by the resize factor, so
    HD95 stays in mm of the original image (in original pixels when no spacing is known).

    Args:
        site_dir: the site folder; its name becomes the site name.
        cfg: data section of the config (channels, image_size, num_classes, group_column,
            pixel_spacing, split).
        seed: run seed for the split.
        all_to_test: put every image into ``test`` (evaluate a model on a whole, possibly
            unseen, site); train and val are then empty.

    Returns:
        The site with images ``(N, C, H, W)`` float32, masks ``(N, 1, H, W)`` int64 and
        spacing ``(N, 2)`` float64 per split; ids are file stems, sorted within a split.

    Raises:
        DataError: listing every problem found in the site (missing folder or mask, no
            images, unreadable files, image/mask size mismatch, mask values outside
            ``[0, num_classes)``, unequal sizes without ``image_size``, metadata problems).
    """
    site_dir = Path(site_dir)
    image_size, spacing = _check_sizes(cfg)
    images_dir, masks_dir = site_dir / "images", site_dir / "masks"
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: not a directory; a site folder needs images/ and masks/")
    image_files, problems = _list_files(images_dir)
    if not image_files:
        problems.append(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)}); the site is empty")
    mask_files: dict[str, Path] = {}
    if masks_dir.is_dir():
        mask_files, mask_problems = _list_files(masks_dir)
        problems += mask_problems
    elif image_files:
        problems.append(f"{masks_dir}: not a directory; every image needs a mask of the same stem there")
    stems = sorted(image_files)
    if masks_dir.is_dir():
        for s in stems:
            if s not in mask_files:
                problems.append(f"{image_files[s]}: no mask with stem {s!r} in {masks_dir}")
    pairs = [s for s in stems if s in mask_files]

    groups: dict[str, str] = {s: s for s in stems}
    if cfg.group_column is not None and stems:
        groups, group_problems = _read_groups(site_dir, cfg.group_column, stems)
        problems += group_problems

    def decode(stem: str) -> _Decoded:
        return _decode(image_files[stem], mask_files[stem], cfg.channels, cfg.num_classes, image_size)

    # PIL releases the GIL while decoding, so threads help where there are spare cores.
    workers = min(8, os.cpu_count() or 1, max(1, len(pairs)))
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            decoded = list(pool.map(decode, pairs))
    else:
        decoded = [decode(s) for s in pairs]
    problems += [d.problem for d in decoded if d.problem is not None]
    good = [(s, d) for s, d in zip(pairs, decoded) if d.problem is None]

    if image_size is None and good:
        by_size: dict[tuple[int, ...], list[str]] = {}
        for s, d in good:
            by_size.setdefault(d.image.shape[1:], []).append(image_files[s].name)  # type: ignore[union-attr]
        if len(by_size) > 1:
            detail = "; ".join(
                f"{w}x{h} (WxH): {', '.join(names[:3])}{' ...' if len(names) > 3 else ''} ({len(names)} files)"
                for (h, w), names in sorted(by_size.items(), key=lambda kv: -len(kv[1]))
            )
            problems.append(f"{images_dir}: images differ in size and data.image_size is not set: {detail}")

    if problems:
        listed = "\n  - ".join(problems)
        raise DataError(f"site folder {site_dir}: {len(problems)} problem(s):\n  - {listed}")

    shape = good[0][1].image.shape[1:]  # type: ignore[union-attr]
    name = site_dir.name
    if all_to_test:
        parts: tuple[set[str], set[str], set[str]] = (set(), set(), set(groups.values()))
    else:
        parts = split_groups([groups[s] for s, _ in good], cfg.split, seed, name)
    sets = []
    for part in parts:
        chosen = [(s, d) for s, d in good if groups[s] in part]
        sets.append(
            _make_set(
                [d.image for _, d in chosen],  # type: ignore[misc]
                [d.mask for _, d in chosen],  # type: ignore[misc]
                [s for s, _ in chosen],
                [_resized_spacing(spacing, d.size, shape) for _, d in chosen],  # type: ignore[arg-type]
                cfg.channels,
                shape,
            )
        )
    return SiteData(name=name, train=sets[0], val=sets[1], test=sets[2])


def load_folder_federation(cfg: DataConfig, seed: int) -> FederatedData:
    """Read every site of ``cfg.root`` (or ``cfg.sites``) into a :class:`FederatedData`.

    Args:
        cfg: data section with ``source='folder'``; ``sites`` None means every
            subdirectory of ``root`` with an ``images/`` folder, sorted.
        seed: run seed for the splits.

    Returns:
        2D federated data with ``cfg.channels`` input channels and ``cfg.num_classes`` classes.

    Raises:
        DataError: root missing, no site found, or the problems of all sites together.
    """
    if cfg.root is None:
        raise DataError("data.root is not set; source 'folder' needs <root>/<site>/{images,masks}/")
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"data.root {root}: not a directory")
    names = list(cfg.sites) if cfg.sites is not None else discover_sites(root)
    if not names:
        raise DataError(f"data.root {root}: no site folder with an images/ subfolder")
    sites, errors = [], []
    for name in names:
        site_dir = root / name
        if not site_dir.is_dir():
            available = ", ".join(discover_sites(root)) or "none"
            errors.append(f"data.sites: {site_dir} is not a directory; sites under root: {available}")
            continue
        try:
            sites.append(load_site_folder(site_dir, cfg, seed))
        except DataError as exc:
            errors.append(str(exc))
    if errors:
        raise DataError("\n".join(errors))
    shapes = {tuple(s.train.images.shape[1:]) for s in sites}
    if len(shapes) > 1:
        raise DataError(
            f"data.root {root}: sites have different image shapes {sorted(shapes)}; set data.image_size"
        )
    return FederatedData(
        sites=sites,
        spatial_dims=2,
        in_channels=cfg.channels,
        num_classes=cfg.num_classes,
        label_names=folder_label_names(cfg.num_classes),
    )
