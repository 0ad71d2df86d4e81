"""Every dataset preset in configs/datasets validates; with ../shared/data present, each one loads
(small image sizes, small sites, to stay fast) and the labels mean what the preset says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import SHARED_DATA
from fedseg.config import DataConfig, RunConfig, load_config
from fedseg.data.build import build_federated_data
from fedseg.data.layout import index_dataset

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted((REPO / "configs" / "datasets").glob("*.yaml"))


def _preset(name: str, **data: Any) -> DataConfig:
    """The preset's data section, root made absolute (tests do not depend on the working directory)."""
    cfg = load_config(REPO / "configs" / "datasets" / f"{name}.yaml").data
    root = REPO / str(cfg.root)
    if not root.is_dir():
        pytest.skip(f"{root} not available")
    update: dict[str, Any] = {"root": root, **data}
    if cfg.split_file is not None:
        update["split_file"] = REPO / cfg.split_file
    return DataConfig.model_validate({**cfg.model_dump(), **update})


def test_there_is_a_preset_per_dataset() -> None:
    assert {p.stem for p in PRESETS} >= {"busbra_scanners", "polyp_sites", "ph2_skin", "prostate6site",
                                        "fundus4site", "brats2013_subset", "ixi_hh_brain"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_is_a_valid_runnable_config(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig) and cfg.algorithm["name"] == "fedavg"
    assert cfg.data.source == "folder" and str(cfg.data.root).startswith("../shared/data/")
    assert cfg.data.label_names is not None and len(cfg.data.label_names) == cfg.data.num_classes
    assert (REPO / str(cfg.data.root)).resolve().parent == SHARED_DATA.resolve()
    if cfg.data.split_file is not None:
        assert (REPO / cfg.data.split_file).is_file()


@pytest.mark.realdata
def test_busbra_scanners_structure_and_small_site() -> None:
    cfg = _preset("busbra_scanners")
    index, dims, problems = index_dataset(cfg)
    assert dims == 2 and not [p for p in problems if p.severity == "error"]
    assert [(s.name, len(s.cases)) for s in index] == [("GE_Logiq7", 902), ("Toshiba_Aplio300", 139), ("U-Systems", 25)]
    assert len({c.group for c in index[2].cases}) == 14  # 25 images of 14 patients
    fd = build_federated_data(cfg.model_copy(update={"sites": ["U-Systems"]}), seed=0)
    site = fd.sites[0]
    assert site.train.images.shape[1:] == (1, 128, 128) and fd.label_names == ["background", "lesion"]
    patients = [{c.group for c in index[2].cases if c.case_id in set(s.ids)} for s in (site.train, site.val, site.test)]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])


@pytest.mark.realdata
def test_polyp_sites_rgb_and_sequence_groups() -> None:
    cfg = _preset("polyp_sites", preprocess={"target_shape": [24, 32], "anti_aliasing": False})
    fd = build_federated_data(cfg, seed=0)
    assert [s.name for s in fd.sites] == ["CVC-ClinicDB", "Kvasir-SEG"] and fd.in_channels == 3
    clinic = fd.site("CVC-ClinicDB")
    assert clinic.train.images.shape[1:] == (3, 24, 32)
    index = {c.case_id: c.group for c in index_dataset(cfg)[0][0].cases}
    sequences = [{index[i] for i in s.ids} for s in (clinic.train, clinic.val, clinic.test)]
    assert not (sequences[0] & sequences[1] or sequences[0] & sequences[2] or sequences[1] & sequences[2])
    assert sum(len(s) for s in sequences) == 29
    kvasir = fd.site("Kvasir-SEG")
    assert len(kvasir.train) + len(kvasir.val) + len(kvasir.test) == 250


@pytest.mark.realdata
def test_ph2_single_rgb_site() -> None:
    fd = build_federated_data(_preset("ph2_skin", preprocess={"target_shape": [18, 24], "anti_aliasing": False}), 0)
    assert [s.name for s in fd.sites] == ["PH2"] and fd.in_channels == 3
    site = fd.sites[0]
    assert len(site.train) + len(site.val) + len(site.test) == 200
    assert all(int(m.max()) == 1 for m in site.train.masks)  # no empty lesion mask


@pytest.mark.realdata
def test_prostate_six_sites_label_means_prostate() -> None:
    fd = build_federated_data(_preset("prostate6site"), seed=0)
    assert [s.name for s in fd.sites] == ["BIDMC", "BMC", "HK", "I2CVB", "RUNMC", "UCL"]
    assert fd.label_names == ["background", "prostate"]
    for site in fd.sites:
        assert site.train.ids[0].startswith("train_") and site.test.ids == ["test_00_00"]
        for mask in torch.cat([site.train.masks, site.test.masks])[:, 0]:
            fraction = float((mask == 1).float().mean())
            # the prostate is a small central organ: label 1 is not the (inverted) background
            assert 0.002 < fraction < 0.05, site.name
            assert int(mask[0].max()) == int(mask[-1].max()) == int(mask[:, 0].max()) == int(mask[:, -1].max()) == 0


@pytest.mark.realdata
def test_fundus_four_domains_cup_inside_disc() -> None:
    fd = build_federated_data(_preset("fundus4site"), seed=0)
    assert len(fd.sites) == 4 and fd.in_channels == 3 and fd.num_classes == 3
    assert fd.label_names == ["background", "optic_disc_rim", "optic_cup"]
    for site in fd.sites:
        for mask in torch.cat([site.train.masks, site.test.masks])[:, 0].numpy():
            cup, disc = mask == 2, mask > 0
            assert 0 < cup.sum() < disc.sum()
            ring = ndimage.binary_dilation(cup) & ~cup
            assert not (ring & (mask == 0)).any(), site.name  # the rim encloses the cup
            np.testing.assert_array_equal(ndimage.binary_fill_holes(mask == 1), disc)


@pytest.mark.realdata
def test_brats_subset_3d_partitioned_into_two_sites() -> None:
    cfg = _preset("brats2013_subset", preprocess={"target_shape": [24, 24, 16], "normalize": "zscore_nonzero",
                                                  "anti_aliasing": False})
    fd = build_federated_data(cfg, seed=0)
    assert (fd.spatial_dims, fd.in_channels, fd.num_classes) == (3, 2, 4)
    assert [s.name for s in fd.sites] == ["site0", "site1"]
    ids = []
    for site in fd.sites:
        assert (len(site.train), len(site.val), len(site.test)) == (1, 1, 1)
        assert site.train.images.shape[1:] == (2, 24, 24, 16)
        ids += site.train.ids + site.val.ids + site.test.ids
    assert sorted(ids) == [f"brats_2013_pat000{i}_1" for i in range(1, 7)]
    labels = torch.cat([s.train.masks for s in fd.sites]).unique().tolist()
    assert set(labels) <= {0, 1, 2, 3} and 1 in labels  # edema (file label 2) is class 1


@pytest.mark.realdata
def test_ixi_single_site_partitioned_by_foreground_size() -> None:
    from fedseg.data.folder import check_dataset

    report = check_dataset(_preset("ixi_hh_brain"))
    assert not report.errors and [s.name for s in report.sites] == ["site0", "site1", "site2"]
    ids = [i for s in report.sites for k in ("train", "val", "test") for i in s.splits[k]]
    assert len(ids) == len(set(ids)) == 40 and all(s.cases >= 3 for s in report.sites)
    assert all(s.labels == (0, 1, 2) and s.shapes == ((96, 96, 72),) for s in report.sites)
