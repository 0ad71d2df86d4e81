"""Reading patches of memory-mapped cases: unread windows stacked once equal the per-case tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedseg.data.cases import ListCases, _open
from fedseg.data.loader import CaseDataset, collate_cases
from fedseg.io.errors import DataError


def _cases(tmp_path: Path) -> ListCases:
    """Three 3D cases: 6^3 float32, 7x6x6 float16 (another stored dtype), 3x6x6 (padded to a 4^3 patch)."""
    rng = np.random.default_rng(0)
    images, masks, shapes = [], [], []
    for i, (shape, dtype) in enumerate([((6, 6, 6), np.float32), ((7, 6, 6), np.float16), ((3, 6, 6), np.float32)]):
        np.save(tmp_path / f"{i}.image.npy", rng.standard_normal((1, *shape)).astype(dtype))
        np.save(tmp_path / f"{i}.mask.npy", rng.integers(0, 3, shape).astype(np.uint8))
        images.append(tmp_path / f"{i}.image.npy")
        masks.append(tmp_path / f"{i}.mask.npy")
        shapes.append(shape)
    return ListCases(images, masks, shapes, 1)


def test_patch_windows_stack_into_the_batch_of_the_per_case_tensors(tmp_path: Path) -> None:
    cases = _cases(tmp_path)
    items = [(0, (1, 2, 0)), (1, (3, 0, 2)), (2, (0, 1, 1)), (0, (2, 2, 2))]
    dataset = CaseDataset(cases, [4, 4, 4])
    assert cases.window(2, (0, 1, 1), (4, 4, 4)) is None  # padded: read whole, as tensors
    window = cases.window(1, (3, 0, 2), (4, 4, 4))
    assert window is not None and window[0].dtype == np.float16  # stored dtype, converted once per batch
    assert window[1] is not None and window[1].shape == (1, 4, 4, 4)
    batch = collate_cases([dataset[item] for item in items])
    assert batch is not None
    idx, images, masks = batch
    expected = [cases.patch(case, start, (4, 4, 4)) for case, start in items]
    assert idx.tolist() == [0, 1, 2, 0]
    assert images.dtype == torch.float32 and masks is not None and masks.dtype == torch.int64
    assert torch.equal(images, torch.stack([image for image, _ in expected]))
    assert torch.equal(masks, torch.stack([mask for _, mask in expected if mask is not None]))


def test_open_maps_plain_npy_files_and_leaves_fortran_order_to_numpy(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    np.save(tmp_path / "c.npy", array)
    np.save(tmp_path / "f.npy", np.asfortranarray(array))
    for name in ("c.npy", "f.npy"):
        opened = _open(tmp_path / name)
        assert opened.dtype == np.int16 and opened.shape == (2, 3, 4)
        np.testing.assert_array_equal(opened[1, 1:, 2:], array[1, 1:, 2:])


def test_a_truncated_case_file_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    cases = _cases(tmp_path)
    path = tmp_path / "0.image.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="0.image.npy"):
        cases.window(0, (0, 0, 0), (4, 4, 4))
