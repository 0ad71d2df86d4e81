"""The preprocessed-case cache: a warm load decodes nothing; changed files or settings miss."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

import fedseg.data.folder as folder
from fake_datasets import write_nifti_site, write_png_site
from fedseg.config import DataConfig
from fedseg.data.cache import CaseCache
from fedseg.data.folder import load_folder_federation
from fedseg.data.layout import index_dataset


class _Decodes:
    """Counts calls to the file readers the loader uses."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for name in ("read_image", "read_mask"):
            original = getattr(folder, name)

            def spy(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                self.count += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(folder, name, spy)


def _cfg(root: Path, cache_dir: Path, **kw: Any) -> DataConfig:
    return DataConfig(source="folder", root=root, cache_dir=cache_dir, **kw)


def test_warm_load_decodes_nothing_and_is_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_png_site(tmp_path / "data" / "A", 5)
    cfg = _cfg(tmp_path / "data", tmp_path / "cache", image_size=[8, 8])
    decodes = _Decodes(monkeypatch)
    cold = load_folder_federation(cfg, seed=0)
    assert decodes.count == 10  # 5 images + 5 masks
    warm = load_folder_federation(cfg, seed=0)
    assert decodes.count == 10  # nothing decoded the second time
    for a, b in zip(cold.sites, warm.sites):
        for split in ("train", "val", "test"):
            sa, sb = getattr(a, split), getattr(b, split)
            assert sa.ids == sb.ids
            assert torch.equal(sa.images, sb.images) and torch.equal(sa.masks, sb.masks)
            assert torch.equal(sa.spacing, sb.spacing)


def test_changed_file_or_settings_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_png_site(tmp_path / "data" / "A", 4)
    cfg = _cfg(tmp_path / "data", tmp_path / "cache", image_size=[8, 8])
    load_folder_federation(cfg, seed=0)
    decodes = _Decodes(monkeypatch)
    image = tmp_path / "data" / "A" / "images" / "img_01_0.png"
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_folder_federation(cfg, seed=0)
    assert decodes.count == 2  # only the touched case
    load_folder_federation(cfg.model_copy(update={"image_size": [4, 4]}), seed=0)
    assert decodes.count == 2 + 8  # other preprocessing: every case again
    load_folder_federation(cfg.model_copy(update={"cache": False}), seed=0)
    assert decodes.count == 2 + 8 + 8


def test_3d_cache_keeps_geometry_and_foreground(tmp_path: Path) -> None:
    write_nifti_site(tmp_path / "data" / "A", 3, labels=(1, 2))
    cfg = _cfg(tmp_path / "data", tmp_path / "cache", channels=2, num_classes=3,
               preprocess={"target_spacing": [1.0, 1.0, 1.5]})
    cold = load_folder_federation(cfg, seed=0)
    cache = CaseCache(tmp_path / "cache", cfg)
    cases = index_dataset(cfg)[0][0].cases
    entry = cache.load(cache.key(cases[0]))
    assert entry is not None and entry.mask is not None and entry.foreground is not None
    assert entry.info.original_spacing == (1.0, 1.0, 3.0) and entry.info.resampled_shape == (8, 6, 8)
    assert entry.foreground == pytest.approx(12 / (8 * 6 * 4))  # blocks of labels 1, 2 overlap: 3x2x2 voxels
    warm = load_folder_federation(cfg, seed=0)
    assert torch.equal(cold.sites[0].train.images, warm.sites[0].train.images)


def test_torn_cache_entry_is_recomputed(tmp_path: Path) -> None:
    write_png_site(tmp_path / "data" / "A", 3)
    cfg = _cfg(tmp_path / "data", tmp_path / "cache")
    first = load_folder_federation(cfg, seed=0)
    for entry in (tmp_path / "cache").rglob("*.npz"):
        entry.write_bytes(b"torn")
    again = load_folder_federation(cfg, seed=0)
    assert torch.equal(first.sites[0].train.images, again.sites[0].train.images)
