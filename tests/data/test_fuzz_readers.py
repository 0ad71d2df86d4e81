"""Fuzzing the data readers (hypothesis): any file gives a volume or a :class:`DataError` naming it.

Random bytes as PNG/JPG/BMP/NIfTI (plain and gzipped), valid files truncated or with bytes
flipped, NIfTI volumes of random shapes and dtypes, PNGs of every mode, random bytes in a
preprocessed-case cache entry, and the folder layout scanner on random directory trees (case
variants of ``images``, hidden entries, symlink loops): never another exception from deep inside.
"""

from __future__ import annotations

import gzip
import io
import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fedseg.config import DataConfig
from fedseg.data.cache import CaseCache
from fedseg.data.folder import check_dataset
from fedseg.data.layout import index_dataset
from fedseg.io import DataError, read_image, read_mask

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SUFFIXES = [".png", ".jpg", ".bmp", ".nii", ".nii.gz"]
_counter = itertools.count()


def _fresh(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A new file path per example (hypothesis reuses the function's fixtures)."""
    folder = tmp_path_factory.getbasetemp() / "fuzz" / str(next(_counter))
    folder.mkdir(parents=True)
    return folder / name


def _read_both(path: Path) -> None:
    """read_image and read_mask: a result or a DataError that names the file."""
    for read in (read_image, read_mask):
        try:
            volume = read(path)
        except DataError as exc:
            assert path.name in str(exc), str(exc)
            continue
        assert volume.array.ndim >= 2 and np.isfinite(volume.array).all()


def _png(shape: tuple[int, int], mode: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if mode in ("RGB", "RGBA"):
        arr = rng.integers(0, 255, (*shape, len(mode)), dtype=np.uint8)
        im = Image.fromarray(arr, mode)
    elif mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, shape, dtype=np.uint16))
    elif mode == "F":
        im = Image.fromarray(rng.normal(size=shape).astype(np.float32))
    else:
        im = Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="TIFF" if mode == "F" else "PNG")
    return buf.getvalue()


def _nifti(shape: tuple[int, ...], dtype: str, seed: int, gz: bool) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.normal(size=shape) * 10).astype(dtype)
    img = nib.Nifti1Image(arr, np.diag([1.0, 1.0, 1.0, 1.0]))
    raw = img.to_bytes()
    return gzip.compress(raw) if gz else raw


@FUZZ
@given(st.binary(max_size=600), st.sampled_from(SUFFIXES))
def test_random_bytes_are_a_data_error(tmp_path_factory: pytest.TempPathFactory, data: bytes, suffix: str) -> None:
    path = _fresh(tmp_path_factory, f"case{suffix}")
    path.write_bytes(gzip.compress(data) if suffix == ".nii.gz" and data[:1] == b"\x01" else data)
    _read_both(path)


@FUZZ
@given(st.tuples(st.integers(1, 9), st.integers(1, 9)), st.sampled_from(["L", "P", "1", "RGB", "RGBA", "LA", "I;16"]),
       st.integers(0, 3), st.floats(0, 1), st.lists(st.integers(0, 10_000), max_size=3))
def test_pngs_of_every_mode_truncated_or_flipped(tmp_path_factory: pytest.TempPathFactory, shape: tuple[int, int],
                                                 mode: str, seed: int, cut: float, flips: list[int]) -> None:
    data = bytearray(_png(shape, mode, seed))
    for position in flips:
        data[position % len(data)] ^= 0xFF
    if cut < 0.5:
        data = data[: int(len(data) * cut * 2)]
    path = _fresh(tmp_path_factory, "case.png")
    path.write_bytes(bytes(data))
    _read_both(path)


@FUZZ
@given(st.lists(st.integers(1, 5), min_size=1, max_size=5).map(tuple),
       st.sampled_from(["uint8", "int16", "float32", "float64", "int64", "bool"]), st.integers(0, 3),
       st.booleans(), st.floats(0, 1), st.lists(st.integers(0, 400), max_size=3))
def test_nifti_of_random_shapes_truncated_or_flipped(tmp_path_factory: pytest.TempPathFactory, shape: tuple[int, ...],
                                                     dtype: str, seed: int, gz: bool, cut: float,
                                                     flips: list[int]) -> None:
    try:
        data = bytearray(_nifti(shape, dtype if dtype != "bool" else "uint8", seed, gz=False))
    except Exception:  # nibabel refuses some shape/dtype pairs when writing; nothing to read then
        return
    for position in flips:  # header bytes (dims, datatype, pixdim, vox_offset...)
        data[position % len(data)] ^= 0x5A
    if cut < 0.4:
        data = data[: int(len(data) * cut * 2.5)]
    path = _fresh(tmp_path_factory, "case.nii.gz" if gz else "case.nii")
    path.write_bytes(gzip.compress(bytes(data)) if gz else bytes(data))
    _read_both(path)
    if gz and cut < 0.4:  # a truncated gzip stream
        path.write_bytes(gzip.compress(bytes(data))[: max(1, len(data) // 3)])
        _read_both(path)


@FUZZ
@given(st.binary(max_size=400))
def test_a_torn_cache_entry_is_a_miss(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    folder = _fresh(tmp_path_factory, "x").parent
    cache = CaseCache(folder, DataConfig())
    key = "ab" + "0" * 62
    (folder / key[:2]).mkdir()
    (folder / key[:2] / f"{key}.npz").write_bytes(data)
    assert cache.load(key) is None


NAMES = ["images", "Images", "IMAGES", "masks", "Masks", "A", "B", ".hidden", "a.png", "b.nii.gz", "notes.txt",
         "a_0000.nii.gz", "metadata.csv"]


@st.composite
def trees(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Entries ``(relative path, kind)``: kind ``dir``, ``file`` (random bytes) or ``loop`` (a symlink to itself)."""
    entries = []
    for _ in range(draw(st.integers(0, 12))):
        depth = draw(st.integers(1, 3))
        parts = [draw(st.sampled_from(NAMES)) for _ in range(depth)]
        entries.append(("/".join(parts), draw(st.sampled_from(["dir", "file", "file", "loop"]))))
    return entries


def _build(root: Path, entries: list[tuple[str, str]], data: bytes) -> None:
    root.mkdir(parents=True)
    for rel, kind in entries:
        path = root / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "dir":
                path.mkdir(exist_ok=True)
            elif kind == "file":
                path.write_bytes(data)
            else:
                path.symlink_to(path)
        except OSError:  # a file where a folder was asked for, or the reverse: keep what exists
            continue


@FUZZ
@given(trees(), st.binary(max_size=64), st.one_of(st.none(), st.lists(st.sampled_from(["A", "B", "images"]),
                                                                        min_size=1, max_size=2, unique=True)))
def test_the_layout_scanner_on_random_trees(tmp_path_factory: pytest.TempPathFactory, entries: list[tuple[str, str]],
                                            data: bytes, sites: list[str] | None) -> None:
    root = _fresh(tmp_path_factory, "root")
    _build(root, entries, data)
    cfg = DataConfig(source="folder", root=root, sites=sites, cache=False)
    index, dims, problems = index_dataset(cfg)
    assert dims in (2, 3) and all(p.message for p in problems)
    for site in index:  # cases come only from images/ folders; a listed site without one is an error
        assert (root / site.name / "images").is_dir() or (not site.cases and any(p.site == site.name
                                                                                for p in problems))
    try:
        report = check_dataset(cfg)
    except DataError as exc:
        assert str(exc)
        return
    assert all(p.severity in ("error", "warning") for p in report.problems)
