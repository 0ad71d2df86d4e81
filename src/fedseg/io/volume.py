"""Read and write images and masks: PNG/JPG/BMP through Pillow, NIfTI through nibabel.

The in-memory contract follows nnU-Net's reader/writer (*nnUNet: nnunetv2/imageio/
base_reader_writer.py*): an image is a channel-first array plus the spacing of its spatial
axes; a mask is the spatial array alone. Arrays keep the file's voxel order (no reorientation
here: :mod:`fedseg.data.preprocess` does it when asked), so a mask predicted on that grid can be
written back with the input's affine and header.

Every failure is a :class:`~fedseg.io.errors.DataError` whose message starts with the file path
and says what is wrong (unreadable, truncated, NaN/inf values, shape or affine mismatch between
the channel files of one case, ...).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as _nibabel
import numpy as np
from PIL import Image

from fedseg.io.atomic import atomic_open
from fedseg.io.errors import DataError

__all__ = [
    "Volume",
    "IMAGE_2D_SUFFIXES",
    "NIFTI_SUFFIXES",
    "SUFFIXES",
    "file_suffix",
    "file_stem",
    "is_nifti",
    "read_image",
    "read_mask",
    "write_mask",
    "AFFINE_ATOL",
]

IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
SUFFIXES = NIFTI_SUFFIXES + IMAGE_2D_SUFFIXES
AFFINE_ATOL = 1e-3
"""Largest difference (mm) between two affines that still counts as the same geometry."""

nib: Any = _nibabel  # nibabel's functions are untyped; one Any alias instead of an ignore per call
_MASK_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")
_MAX_LISTED = 10


@dataclass
class Volume:
    """An image or a mask and its geometry.

    Attributes:
        array: images ``(C, *spatial)`` float32; masks ``(*spatial)`` integer (the file's integer
            type; float-stored labels are checked to be whole numbers and cast to int32).
        spacing: mm per spatial axis, in the order of the array axes (PNG: 1.0 per pixel; the
            dataset's ``pixel_spacing`` replaces it in preprocessing).
        affine: 4x4 voxel-to-world matrix for NIfTI, ``None`` for 2D image files.
        paths: the file(s) read; several for a multi-channel case (``<case>_0000``, ``_0001``...).
        header: the nibabel header of the first file, so a mask can be written with the input's
            geometry (``None`` for 2D image files).
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray | None
    paths: tuple[Path, ...]
    header: Any = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the spatial axes (an image's channel axis left out)."""
        return tuple(int(n) for n in (self.array.shape[-len(self.spacing) :]))

    @property
    def spatial_dims(self) -> int:
        return len(self.spacing)


def file_suffix(path: Path | str) -> str:
    """The recognised suffix of ``path``, lower case (``.nii.gz`` counts as one), or ``""``."""
    name = Path(path).name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def file_stem(path: Path | str) -> str:
    """File name without its recognised suffix: ``case_0000.nii.gz`` -> ``case_0000``."""
    name = Path(path).name
    suffix = file_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else Path(name).stem


def is_nifti(path: Path | str) -> bool:
    return file_suffix(path) in NIFTI_SUFFIXES


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _gzip_damage(path: Path) -> str | None:
    """Why ``path`` is not a complete gzip stream, or ``None`` (not gzip, or intact)."""
    if not path.name.lower().endswith(".gz"):
        return None
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except EOFError:
        return "the gzip stream ends early"
    except (OSError, zlib.error) as exc:
        return f"corrupt gzip stream ({_describe(exc)})"
    return None


def _nifti_problem(path: Path, exc: BaseException) -> DataError:
    """Name truncation explicitly: it is the usual failure of a half-copied ``.nii.gz``."""
    text = str(exc).lower()
    damage = _gzip_damage(path)
    truncated = damage is not None or isinstance(exc, EOFError) or any(
        key in text for key in ("end-of-stream", "truncated", "expected", "compressed file ended", "incomplete")
    )
    kind = "truncated or incomplete NIfTI file" if truncated else "unreadable NIfTI file"
    detail = f"{damage}; {_describe(exc)}" if damage and damage not in _describe(exc) else _describe(exc)
    return DataError.at(path, f"{kind} ({detail})")


def _load_nifti(path: Path) -> Any:
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for broken files
        raise _nifti_problem(path, exc) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError.at(path, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    return img


def _nifti_spacing(img: Any, dims: int) -> tuple[float, ...]:
    zooms = tuple(float(z) for z in img.header.get_zooms()[:dims])
    if len(zooms) < dims or min(zooms) <= 0 or not all(np.isfinite(zooms)):
        raise DataError.at(img.get_filename(), f"invalid voxel spacing {zooms} in the header (pixdim)")
    return zooms


def _check_finite(path: Path, arr: np.ndarray) -> None:
    if arr.dtype.kind != "f":
        return
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(arr.size - finite.sum()) - n_nan
        raise DataError.at(path, f"{n_nan} NaN and {n_inf} inf value(s) out of {arr.size}")


def _read_nifti_image(path: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray, Any]:
    """``(C, *spatial)`` float32: a 3D file is one channel, a 4D file (X, Y, Z, C) is C channels."""
    img = _load_nifti(path)
    try:
        arr = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:
        raise _nifti_problem(path, exc) from None
    while arr.ndim > 4 and arr.shape[3] == 1:  # NIfTI vector images are (X, Y, Z, 1, C)
        arr = arr[:, :, :, 0]
    if arr.ndim == 2:
        spatial, arr = 2, arr[None]
    elif arr.ndim == 3:
        spatial, arr = 3, arr[None]
    elif arr.ndim == 4:
        spatial, arr = 3, np.moveaxis(arr, -1, 0)
    else:
        raise DataError.at(path, f"{arr.ndim}-D NIfTI array of shape {arr.shape}; expected 2-D, 3-D or 4-D (X, Y, Z, C)")
    _check_finite(path, arr)
    return np.ascontiguousarray(arr, dtype=np.float32), _nifti_spacing(img, spatial), np.asarray(img.affine), img.header


def _read_2d_image(path: Path, channels: int | None) -> np.ndarray:
    """``(C, H, W)`` float32 from a PNG/JPG/BMP: grey -> 1 channel, colour -> 3 (alpha dropped)."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I", "I;16", "I;16B", "I;16L", "F") and channels in (None, 1):
                arr = np.asarray(im, dtype=np.float32)[None]
            else:
                if channels is None:
                    grey = mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
                    if mode == "P":
                        rgb = np.asarray(im.convert("RGB"))
                        grey = bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))
                    target = "L" if grey else "RGB"
                elif channels == 1:
                    target = "L"
                elif channels == 3:
                    target = "RGB"
                else:
                    raise DataError.at(path, f"a 2D image file gives 1 (grey) or 3 (RGB) channels, not {channels}")
                conv = np.asarray(im.convert(target), dtype=np.float32)
                arr = conv[None] if conv.ndim == 2 else np.moveaxis(conv, -1, 0)
    except DataError:
        raise
    except Exception as exc:  # PIL raises many types for broken files
        raise DataError.at(path, f"unreadable image ({_describe(exc)})") from None
    _check_finite(path, arr)
    return np.ascontiguousarray(arr, dtype=np.float32)


def read_image(paths: Path | str | Sequence[Path | str], channels: int | None = None) -> Volume:
    """Read one case's image; several files are its channels, in the order given.

    Args:
        paths: one file or the channel files of one case (``<case>_0000.nii.gz``,
            ``<case>_0001.nii.gz``, ...). NIfTI (``.nii``, ``.nii.gz``) through nibabel (3-D file:
            one channel; 4-D ``(X, Y, Z, C)``: C channels; scaling slope/intercept applied) or
            PNG/JPG/BMP through Pillow.
        channels: expected number of channels. For a single 2D file it converts (1: grey,
            3: RGB; ``None`` keeps grey as 1 and colour as 3, dropping alpha); for NIfTI or several
            files the count read must equal it.

    Returns:
        ``array`` ``(C, *spatial)`` float32, spacing in mm (1.0 per pixel for 2D files), the
        affine and header of the first NIfTI file.

    Raises:
        DataError: unreadable or truncated file, NaN/inf values, channel files that disagree in
            shape or affine, or a channel count other than ``channels``.
    """
    items = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not items:
        raise DataError("read_image: no file given")
    suffixes = {is_nifti(p) for p in items}
    if len(suffixes) > 1:
        raise DataError.at(items[0], f"channel files mix NIfTI and 2D formats: {', '.join(p.name for p in items)}")
    if not suffixes.pop():
        per_file = channels if len(items) == 1 else 1
        arrays = [_read_2d_image(p, per_file) for p in items]
        first = arrays[0].shape[1:]
        for p, a in zip(items[1:], arrays[1:]):
            if a.shape[1:] != first:
                raise DataError.at(p, f"channel file is {a.shape[2]}x{a.shape[1]} (WxH) but {items[0].name} is "
                                f"{first[1]}x{first[0]}")
        array = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        volume = Volume(array=array, spacing=(1.0,) * array[0].ndim, affine=None, paths=tuple(items))
    else:
        parts = [_read_nifti_image(p) for p in items]
        arr0, spacing, affine, header = parts[0]
        for p, (arr, _, aff, _) in zip(items[1:], parts[1:]):
            if arr.shape[1:] != arr0.shape[1:]:
                raise DataError.at(p, f"channel file has shape {arr.shape[1:]} but {items[0].name} has {arr0.shape[1:]}")
            if not np.allclose(aff, affine, atol=AFFINE_ATOL):
                raise DataError.at(p, f"affine differs from {items[0].name} (channel files of one case must share "
                                f"the voxel grid)\n{np.round(aff, 4)}\nvs\n{np.round(affine, 4)}")
        array = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else arr0
        volume = Volume(array=array, spacing=spacing, affine=affine, paths=tuple(items), header=header)
    if channels is not None and volume.array.shape[0] != channels:
        raise DataError.at(items[0], f"{volume.array.shape[0]} channel(s) read from {len(items)} file(s), expected "
                        f"{channels} (data.channels)")
    return volume


def _as_labels(path: Path, arr: np.ndarray) -> np.ndarray:
    """Integer labels from an integer or whole-valued float array."""
    if arr.dtype.kind in "iu":
        return arr
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind != "f":
        raise DataError.at(path, f"mask of dtype {arr.dtype}; expected integer class indices")
    _check_finite(path, arr)
    rounded: np.ndarray = np.rint(arr)
    bad = np.abs(arr - rounded) > 1e-3
    if bad.any():
        shown = ", ".join(f"{v:g}" for v in np.unique(arr[bad])[:_MAX_LISTED])
        raise DataError.at(path, f"mask holds non-integer values ({shown}); expected class indices")
    return rounded.astype(np.int32)


def _read_2d_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as mk:
            mk.load()
            if mk.mode in _MASK_MODES:
                arr = np.asarray(mk)
            elif mk.mode == "1":
                arr = np.asarray(mk.convert("L")) > 0
            elif mk.mode in ("RGB", "RGBA", "LA"):
                colour = np.asarray(mk)
                bands = colour.shape[2] - (1 if mk.mode in ("RGBA", "LA") else 0)
                if bands > 1 and not all(np.array_equal(colour[..., 0], colour[..., b]) for b in range(1, bands)):
                    raise DataError.at(path, f"colour mask (mode {mk.mode}) with differing channels; masks must hold "
                                    "class indices in a single channel")
                arr = colour[..., 0]
            else:
                arr = np.asarray(mk.convert("L"))
    except DataError:
        raise
    except Exception as exc:
        raise DataError.at(path, f"unreadable mask ({_describe(exc)})") from None
    return np.ascontiguousarray(_as_labels(path, np.asarray(arr)))


def read_mask(path: Path | str) -> Volume:
    """Read a label map (pixel/voxel value = label value in the file).

    Args:
        path: a NIfTI file (3-D, or 4-D with a trailing axis of length 1) or a single-channel
            PNG/BMP (a colour PNG is accepted when its channels are equal).

    Returns:
        ``array`` ``(*spatial)`` integer, spacing, affine and header as for :func:`read_image`.

    Raises:
        DataError: unreadable or truncated file, NaN/inf or non-integer values, a colour mask.
    """
    path = Path(path)
    if not is_nifti(path):
        arr = _read_2d_mask(path)
        return Volume(array=arr, spacing=(1.0,) * arr.ndim, affine=None, paths=(path,))
    img = _load_nifti(path)
    try:
        raw = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise _nifti_problem(path, exc) from None
    while raw.ndim > 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim not in (2, 3):
        raise DataError.at(path, f"mask array of shape {raw.shape}; expected 2-D or 3-D (one label per voxel)")
    arr = np.ascontiguousarray(_as_labels(path, np.asarray(raw)))
    return Volume(array=arr, spacing=_nifti_spacing(img, arr.ndim), affine=np.asarray(img.affine), paths=(path,),
                  header=img.header)


def _label_dtype(mask: np.ndarray) -> type[np.integer[Any]]:
    lo, hi = (int(mask.min()), int(mask.max())) if mask.size else (0, 0)
    if lo >= 0 and hi <= 255:
        return np.uint8
    if lo >= -(2**15) and hi < 2**15:
        return np.int16
    return np.int32


def write_mask(path: Path | str, mask: np.ndarray, like: Volume) -> None:
    """Write a label map on ``like``'s voxel grid, atomically (temporary file + rename).

    Args:
        path: ``.nii``/``.nii.gz`` (written with ``like``'s affine and header, integer dtype:
            uint8 when the labels fit, else int16/int32, no intensity scaling) or ``.png``/``.bmp``
            (8-bit grey, labels must lie in [0, 255]).
        mask: ``(*spatial)`` integer labels, the spatial shape of ``like``.
        like: the image or mask read from the input (its geometry is kept).

    Raises:
        DataError: shape differs from ``like``, non-integer labels, labels that do not fit the
            format, or a lossy format (JPEG) asked for.
    """
    path = Path(path)
    mask = np.asarray(mask)
    if mask.dtype.kind == "f":
        mask = _as_labels(path, mask)
    if mask.dtype.kind not in "iub":
        raise DataError.at(path, f"mask of dtype {mask.dtype}; expected integer labels")
    if tuple(mask.shape) != like.spatial_shape:
        raise DataError.at(path, f"mask shape {tuple(mask.shape)} differs from the input's spatial shape "
                        f"{like.spatial_shape} ({like.paths[0] if like.paths else 'input'})")
    suffix = file_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image: Any
    if suffix in NIFTI_SUFFIXES:
        dtype = _label_dtype(mask)
        affine = like.affine if like.affine is not None else np.diag([*like.spacing, *([1.0] * (4 - like.spatial_dims))])
        header = like.header.copy() if isinstance(like.header, nib.Nifti1Header) else None
        image = nib.Nifti1Image(mask.astype(dtype), affine, header=header)
        image.set_data_dtype(dtype)
        image.header.set_slope_inter(1.0, 0.0)
        image.header.set_intent("label")
    elif suffix in (".png", ".bmp"):
        if mask.ndim != 2:
            raise DataError.at(path, f"a {suffix} mask must be 2-D, got shape {mask.shape}")
        if mask.size and (int(mask.min()) < 0 or int(mask.max()) > 255):
            raise DataError.at(path, f"labels {int(mask.min())}..{int(mask.max())} do not fit an 8-bit {suffix}; "
                            "write NIfTI instead")
        image = Image.fromarray(mask.astype(np.uint8), mode="L")
    else:
        raise DataError.at(path, f"cannot write a mask as {suffix or path.suffix or 'no suffix'!r}; use .nii.gz, .nii "
                        "or .png (JPEG is lossy and would change labels)")
    with atomic_open(path) as fh:
        if suffix in NIFTI_SUFFIXES:
            # nibabel picks the format from a file name; serialise in memory instead (gzip with a
            # fixed mtime, so the same mask gives the same bytes)
            raw = image.to_bytes()
            fh.write(gzip.compress(raw, compresslevel=6, mtime=0) if suffix == ".nii.gz" else raw)
        else:
            image.save(fh, format="PNG" if suffix == ".png" else "BMP")
