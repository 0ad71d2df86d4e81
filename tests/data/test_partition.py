"""Partitioners: one single-source dataset -> N simulated sites, reproducibly and by whole groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fake_datasets import write_nifti_case, write_png_site
from fedseg.config import DataConfig, PartitionConfig
from fedseg.data.base import DataError
from fedseg.data.folder import check_dataset, load_folder_federation
from fedseg.data.partition import _largest_remainder, partition_units

UNITS = [f"p{i:02d}" for i in range(40)]


def _sizes(parts: dict[str, list[str]]) -> list[int]:
    return [len(v) for v in parts.values()]


def test_iid_is_balanced_disjoint_and_deterministic() -> None:
    cfg = PartitionConfig(method="iid", num_sites=3)
    parts = partition_units(UNITS, cfg, seed=0)
    assert list(parts) == ["site0", "site1", "site2"]
    assert sorted(_sizes(parts)) == [13, 13, 14]
    assert sorted(u for v in parts.values() for u in v) == UNITS
    assert partition_units(list(reversed(UNITS)), cfg, seed=0) == parts  # input order is irrelevant
    assert partition_units(UNITS, cfg, seed=1) != parts
    assert partition_units(UNITS, cfg.model_copy(update={"seed": 1}), seed=0) == partition_units(UNITS, cfg, seed=1)


def test_largest_remainder_by_hand() -> None:
    # 10 * (0.55, 0.3, 0.15) = 5.5, 3, 1.5 -> floors 5, 3, 1 (9); the one left goes to the first .5
    assert _largest_remainder(np.array([0.55, 0.3, 0.15]), 10).tolist() == [6, 3, 1]


def test_dirichlet_quantity_skew_grows_as_alpha_shrinks() -> None:
    spread = {}
    for alpha in (0.1, 100.0):
        sizes = [sorted(_sizes(partition_units(UNITS, PartitionConfig(method="dirichlet", num_sites=4, alpha=alpha),
                                               seed=s))) for s in range(20)]
        spread[alpha] = float(np.mean([max(z) - min(z) for z in sizes]))
        assert all(sum(z) == 40 and min(z) >= 1 for z in sizes)
    assert spread[0.1] > 15 > 5 > spread[100.0]


def test_foreground_skew_separates_lesion_sizes() -> None:
    sizes = {u: float(i) for i, u in enumerate(UNITS)}  # size rank = unit index

    def gap(alpha: float) -> float:
        out = []
        for s in range(10):
            parts = partition_units(UNITS, PartitionConfig(method="foreground", num_sites=2, alpha=alpha), s, sizes)
            means = [np.mean([sizes[u] for u in v]) for v in parts.values()]
            out.append(abs(means[0] - means[1]))
        return float(np.mean(out))

    assert gap(0.05) > 12 > 4 > gap(1000.0)
    with pytest.raises(DataError, match="foreground size"):
        partition_units(UNITS, PartitionConfig(method="foreground", num_sites=2), 0, {"p00": 1.0})


def test_min_groups_and_too_few_units() -> None:
    cfg = PartitionConfig(method="dirichlet", num_sites=3, alpha=0.01, min_groups=3)
    for seed in range(10):
        assert min(_sizes(partition_units(UNITS[:12], cfg, seed))) >= 3
    with pytest.raises(DataError, match="5 group\\(s\\) cannot fill 2 sites with at least 3"):
        partition_units(UNITS[:5], PartitionConfig(num_sites=2, min_groups=3), 0)


def test_partitioned_folder_keeps_patients_together(tmp_path: Path) -> None:
    write_png_site(tmp_path / "Single", 12, per_group=2)
    cfg = DataConfig(source="folder", root=tmp_path, group_column="case", image_size=[8, 8],
                     partition={"method": "iid", "num_sites": 3, "site_names": ["a", "b", "c"]})
    fd = load_folder_federation(cfg, seed=0)
    assert [s.name for s in fd.sites] == ["a", "b", "c"]
    owner: dict[str, str] = {}
    for site in fd.sites:
        ids = site.train.ids + site.val.ids + site.test.ids
        assert len(ids) == 8  # 4 patients x 2 images
        for case_id in ids:
            patient = case_id.split("_")[1]
            assert owner.setdefault(patient, site.name) == site.name
    again = load_folder_federation(cfg, seed=0)
    assert [s.train.ids for s in again.sites] == [s.train.ids for s in fd.sites]


def test_partition_needs_a_single_source(tmp_path: Path) -> None:
    write_png_site(tmp_path / "A", 3)
    write_png_site(tmp_path / "B", 3)
    report = check_dataset(DataConfig(source="folder", root=tmp_path, partition={"num_sites": 2}))
    assert any("single-source dataset" in p.message and p.path == "data.partition" for p in report.errors)


def test_foreground_partition_on_3d_volumes(tmp_path: Path) -> None:
    for i in range(8):  # lesion edge 1..4 voxels: foreground grows with i // 2
        write_nifti_case(tmp_path / "S", f"c{i}", channels=1, shape=(6, 6, 6), spacing=(1.0, 1.0, 1.0),
                         fg_size=1 + i // 2, seed=i)
    cfg = DataConfig(source="folder", root=tmp_path, partition={"method": "foreground", "num_sites": 2,
                                                                 "alpha": 0.01, "min_groups": 2})
    fd = load_folder_federation(cfg, seed=0)
    fg = [float(np.mean([(m > 0).float().mean().item() for s in (site.train, site.val, site.test) for m in s.masks]))
          for site in fd.sites]
    assert abs(fg[0] - fg[1]) > 0.05  # one site got the small lesions, the other the large ones
