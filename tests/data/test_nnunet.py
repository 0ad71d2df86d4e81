"""nnU-Net raw datasets as sites (fedseg.data.nnunet): tiny datasets generated in tmp_path."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from typer.testing import CliRunner

from conftest import tiny_config
from fedseg.cli.main import app
from fedseg.config import DataConfig, config_from_dict
from fedseg.data.base import DataError
from fedseg.data.build import build_federated_data
from fedseg.data.folder import check_dataset, resolved
from fedseg.engine.rundir import read_metrics
from fedseg.runtime.sim import run_inprocess

LABELS_3D = {"background": 0, "edema": 1, "tumour": 2}


def write_dataset(folder: Path, cases: int, *, channels: tuple[str, ...] = ("T2", "ADC"),
                  labels: dict[str, Any] | None = None, ending: str = ".nii.gz", rgb: bool = False,
                  values: tuple[int, ...] = (1, 2), seed: int = 0) -> None:
    """An nnU-Net raw dataset: dataset.json, imagesTr/<case>_000k<ending>, labelsTr/<case><ending>."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(seed)
    for i in range(cases):
        case = f"{folder.name.split('_')[-1].lower()}_{i:03d}"
        if ending == ".nii.gz":
            shape = (8, 6, 4)
            for c in range(len(channels)):
                img = nib.Nifti1Image((rng.random(shape) * 100 + c).astype(np.float32), np.eye(4))
                nib.save(img, str(folder / "imagesTr" / f"{case}_{c:04d}.nii.gz"))
            mask = np.zeros(shape, dtype=np.uint8)
            for k, value in enumerate(values):
                mask[2 * k : 2 * k + 2, 1:3, 1:3] = value
            nib.save(nib.Nifti1Image(mask, np.eye(4)), str(folder / "labelsTr" / f"{case}.nii.gz"))
        else:
            pixels = rng.integers(0, 255, size=(12, 10, 3) if rgb else (12, 10), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "imagesTr" / f"{case}_0000.png")
            mask = np.zeros((12, 10), dtype=np.uint8)
            for k, value in enumerate(values):
                mask[3 * k : 3 * k + 3, 2:6] = value
            Image.fromarray(mask).save(folder / "labelsTr" / f"{case}.png")
    meta = {"channel_names": {str(i): n for i, n in enumerate(channels)}, "labels": labels or LABELS_3D,
            "numTraining": cases, "file_ending": ending}
    (folder / "dataset.json").write_text(json.dumps(meta))


def _cfg(root: Path, **kw: Any) -> DataConfig:
    return DataConfig(source="nnunet", root=root, split={"train": 0.5, "val": 0.25, "test": 0.25}, **kw)


def _count(site: Any) -> int:
    return len(site.train) + len(site.val) + len(site.test)


def _messages(cfg: DataConfig) -> str:
    return "\n".join(str(p) for p in check_dataset(cfg).errors)


def test_3d_datasets_one_per_site_load_with_their_channels_and_labels(tmp_path: Path) -> None:
    write_dataset(tmp_path / "Dataset001_Alpha", 4)
    write_dataset(tmp_path / "Dataset002_Beta", 5, seed=1)
    (tmp_path / "notes").mkdir()  # a folder that is not a dataset is ignored
    data = build_federated_data(_cfg(tmp_path), seed=0)
    assert [s.name for s in data.sites] == ["Dataset001_Alpha", "Dataset002_Beta"]
    assert (data.spatial_dims, data.in_channels, data.num_classes) == (3, 2, 3)
    assert data.label_names == ["background", "edema", "tumour"]
    assert [_count(s) for s in data.sites] == [4, 5]
    train = data.sites[0].train
    assert tuple(train.images.shape[1:]) == (2, 8, 6, 4) and train.masks is not None
    assert set(torch.unique(train.masks).tolist()) == {0, 1, 2}
    assert all(i.startswith("alpha_") for i in train.ids)
    assert resolved(_cfg(tmp_path))[0].channel_names == ["T2", "ADC"]
    # the explicit list: data.sites picks dataset folders
    only = build_federated_data(_cfg(tmp_path, sites=["Dataset002_Beta"]), seed=0)
    assert [s.name for s in only.sites] == ["Dataset002_Beta"]


