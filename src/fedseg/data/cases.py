"""Per-case access to one split: stacked in-memory tensors, or one array (or ``.npy`` file) per case.

A :class:`~fedseg.data.base.SegmentationSet` reads its cases through a :class:`CaseStore`:

* :class:`TensorCases`: ``(N, C, *spatial)`` images and ``(N, 1, *spatial)`` masks stacked in
  memory (synthetic data, tests, data built in code). The engine's fast paths index these directly.
* :class:`ListCases`: one entry per case, each a numpy array or the path of a ``.npy`` file of the
  preprocessed-case cache (:mod:`fedseg.data.cache`), opened memory-mapped on access and closed
  again, so only the cases in use are in memory and cases may differ in shape. It holds only paths
  and shapes, so it pickles cheaply into ``DataLoader`` workers.

Images are returned as float32 ``(C, *spatial)`` and masks as int64 ``(1, *spatial)`` tensors in
both, whatever the stored dtype (masks are stored as uint8 on disk).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fedseg.io.errors import DataError

__all__ = ["CaseStore", "TensorCases", "ListCases", "CaseSource", "padded_shape", "centre_pads"]

CaseSource = np.ndarray | Path
"""One stored array: in memory, or a ``.npy`` file read memory-mapped."""


def padded_shape(shape: Sequence[int], size: Sequence[int] | None) -> tuple[int, ...]:
    """``shape`` grown to at least ``size`` along every axis (``size`` None: unchanged)."""
    if size is None:
        return tuple(int(s) for s in shape)
    return tuple(max(int(s), int(p)) for s, p in zip(shape, size, strict=True))


def centre_pads(shape: Sequence[int], size: Sequence[int]) -> list[int]:
    """Per axis, the padding before ``shape`` so that it is centred in ``padded_shape(shape, size)``
    (:func:`fedseg.data.patches.pad_to_size` puts ``missing // 2`` before)."""
    return [max(int(p) - int(s), 0) // 2 for s, p in zip(shape, size, strict=True)]


class CaseStore(ABC):
    """The cases of one split, read one at a time."""

    @abstractmethod
    def __len__(self) -> int: ...

    @property
    @abstractmethod
    def in_memory(self) -> bool:
        """Whether the split is stacked tensors (the engine's fast in-memory paths apply)."""

    @property
    @abstractmethod
    def has_masks(self) -> bool:
        """Whether the cases carry pixel masks."""

    @property
    @abstractmethod
    def channels(self) -> int:
        """Image channels ``C``."""

    @abstractmethod
    def shape_of(self, i: int) -> tuple[int, ...]:
        """Spatial shape of case ``i``, without reading its arrays."""

    @abstractmethod
    def case(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Case ``i``: ``(C, *spatial)`` float32 image and ``(1, *spatial)`` int64 mask (or None)."""

    @abstractmethod
    def stacked_images(self) -> torch.Tensor:
        """All images ``(N, C, *spatial)`` (stacked on demand when not in memory)."""

    @abstractmethod
    def stacked_masks(self) -> torch.Tensor | None:
        """All masks ``(N, 1, *spatial)`` int64, or None."""

    @abstractmethod
    def without_masks(self) -> CaseStore:
        """The same images without masks (a weakly-supervised training split)."""

    def mask(self, i: int) -> torch.Tensor | None:
        """The ``(1, *spatial)`` int64 mask of case ``i`` alone (or None)."""
        return self.case(i)[1]

    def shapes(self) -> list[tuple[int, ...]]:
        """Spatial shape of every case."""
        return [self.shape_of(i) for i in range(len(self))]

    def patch(self, i: int, start: Sequence[int], size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The patch ``[start, start + size)`` of case ``i`` after centred zero padding to ``size``.

        Equal to cropping :func:`fedseg.data.patches.pad_to_size` of the case; an unpadded case is
        cropped without reading the rest of it when the store allows.
        """
        image, mask = self.case(i)
        return _crop_padded(image, start, size), None if mask is None else _crop_padded(mask, start, size)

    def with_masks(self, masks: torch.Tensor | None) -> CaseStore:
        """The same images with ``masks`` (None: without masks)."""
        if masks is None:
            return self.without_masks()
        return TensorCases(self.stacked_images(), masks)


def _crop_padded(volume: torch.Tensor, start: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """``(C, *patch)`` crop of ``volume`` ``(C, *spatial)`` padded (centred, zeros) to ``size``."""
    spatial = volume.shape[1:]
    pads: list[int] = []
    for have, want in zip(reversed(spatial), reversed(list(size)), strict=True):
        missing = max(int(want) - int(have), 0)
        pads += [missing // 2, missing - missing // 2]
    if any(pads):
        volume = torch.nn.functional.pad(volume, pads, mode="constant", value=0)
    index: list[slice] = [slice(None)] + [slice(int(s), int(s) + int(p)) for s, p in zip(start, size, strict=True)]
    return volume[tuple(index)].clone()


class TensorCases(CaseStore):
    """Stacked in-memory tensors: ``images`` ``(N, C, *spatial)``, ``masks`` ``(N, 1, *spatial)`` or None."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor | None) -> None:
        self.images = images
        self.masks = masks

    def __repr__(self) -> str:
        masks = None if self.masks is None else tuple(self.masks.shape)
        return f"TensorCases(images={tuple(self.images.shape)}, masks={masks})"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def in_memory(self) -> bool:
        return True

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def shape_of(self, i: int) -> tuple[int, ...]:
        return tuple(int(s) for s in self.images.shape[2:])

    def case(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.images[i], None if self.masks is None else self.masks[i]

    def stacked_images(self) -> torch.Tensor:
        return self.images

    def stacked_masks(self) -> torch.Tensor | None:
        return self.masks

    def without_masks(self) -> CaseStore:
        return TensorCases(self.images, None)

    def with_masks(self, masks: torch.Tensor | None) -> CaseStore:
        return TensorCases(self.images, masks)


_DESCR = re.compile(r"'descr':\s*'([<>|=]?[a-zA-Z]\d+)'")
_SHAPE = re.compile(r"'shape':\s*\(([\d,\s]*)\)")
_HEAD_BYTES = 4096
"""Bytes read to find a ``.npy`` header (numpy pads it to a multiple of 64; ours are ~128)."""


def _unreadable(source: Path, exc: Exception) -> DataError:
    return DataError(f"cached case file {source} is unreadable ({exc}); delete the cache folder "
                     "(data.cache_dir, make clean) and load again")


def _header(raw: bytes | bytearray) -> tuple[np.dtype, tuple[int, ...], int] | None:
    """``(dtype, shape, data offset)`` of a plain version-1 C-order ``.npy`` file from its first
    bytes, or None (another version, Fortran order, a header not in ``raw``: numpy reads it)."""
    if raw[:8] != b"\x93NUMPY\x01\x00" or len(raw) < 10:
        return None
    end = 10 + int.from_bytes(raw[8:10], "little")
    if len(raw) < end:
        return None
    header = raw[10:end].decode("latin1")
    descr, shape = _DESCR.search(header), _SHAPE.search(header)
    if descr is None or shape is None or "'fortran_order': False" not in header:
        return None
    return np.dtype(descr.group(1)), tuple(int(n) for n in shape.group(1).split(",") if n.strip()), end


def _open(source: CaseSource) -> np.ndarray:
    """``source`` memory-mapped (a path) or itself (an array): for reading a window of it. A plain
    ``.npy`` file's header is parsed here and the data mapped directly (``np.load``'s header parsing
    was a third of the CPU of reading a 3D patch)."""
    if isinstance(source, Path):
        try:
            with source.open("rb") as fh:
                found = _header(fh.read(_HEAD_BYTES))
                if found is not None and found[0].itemsize * int(np.prod(found[1])) > 0:
                    dtype, shape, offset = found
                    return np.memmap(fh, dtype=dtype, mode="r", offset=offset, shape=shape)
            out: np.ndarray = np.load(source, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise _unreadable(source, exc) from exc
        return out
    return source


def _load(source: CaseSource) -> np.ndarray:
    """All of ``source``: a ``.npy`` file read in one call (a plain version-1 C-order file's header is
    parsed here, 3-5x faster than ``np.load``'s for the small files of 2D cases), or the array."""
    if not isinstance(source, Path):
        return source
    try:
        raw = bytearray(source.read_bytes())
        found = _header(raw)
        if found is not None:
            dtype, shape, offset = found
            return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)
        out: np.ndarray = np.load(source, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise _unreadable(source, exc) from exc
    return out


class ListCases(CaseStore):
    """One array or ``.npy`` file per case (the cache's memory-mapped cases); shapes may differ.

    Args:
        images: per case, ``(C, *spatial)`` float32 (array or ``.npy`` path).
        masks: per case, ``(*spatial)`` integer class indices (any integer dtype), or None.
        shapes: spatial shape of every case.
        channels: ``C``.
    """

    def __init__(self, images: Sequence[CaseSource], masks: Sequence[CaseSource] | None,
                 shapes: Sequence[tuple[int, ...]], channels: int) -> None:
        if len(images) != len(shapes) or (masks is not None and len(masks) != len(images)):
            raise ValueError(f"{len(images)} images, {None if masks is None else len(masks)} masks and "
                             f"{len(shapes)} shapes: one of each per case is needed")
        self.images = list(images)
        self.masks = None if masks is None else list(masks)
        self._shapes = [tuple(int(n) for n in s) for s in shapes]
        self._channels = int(channels)

    def __repr__(self) -> str:
        return f"ListCases({len(self)} cases, channels={self._channels}, masks={self.masks is not None})"

    def __len__(self) -> int:
        return len(self.images)

    @property
    def in_memory(self) -> bool:
        return False

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    @property
    def channels(self) -> int:
        return self._channels

    def shape_of(self, i: int) -> tuple[int, ...]:
        return self._shapes[i]

    def _image(self, i: int, index: tuple[slice, ...] | None = None) -> torch.Tensor:
        arr = _load(self.images[i]) if index is None else _open(self.images[i])[index]
        return torch.from_numpy(np.array(arr, dtype=np.float32))

    def _mask(self, i: int, index: tuple[slice, ...] | None = None) -> torch.Tensor | None:
        if self.masks is None:
            return None
        arr = _load(self.masks[i]) if index is None else _open(self.masks[i])[index]
        return torch.from_numpy(np.array(arr, dtype=np.int64))[None]

    def case(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._image(i), self._mask(i)

    def mask(self, i: int) -> torch.Tensor | None:
        return self._mask(i)

    def patch(self, i: int, start: Sequence[int], size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if any(s < p for s, p in zip(self._shapes[i], size, strict=True)):
            return super().patch(i, start, size)  # padded: read the whole case
        window = tuple(slice(int(s), int(s) + int(p)) for s, p in zip(start, size, strict=True))
        return self._image(i, (slice(None), *window)), self._mask(i, window)

    def window(self, i: int, start: Sequence[int], size: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The patch of :meth:`patch` as arrays of the stored dtypes, ``(C, *size)`` and
        ``(1, *size)``, views of the memory-mapped files, not yet read; None for a padded case.
        A batch is stacked from these with one copy (:func:`fedseg.data.loader.collate_cases`)."""
        if any(s < p for s, p in zip(self._shapes[i], size, strict=True)):
            return None
        index = tuple(slice(int(s), int(s) + int(p)) for s, p in zip(start, size, strict=True))
        mask = None if self.masks is None else _open(self.masks[i])[index][None]
        return _open(self.images[i])[(slice(None), *index)], mask

    def _check_stackable(self) -> None:
        if len(set(self._shapes)) > 1:
            raise DataError(f"this split's cases differ in shape ({', '.join(sorted({str(s) for s in self._shapes}))}"
                            "); they cannot be stacked into one tensor: read them per case (SegmentationSet.case)")

    def stacked_images(self) -> torch.Tensor:
        self._check_stackable()
        if not self.images:
            return torch.zeros((0, self._channels), dtype=torch.float32)
        return torch.stack([self._image(i) for i in range(len(self))])

    def stacked_masks(self) -> torch.Tensor | None:
        self._check_stackable()
        if self.masks is None:
            return None
        return torch.stack([m for i in range(len(self)) if (m := self._mask(i)) is not None])

    def without_masks(self) -> CaseStore:
        return ListCases(self.images, None, self._shapes, self._channels)

    @staticmethod
    def concat(stores: Sequence[CaseStore]) -> ListCases:
        """The cases of ``stores`` one after the other, without reading a file (stacked stores
        contribute per-case views of their tensors); all must have masks or none."""
        images: list[CaseSource] = []
        masks: list[CaseSource] = []
        shapes: list[tuple[int, ...]] = []
        for store in stores:
            if isinstance(store, ListCases):
                images += store.images
                masks += store.masks or []
            else:
                for i in range(len(store)):
                    image, mask = store.case(i)
                    images.append(image.numpy())
                    if mask is not None:
                        masks.append(mask[0].numpy())
            shapes += store.shapes()
        if masks and len(masks) != len(images):
            raise DataError("cannot pool splits with and without masks (a weakly-supervised split refuses pooling)")
        return ListCases(images, masks if masks else None, shapes, stores[0].channels if stores else 0)
