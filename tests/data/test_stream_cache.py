"""Folder data streamed from the case cache: one memory-mapped .npy per case, shapes may differ
with patches, and the stacked ``images``/``masks`` of old callers still work."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fake_datasets import write_nifti_case, write_png_site
from fedseg.config import DataConfig
from fedseg.data.base import DataError, SegmentationSet
from fedseg.data.cache import CACHE_VERSION, CaseCache
from fedseg.data.cases import ListCases, TensorCases
from fedseg.data.folder import load_folder_federation
from fedseg.data.validate import federation_problems


def _cfg(root: Path, cache: Path, **kw: object) -> DataConfig:
    return DataConfig(source="folder", root=root, cache_dir=cache, **kw)  # type: ignore[arg-type]


def _mixed_site(root: Path) -> None:
    for i, shape in enumerate([(8, 6, 4), (10, 6, 4), (8, 7, 5), (9, 9, 4), (8, 6, 4), (7, 6, 6)]):
        write_nifti_case(root / "A", f"case{i:02d}", shape=shape, spacing=(1.0, 1.0, 1.0), channels=1, seed=i)


def test_folder_splits_stream_from_the_cache_and_match_a_cold_load(tmp_path: Path) -> None:
    write_png_site(tmp_path / "data" / "S", n_groups=6)
    cfg = _cfg(tmp_path / "data", tmp_path / "cache", image_size=[16, 16])
    cold = load_folder_federation(cfg, seed=0).sites[0]
    warm = load_folder_federation(cfg, seed=0).sites[0]
    off = load_folder_federation(cfg.model_copy(update={"cache": False}), seed=0).sites[0]
    for split in ("train", "val", "test"):
        a, b, c = getattr(cold, split), getattr(warm, split), getattr(off, split)
        assert not a.in_memory and not b.in_memory and c.in_memory  # cache off: stacked as before
        assert isinstance(a.cases, ListCases) and a.ids == c.ids
        assert torch.equal(a.images, c.images) and torch.equal(b.images, c.images)
        assert torch.equal(a.pixel_masks(), c.pixel_masks()) and a.pixel_masks().dtype == torch.int64
    store = cold.train.cases
    assert isinstance(store, ListCases) and isinstance(store.images[0], Path)
    assert np.load(store.masks[0]).dtype == np.uint8  # type: ignore[index,arg-type]
    assert np.load(store.images[0]).dtype == np.float32  # type: ignore[arg-type]
    assert len(pickle.dumps(store)) < 200 * len(store) + 500  # paths only, for the loader workers
    assert federation_problems(load_folder_federation(cfg, seed=0)) == []


def test_cache_entries_are_npy_files_and_a_torn_entry_is_a_miss(tmp_path: Path) -> None:
    write_png_site(tmp_path / "data" / "S", n_groups=2)
    cfg = _cfg(tmp_path / "data", tmp_path / "cache", image_size=[16, 16])
    load_folder_federation(cfg, seed=0)
    metas = sorted((tmp_path / "cache").rglob("*.json"))
    assert len(metas) == 2 and CACHE_VERSION == 4
    assert all(m.with_suffix(".image.npy").is_file() and m.with_suffix(".mask.npy").is_file() for m in metas)
    metas[0].with_suffix(".image.npy").write_bytes(b"torn")
    cache = CaseCache(tmp_path / "cache", cfg)
    assert cache.load(metas[0].stem) is None and cache.misses == 1
    assert cache.load(metas[1].stem) is not None and cache.hits == 1


def test_3d_cases_of_different_shapes_load_with_patches_and_are_refused_without(tmp_path: Path) -> None:
    _mixed_site(tmp_path / "data")
    cfg = _cfg(tmp_path / "data", tmp_path / "cache", channels=1)
    with pytest.raises(DataError, match="differ in size"):
        load_folder_federation(cfg, seed=0)
    site = load_folder_federation(cfg, seed=0, mixed_shapes=True).sites[0]
    shapes = {site.train.shape_of(i) for i in range(len(site.train))}
    assert len(shapes) > 1
    image, mask = site.train.case(0)
    assert image.shape == (1, *site.train.shape_of(0)) and mask is not None and mask.shape == (1, *image.shape[1:])
    with pytest.raises(DataError, match="differ in shape"):
        site.train.images  # noqa: B018


def test_tensor_backed_sets_keep_the_old_constructor_and_replace(tmp_path: Path) -> None:
    images, masks = torch.rand(3, 1, 4, 4), torch.zeros(3, 1, 4, 4, dtype=torch.long)
    s = SegmentationSet(images=images, masks=masks, spacing=torch.ones(3, 2))
    assert isinstance(s.cases, TensorCases) and s.images is images and s.masks is masks and len(s) == 3
    weak = s.with_masks(None)
    assert weak.masks is None and not weak.has_masks and weak.images is images
    import dataclasses

    other = dataclasses.replace(s, ids=["a", "b", "c"])
    assert other.images is images and other.masks is masks and other.ids == ["a", "b", "c"]
    np.save(tmp_path / "i.npy", images[0].numpy())
    np.save(tmp_path / "m.npy", masks[0, 0].numpy().astype(np.uint8))
    disk = SegmentationSet(cases=ListCases([tmp_path / "i.npy"], [tmp_path / "m.npy"], [(4, 4)], 1),
                           spacing=torch.ones(1, 2))
    relabelled = disk.with_masks(torch.ones(1, 1, 4, 4, dtype=torch.long))
    assert relabelled.in_memory and torch.equal(relabelled.images, images[:1])


def test_pooling_streamed_splits_reads_nothing_and_keeps_every_case(tmp_path: Path) -> None:
    from fedseg.runtime.build import concat_sets

    images, masks = torch.rand(2, 1, 4, 4), torch.ones(2, 1, 4, 4, dtype=torch.long)
    memory = SegmentationSet(images=images, masks=masks, spacing=torch.ones(2, 2), ids=["a", "b"])
    np.save(tmp_path / "i.npy", np.full((1, 5, 3), 2.0, dtype=np.float32))
    np.save(tmp_path / "m.npy", np.zeros((5, 3), dtype=np.uint8))
    disk = SegmentationSet(cases=ListCases([tmp_path / "i.npy"], [tmp_path / "m.npy"], [(5, 3)], 1),
                           spacing=torch.ones(1, 2), ids=["c"])
    pooled = concat_sets([memory, disk])
    assert not pooled.in_memory and pooled.ids == ["a", "b", "c"] and len(pooled) == 3
    assert torch.equal(pooled.case(1)[0], images[1]) and pooled.shape_of(2) == (5, 3)
    assert torch.equal(pooled.case(2)[0], torch.full((1, 5, 3), 2.0))
