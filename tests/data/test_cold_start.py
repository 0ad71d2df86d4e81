"""Cold start: the plain-array resize matches MONAI's Resize, and the threaded reader equals one thread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Resize

from fake_datasets import write_png_case
from fedseg.config import DataConfig
from fedseg.data import folder
from fedseg.data.resize import resize_array


def _monai(array: np.ndarray, shape: tuple[int, ...], mode: str, anti_aliasing: bool) -> np.ndarray:
    align = None if mode.startswith("nearest") else False
    resize = Resize(spatial_size=shape, mode=mode, align_corners=align, anti_aliasing=anti_aliasing)
    out = resize(torch.from_numpy(array))
    return np.asarray(torch.as_tensor(out).numpy())


@pytest.mark.parametrize(("shape", "target"), [((1, 37, 29), (16, 16)), ((3, 20, 41), (32, 12)),
                                               ((2, 13, 11, 9), (6, 16, 5))])
@pytest.mark.parametrize("anti_aliasing", [True, False])
@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch.backends.mkldnn.flags says so on CPU builds
def test_resize_array_is_monai_resize(shape: tuple[int, ...], target: tuple[int, ...],
                                                  anti_aliasing: bool) -> None:
    array = (np.random.default_rng(0).random(shape, dtype=np.float32) * 255).astype(np.float32)
    linear = "bilinear" if len(target) == 2 else "trilinear"
    for mode in (linear, "nearest-exact"):
        ours = resize_array(array, target, mode, anti_aliasing)
        assert ours.dtype == np.float32 and ours.shape == (shape[0], *target)
        if anti_aliasing:  # the Gaussian accumulates in float64 (scipy), MONAI's in float32 (torch)
            np.testing.assert_allclose(ours, _monai(array, target, mode, anti_aliasing), rtol=1e-5, atol=1e-4)
        else:
            np.testing.assert_array_equal(ours, _monai(array, target, mode, anti_aliasing))
        with torch.backends.mkldnn.flags(enabled=False):  # nothing depends on torch's convolution backend
            np.testing.assert_array_equal(resize_array(array, target, mode, anti_aliasing), ours)
    assert resize_array(array, shape[1:], linear, anti_aliasing) is array


def _site(root: Path, n: int) -> None:
    for i in range(n):  # every image of its own size, as in BUS-BRA
        write_png_case(root / "A", f"img_{i:02d}", size=(20 + i, 17 + 2 * i), seed=i)


def test_threaded_reader_equals_one_thread_reports_progress_and_restores_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _site(tmp_path, 12)
    cfg = DataConfig(source="folder", root=tmp_path, image_size=[16, 16], cache=False)
    threads = torch.get_num_threads()
    seen: list[tuple[int, int]] = []
    threaded = folder.load_folder_federation(cfg, seed=0, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(k, 12) for k in range(1, 13)]
    assert torch.get_num_threads() == threads
    monkeypatch.setattr(folder, "_workers", lambda cases, dims: 1)
    single = folder.load_folder_federation(cfg, seed=0)
    for a, b in zip(threaded.sites, single.sites):
        for split in ("train", "val", "test"):
            x, y = getattr(a, split), getattr(b, split)
            assert x.ids == y.ids
            assert torch.equal(x.images, y.images) and x.masks is not None and y.masks is not None
            assert torch.equal(x.masks, y.masks)


def test_workers_are_bounded_and_none_for_a_handful_of_cases() -> None:
    assert folder._workers(8, 2) == 1
    assert 2 <= folder._workers(1000, 2) <= 8 and 1 <= folder._workers(1000, 3) <= 8
    assert folder._workers(1000, 3) <= folder._workers(1000, 2)