def test_png_datasets_grey_and_rgb_map_label_values_to_classes(tmp_path: Path) -> None:
    labels = {"background": 0, "lesion": 2}  # not 0..n-1: mapped by increasing value
    write_dataset(tmp_path / "Dataset010_Grey", 4, channels=("US",), labels=labels, ending=".png", values=(2,))
    data = build_federated_data(_cfg(tmp_path), seed=0)
    assert (data.spatial_dims, data.in_channels, data.num_classes) == (2, 1, 2)
    assert data.label_names == ["background", "lesion"]
    masks = data.sites[0].train.masks
    assert masks is not None and set(torch.unique(masks).tolist()) == {0, 1}

    rgb = tmp_path / "rgb"
    write_dataset(rgb / "Dataset011_Colour", 4, channels=("R", "G", "B"), labels=labels, ending=".png", rgb=True,
                  values=(2,))
    data = build_federated_data(_cfg(rgb), seed=0)
    assert data.in_channels == 3 and tuple(data.sites[0].train.images.shape[1:]) == (3, 12, 10)


@pytest.mark.parametrize("kind", ["csv", "json_by_case", "json_by_site"])
def test_one_dataset_split_into_sites_by_a_site_file(tmp_path: Path, kind: str) -> None:
    ds = tmp_path / "Dataset003_Pooled"
    write_dataset(ds, 8, channels=("CT",), labels={"background": 0, "organ": 1}, values=(1,))
    cases = [f"pooled_{i:03d}" for i in range(8)]
    site_of = {c: ("north" if i < 5 else "south") for i, c in enumerate(cases)}
    if kind == "csv":
        path = ds / "sites.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "site", "patient"])
            writer.writerows([c, site_of[c], f"p{i // 2}"] for i, c in enumerate(cases))
        extra: dict[str, Any] = {"group_column": "patient"}
    else:
        path = ds / "sites.json"
        by_site = {s: [c for c in cases if site_of[c] == s] for s in ("north", "south")}
        path.write_text(json.dumps(site_of if kind == "json_by_case" else by_site))
        extra = {}
    data = build_federated_data(_cfg(ds, nnunet={"site_file": path.name}, **extra), seed=0)
    assert [s.name for s in data.sites] == ["north", "south"]
    assert [_count(s) for s in data.sites] == [5, 3]
    assert (data.in_channels, data.num_classes, data.label_names) == (1, 2, ["background", "organ"])
    if kind == "csv":  # the two cases of one patient never straddle two splits
        for site in data.sites:
            patients = [{i.split("_")[1] for i in part.ids} for part in (site.train, site.val, site.test)]
            groups = [{int(c) // 2 for c in p} for p in patients]
            assert all(not (a & b) for k, a in enumerate(groups) for b in groups[k + 1 :])


def test_missing_dataset_json_and_missing_files_are_named(tmp_path: Path) -> None:
    write_dataset(tmp_path / "Dataset001_Alpha", 4)
    write_dataset(tmp_path / "Dataset002_Beta", 4)
    (tmp_path / "Dataset002_Beta" / "dataset.json").unlink()
    (tmp_path / "Dataset001_Alpha" / "imagesTr" / "alpha_001_0001.nii.gz").unlink()
    (tmp_path / "Dataset001_Alpha" / "labelsTr" / "alpha_002.nii.gz").unlink()
    text = _messages(_cfg(tmp_path))
    assert "Dataset002_Beta/dataset.json: missing: Dataset002_Beta has imagesTr/ but no dataset.json" in text
    assert "case 'alpha_001': channel file(s) alpha_001_0001.nii.gz missing (dataset.json channel_names has 2: " \
           "T2, ADC)" in text
    assert "case 'alpha_002': label file alpha_002.nii.gz missing" in text
    with pytest.raises(DataError, match="alpha_001_0001.nii.gz missing"):
        build_federated_data(_cfg(tmp_path), seed=0)


def test_sites_whose_dataset_json_disagree_are_refused_naming_the_site_and_key(tmp_path: Path) -> None:
    write_dataset(tmp_path / "Dataset001_Alpha", 4)
    write_dataset(tmp_path / "Dataset002_Beta", 4, labels={"background": 0, "edema": 1, "necrosis": 2})
    text = _messages(_cfg(tmp_path))
    assert "site Dataset002_Beta: dataset.json labels {background: 0, edema: 1, necrosis: 2} differs from site " \
           "Dataset001_Alpha's {background: 0, edema: 1, tumour: 2}" in text


@pytest.mark.parametrize(("meta", "expected"), [
    ({"labels": {"background": 0, "whole tumour": [1, 2]}}, "region-based labels (whole tumour list several values)"),
    ({"labels": {"background": 0, "a": 1, "ignore": 2}}, "an 'ignore' label is not supported"),
    ({"labels": {"a": 1, "b": 2}}, "no label has value 0"),
    ({"file_ending": ".mha"}, "file_ending '.mha' is not one fedseg reads"),
    ({"channel_names": {"0": "T2", "2": "ADC"}}, "channel_names keys must run 0, 1, ... without a gap"),
    ({"channel_names": None, "modality": {"0": "T2"}}, "an nnU-Net v1 file"),
])
def test_dataset_json_problems_are_explained(tmp_path: Path, meta: dict[str, Any], expected: str) -> None:
    ds = tmp_path / "Dataset001_Alpha"
    write_dataset(ds, 2)
    raw = json.loads((ds / "dataset.json").read_text())
    raw.update(meta)
    raw = {k: v for k, v in raw.items() if v is not None}
    (ds / "dataset.json").write_text(json.dumps(raw))
    assert expected in _messages(_cfg(tmp_path))


def test_site_file_and_config_contradictions_are_errors(tmp_path: Path) -> None:
    ds = tmp_path / "Dataset003_Pooled"
    write_dataset(ds, 4)
    (ds / "sites.json").write_text(json.dumps({"pooled_000": "a", "pooled_001": "b", "pooled_009": "b"}))
    text = _messages(_cfg(ds, nnunet={"site_file": "sites.json"}))
    assert "no site for case(s) pooled_002, pooled_003" in text
    assert "data.channels: is 3 but" in _messages(_cfg(tmp_path, channels=3))
    assert not check_dataset(_cfg(tmp_path, channels=1, num_classes=2)).errors  # defaults count as unset
    with pytest.raises(ValueError, match="data.root is required when data.source is 'nnunet'"):
        DataConfig(source="nnunet")


def test_data_check_recognises_an_nnunet_root_without_a_config(tmp_path: Path) -> None:
    write_dataset(tmp_path / "Dataset001_Alpha", 4)
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "(3D) — no config: nnU-Net dataset(s), channels and labels from dataset.json" in text
    assert "Dataset001" in text and "0, 1, 2" in text  # the table may shorten the site name to the terminal


@pytest.mark.slow
def test_fedavg_runs_one_round_on_nnunet_datasets(tmp_path: Path) -> None:
    for k, name in enumerate(("Dataset001_Alpha", "Dataset002_Beta")):
        write_dataset(tmp_path / "data" / name, 6, channels=("US",), labels={"background": 0, "lesion": 1},
                      ending=".png", values=(1,), seed=k)
    raw = tiny_config(rounds=1, data={"source": "nnunet", "root": str(tmp_path / "data"),
                                      "preprocess": {"target_shape": [16, 16]}})
    del raw["data"]["synthetic"]
    run_inprocess(config_from_dict(raw), tmp_path / "run", write_report=False)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    trained = {r["site"] for r in records if r.get("kind") == "train"}
    assert trained == {"Dataset001_Alpha", "Dataset002_Beta"}
