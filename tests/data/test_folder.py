"""Tests for the real-data folder reader (tiny PNG sites generated in tmp_path)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedseg.config import DataConfig, SplitConfig
from fedseg.data.base import DataError
from fedseg.data.build import build_federated_data
from fedseg.data.folder import load_folder_federation, load_site_folder, split_counts

REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _write_case(
    site: Path,
    stem: str,
    size: tuple[int, int] = (16, 12),
    label: int = 1,
    mask_size: tuple[int, int] | None = None,
    seed: int = 0,
) -> None:
    """Write ``images/<stem>.png`` (grey, HxW=size) and ``masks/<stem>.png`` with a labelled square."""
    (site / "images").mkdir(parents=True, exist_ok=True)
    (site / "masks").mkdir(parents=True, exist_ok=True)
    h, w = size
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size=(h, w), dtype=np.uint8)).save(site / "images" / f"{stem}.png")
    mh, mw = mask_size or size
    mask = np.zeros((mh, mw), dtype=np.uint8)
    mask[mh // 4 : mh // 2, mw // 4 : mw // 2] = label
    Image.fromarray(mask).save(site / "masks" / f"{stem}.png")


def _write_site(site: Path, n_groups: int, per_group: int = 2) -> None:
    rows = []
    for g in range(n_groups):
        for k in range(per_group):
            stem = f"img_{g:02d}_{k}"
            _write_case(site, stem, seed=g * 10 + k)
            rows.append({"id": stem, "case": f"p{g}"})
    with (site / "metadata.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "case"])
        writer.writeheader()
        writer.writerows(rows)


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(source="folder", root=root, **kw)


def test_loads_sites_shapes_and_normalisation(tmp_path: Path) -> None:
    _write_site(tmp_path / "B", 4, per_group=1)
    _write_site(tmp_path / "A", 5, per_group=1)
    (tmp_path / "not_a_site").mkdir()
    fd = load_folder_federation(_cfg(tmp_path, image_size=[8, 10]), seed=0)
    assert [s.name for s in fd.sites] == ["A", "B"]
    assert (fd.spatial_dims, fd.in_channels, fd.num_classes) == (2, 1, 2)
    site = fd.site("A")
    assert site.train.images.shape[1:] == (1, 8, 10) and site.train.images.dtype == torch.float32
    assert site.train.masks.shape[1:] == (1, 8, 10) and site.train.masks.dtype == torch.int64
    assert site.train.spacing.dtype == torch.float64 and site.train.spacing.shape == (len(site.train), 2)
    assert set(site.train.masks.unique().tolist()) <= {0, 1}
    flat = site.train.images.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(len(site.train)), atol=1e-4, rtol=0)
    assert len(site.train) + len(site.val) + len(site.test) == 5


def test_rgb_and_spacing(tmp_path: Path) -> None:
    _write_site(tmp_path / "A", 3, per_group=1)
    fd = load_folder_federation(_cfg(tmp_path, channels=3, pixel_spacing=[0.5, 0.4]), seed=0)
    s = fd.sites[0]
    assert s.train.images.shape[1:] == (3, 16, 12)
    assert s.train.spacing[0].tolist() == [0.5, 0.4]


def test_spacing_is_rescaled_when_images_are_resized(tmp_path: Path) -> None:
    _write_site(tmp_path / "A", 3, per_group=1)  # files are 16x12 (HxW)
    fd = load_folder_federation(_cfg(tmp_path, pixel_spacing=[0.5, 0.4], image_size=[8, 24]), seed=0)
    spacing = fd.sites[0].train.spacing[0].tolist()
    assert spacing == pytest.approx([0.5 * 16 / 8, 0.4 * 12 / 24])


def test_group_split_keeps_groups_together(tmp_path: Path) -> None:
    _write_site(tmp_path / "S", 10, per_group=3)
    cfg = _cfg(tmp_path, group_column="case", split=SplitConfig(train=0.6, val=0.2, test=0.2))
    for seed in range(4):
        site = load_folder_federation(cfg, seed=seed).sites[0]
        groups = [{i.split("_")[1] for i in part.ids} for part in (site.train, site.val, site.test)]
        assert all(groups), "every split has at least one group"
        assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
        assert len(site.train) + len(site.val) + len(site.test) == 30
    a = load_folder_federation(cfg, seed=1).sites[0]
    b = load_folder_federation(cfg, seed=1).sites[0]
    assert a.train.ids == b.train.ids and torch.equal(a.train.images, b.train.images)


def test_all_to_test(tmp_path: Path) -> None:
    _write_site(tmp_path / "S", 3)
    site = load_site_folder(tmp_path / "S", _cfg(tmp_path), seed=0, all_to_test=True)
    assert len(site.train) == 0 and len(site.val) == 0 and len(site.test) == 6
    assert site.train.images.shape == (0, 1, 16, 12)


def test_split_counts_guarantees() -> None:
    split = SplitConfig(train=0.7, val=0.1, test=0.2)
    assert split_counts(1, split) == (1, 0, 0)
    assert split_counts(3, split) == (1, 1, 1)
    assert split_counts(10, split) == (7, 1, 2)
    assert sum(split_counts(25, split)) == 25
    assert split_counts(5, SplitConfig(train=0.8, val=0.0, test=0.2)) == (4, 0, 1)


def test_all_problems_reported_together(tmp_path: Path) -> None:
    site = tmp_path / "S"
    _write_case(site, "good")
    _write_case(site, "badlabel", label=7)
    _write_case(site, "mismatch", mask_size=(10, 10))
    _write_case(site, "nomask")
    (site / "masks" / "nomask.png").unlink()
    (site / "images" / "broken.png").write_bytes(b"not a png")
    _write_case(site, "broken")
    (site / "images" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        load_folder_federation(_cfg(tmp_path), seed=0)
    msg = str(err.value)
    assert "4 problem(s)" in msg
    assert "badlabel.png" in msg and "7" in msg
    assert "mismatch.png" in msg and str(site / "masks" / "mismatch.png") in msg
    assert str(site / "images" / "nomask.png") in msg and "no mask" in msg
    assert "broken.png" in msg and "unreadable" in msg


def test_bad_label_names_file_and_value(tmp_path: Path) -> None:
    _write_case(tmp_path / "S", "a", label=7)
    with pytest.raises(DataError, match=r"masks/a\.png: mask values 7 "):
        load_site_folder(tmp_path / "S", _cfg(tmp_path), seed=0)


def test_empty_site(tmp_path: Path) -> None:
    (tmp_path / "S" / "images").mkdir(parents=True)
    (tmp_path / "S" / "masks").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_folder_federation(_cfg(tmp_path), seed=0)


def test_unequal_sizes_without_image_size(tmp_path: Path) -> None:
    _write_case(tmp_path / "S", "a", size=(16, 12))
    _write_case(tmp_path / "S", "b", size=(10, 10))
    with pytest.raises(DataError, match="differ in size"):
        load_folder_federation(_cfg(tmp_path), seed=0)
    fd = load_folder_federation(_cfg(tmp_path, image_size=[8, 8]), seed=0)
    assert fd.sites[0].train.images.shape[1:] == (1, 8, 8)


def test_metadata_problems(tmp_path: Path) -> None:
    _write_site(tmp_path / "S", 3)
    with pytest.raises(DataError, match=r"metadata\.csv: missing column\(s\) 'patient'"):
        load_folder_federation(_cfg(tmp_path, group_column="patient"), seed=0)
    _write_case(tmp_path / "S", "extra")
    with pytest.raises(DataError, match="no row with id extra"):
        load_folder_federation(_cfg(tmp_path, group_column="case"), seed=0)


def test_missing_root_and_site(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        load_folder_federation(_cfg(tmp_path / "nope"), seed=0)
    _write_site(tmp_path / "A", 3, per_group=1)
    with pytest.raises(DataError, match="data.sites"):
        load_folder_federation(_cfg(tmp_path, sites=["A", "Z"]), seed=0)


def test_build_dispatches_to_folder(tmp_path: Path) -> None:
    _write_site(tmp_path / "A", 3, per_group=1)
    fd = build_federated_data(_cfg(tmp_path, num_classes=3), seed=0)
    assert fd.sites[0].name == "A" and fd.num_classes == 3 and len(fd.label_names) == 3


@pytest.mark.realdata
def test_busbra_scanners_real() -> None:
    root = REAL_DATA / "busbra_scanners"
    if not root.is_dir():
        pytest.skip(f"{root} not available")
    fd = load_folder_federation(_cfg(root, image_size=[128, 128], group_column="case"), seed=0)
    assert [s.name for s in fd.sites] == ["GE_Logiq7", "Toshiba_Aplio300", "U-Systems"]
    for site in fd.sites:
        with (root / site.name / "metadata.csv").open(newline="") as fh:
            case_of = {row["id"]: row["case"] for row in csv.DictReader(fh)}
        parts = [{case_of[i] for i in part.ids} for part in (site.train, site.val, site.test)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2]), site.name
        for part in (site.train, site.val, site.test):
            assert part.images.shape[1:] == (1, 128, 128)
    assert sum(len(s.train) + len(s.val) + len(s.test) for s in fd.sites) == 902 + 139 + 25
