"""Mixed supervision: weak labels derived from masks or read from files, and what never gets read."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import tiny_config
from fake_datasets import write_metadata, write_png_case
from fedseg.config import ConfigError, DataConfig, config_from_dict
from fedseg.data import folder
from fedseg.data.base import DataError, MissingMaskError
from fedseg.data.build import build_federated_data
from fedseg.data.supervision import (
    SUPERVISION_CODES,
    WeakKey,
    box_bounds,
    boxes_from_masks,
    image_labels_from_masks,
)


# ---------------------------------------------------------------------------------------------- derive
@pytest.mark.parametrize("dims", [2, 3])
def test_derived_box_contains_the_mask_with_margins_in_range(dims: int) -> None:
    spatial = (20,) * dims
    masks = torch.zeros(4, 1, *spatial, dtype=torch.long)
    masks[0, 0][(slice(5, 9),) * dims] = 1
    masks[1, 0][(slice(0, 3),) * dims] = 1  # touches the border: clamped
    masks[2, 0][(slice(15, 20),) * dims] = 2  # another class, other border
    boxes = boxes_from_masks(masks, (1, 3), np.random.default_rng(0))
    assert boxes.shape == masks.shape and boxes.dtype == torch.uint8
    assert bool((boxes[masks > 0] == 1).all())  # every foreground voxel is inside its box
    assert int(boxes[3].sum()) == 0  # no foreground: empty box
    for i in range(3):
        mask_lo, mask_hi = box_bounds(masks[i, 0])  # type: ignore[misc]
        box_lo, box_hi = box_bounds(boxes[i, 0])  # type: ignore[misc]
        for d in range(dims):
            assert box_lo[d] == 0 if mask_lo[d] == 0 else 1 <= mask_lo[d] - box_lo[d] <= 3
            assert box_hi[d] == 20 if mask_hi[d] == 20 else 1 <= box_hi[d] - mask_hi[d] <= 3


def test_fixed_margin_and_seeded_draws() -> None:
    masks = torch.zeros(2, 1, 12, 12, dtype=torch.long)
    masks[:, 0, 4:6, 5:8] = 1
    fixed = boxes_from_masks(masks, (2, 2), np.random.default_rng(0))
    assert box_bounds(fixed[0, 0]) == ([2, 3], [8, 10])
    a = boxes_from_masks(masks, (0, 4), np.random.default_rng(7))
    b = boxes_from_masks(masks, (0, 4), np.random.default_rng(7))
    assert torch.equal(a, b)


def test_image_labels_mark_present_classes() -> None:
    masks = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    masks[0, 0, 0, 0] = 2
    out = image_labels_from_masks(masks, 3)
    assert out.tolist() == [[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]]


def _weak_cfg(**data: Any) -> DataConfig:
    cfg = tiny_config(sites=3, data={"supervision": {"site1": "box", "site2": "image"}, **data})
    return config_from_dict(cfg).data


def test_derive_drops_weak_training_masks_only() -> None:
    plain = build_federated_data(_weak_cfg(supervision={}), 0)
    data = build_federated_data(_weak_cfg(), 0)
    assert data.site("site0").train.masks is not None
    for name, kind in (("site1", "box"), ("site2", "image")):
        site, ref = data.site(name), plain.site(name)
        assert site.train.masks is None and site.train.supervision == kind
        with pytest.raises(MissingMaskError, match=f"{kind}-supervised"):
            site.train.pixel_masks()
        assert torch.equal(site.val.pixel_masks(), ref.val.pixel_masks())  # evaluation keeps its masks
        assert torch.equal(site.test.pixel_masks(), ref.test.pixel_masks())
        assert site.train.weak[WeakKey.SUPERVISION].tolist() == [SUPERVISION_CODES[kind]] * len(site.train)
    box = data.site("site1").train.weak[WeakKey.BOX_MASK]
    assert bool((box[plain.site("site1").train.pixel_masks() > 0] == 1).all())
    labels = data.site("site2").train.weak[WeakKey.IMAGE_LABEL]
    assert torch.equal(labels, image_labels_from_masks(plain.site("site2").train.pixel_masks(), 2))


def test_unknown_site_and_kind_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"data.supervision names unknown site\(s\) 'site7'"):
        build_federated_data(_weak_cfg(supervision={"site7": "box"}), 0)
    with pytest.raises(ConfigError, match=r"data.supervision.site1"):
        _weak_cfg(supervision={"site1": "bbox"})
    with pytest.raises(ConfigError, match="box_margin"):
        _weak_cfg(weak_labels={"box_margin": [5, 2]})
    with pytest.raises(ConfigError, match="needs data.source 'folder'"):
        _weak_cfg(weak_labels={"source": "files"})


# ---------------------------------------------------------------------------------------------- files
def _folder(root: Path, n: int = 10) -> None:
    for site in ("A", "B"):
        rows = []
        for i in range(n):
            write_png_case(root / site, f"{site}{i}", size=(16, 12), seed=i)
            rows.append({"id": f"{site}{i}", "case": f"{site}{i}"})
        write_metadata(root / site, rows)


def _files_cfg(root: Path, kind: str = "box", **extra: Any) -> DataConfig:
    return DataConfig(source="folder", root=root, cache=False, supervision={"B": kind},  # type: ignore[dict-item]
                      weak_labels={"source": "files"}, **extra)  # type: ignore[arg-type]


def _boxes(root: Path, n: int = 10, **override: dict[str, int]) -> None:
    # the PNG mask square is rows 4..7, columns 3..5 (inclusive) of a 16x12 image
    boxes = {f"B{i}": {"x_min": 2, "y_min": 3, "x_max": 6, "y_max": 8} for i in range(n)}
    boxes.update(override)
    (root / "B" / "boxes.json").write_text(json.dumps(boxes))


def test_files_mode_never_opens_weak_training_masks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _folder(tmp_path)
    _boxes(tmp_path)
    opened: list[str] = []
    original = folder.read_mask

    def spy(path: Any) -> Any:
        opened.append(Path(path).stem)
        return original(path)

    monkeypatch.setattr(folder, "read_mask", spy)
    data = build_federated_data(_files_cfg(tmp_path), 0)
    weak = data.site("B")
    assert weak.train.masks is None and len(weak.train) > 0
    assert not set(weak.train.ids) & set(opened)  # the spy: no training mask file of B was read
    assert set(weak.val.ids) | set(weak.test.ids) <= set(opened)  # evaluation masks are read
    assert set(data.site("A").train.ids) <= set(opened)
    box = weak.train.weak[WeakKey.BOX_MASK]
    expected = torch.zeros(16, 12, dtype=torch.uint8)
    expected[3:9, 2:7] = 1
    assert all(torch.equal(b[0], expected) for b in box)
    # same split as without weak labels: the plan from names equals the real split
    pixel = build_federated_data(DataConfig(source="folder", root=tmp_path, cache=False), 0)
    assert pixel.site("B").train.ids == weak.train.ids


def test_files_mode_boxes_csv_and_resampling(tmp_path: Path) -> None:
    _folder(tmp_path)
    lines = ["id,x_min,y_min,x_max,y_max"] + [f"B{i},0,0,5,7" for i in range(10)]
    (tmp_path / "B" / "boxes.csv").write_text("\n".join(lines) + "\n")
    data = build_federated_data(_files_cfg(tmp_path, image_size=[32, 24]), 0)
    box = data.site("B").train.weak[WeakKey.BOX_MASK]
    assert box.shape[2:] == (32, 24)  # preprocessed like a mask: top-left half in both axes
    assert int(box[0, 0, :16, :12].min()) == 1 and int(box[0, 0, 16:].max()) == 0 and int(box[0, 0, :, 12:].max()) == 0


def test_files_mode_image_labels(tmp_path: Path) -> None:
    _folder(tmp_path)
    (tmp_path / "B" / "labels.csv").write_text("id,label\n" + "".join(f"B{i},{i % 2}\n" for i in range(10)))
    data = build_federated_data(_files_cfg(tmp_path, kind="image"), 0)
    train = data.site("B").train
    assert train.masks is None and train.supervision == "image"
    expected = [[1.0, float(int(i[1:]) % 2)] for i in train.ids]
    assert train.weak[WeakKey.IMAGE_LABEL].tolist() == expected


def test_files_mode_errors_name_the_file_and_case(tmp_path: Path) -> None:
    _folder(tmp_path)
    with pytest.raises(DataError, match="without boxes.json or boxes.csv"):
        build_federated_data(_files_cfg(tmp_path), 0)
    _boxes(tmp_path, n=3)  # most training images have no box
    with pytest.raises(DataError, match=r"boxes.json: no box for training image 'B\d'"):
        build_federated_data(_files_cfg(tmp_path), 0)
    _boxes(tmp_path, **{f"B{i}": {"x_min": 2, "y_min": 3, "x_max": 12, "y_max": 8} for i in range(10)})
    with pytest.raises(DataError, match=r"box of 'B\d' lies outside the image \(x 2..12 not in 0..11"):
        build_federated_data(_files_cfg(tmp_path), 0)
    (tmp_path / "B" / "labels.csv").write_text("id,lesion\nB0,1\n")
    with pytest.raises(DataError, match=r"labels.csv: needs columns 'id' and label or foreground"):
        build_federated_data(_files_cfg(tmp_path, kind="image"), 0)


# ---------------------------------------------------------------------------------------------- mask-less
def _drop_masks(site: Path, ids: Any = None) -> None:
    """Delete the mask files of ``ids`` (all and the masks/ folder when None)."""
    for path in sorted((site / "masks").iterdir()):
        if ids is None or path.stem in ids:
            path.unlink()
    if ids is None:
        (site / "masks").rmdir()


def test_box_site_without_any_mask_trains_with_fedmix_and_reports(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    from fedseg.runtime.sim import run_inprocess

    root = tmp_path / "data"
    _folder(root, n=6)
    _drop_masks(root / "B")  # a hospital with boxes only: no masks/ folder at all
    _boxes(root, n=6)
    report = folder.check_dataset(_files_cfg(root))
    assert not report.errors, report.errors
    site_b = next(s for s in report.sites if s.name == "B")
    assert len(site_b.splits["train"]) == 6 and not site_b.splits["val"] and not site_b.splits["test"]
    assert [p.message for p in report.warnings if p.site == "B"] == [
        "no image has a mask: all 6 case(s) are training cases (weak labels only), the val and test splits are "
        "empty and the site gets no evaluation metrics (reports show it without val/test rows)"]
    cfg = tiny_config({"name": "fedmix"}, rounds=1, train={"optimizer_state": "persist"})
    cfg["data"] = {"source": "folder", "root": str(root), "cache": False, "supervision": {"B": "box"},
                   "weak_labels": {"source": "files"}}
    with caplog.at_level("WARNING"):
        result = run_inprocess(config_from_dict(cfg), tmp_path / "run")
    assert any("no image has a mask" in r.getMessage() for r in caplog.records)  # said at run start
    run_dir = tmp_path / "run"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["site"] for r in records if r["kind"] == "train"} == {"A", "B"}  # B trained
    assert {r["site"] for r in records if r["kind"] == "eval"} == {"A"}  # no evaluation row for B
    assert set(result.summary["test"]["global"]) == {"A"}
    text = (run_dir / "report.md").read_text()
    assert re.search(r"^\| B \| \d+ \| – \| – \|$", text, re.M)  # Data table: B trains, no val/test n
    assert "Not evaluated (no test case): B; left out of the tables and their means" in text


def test_mixed_weak_site_keeps_masked_cases_in_val_and_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _folder(tmp_path, n=12)
    maskless = {f"B{i}" for i in range(6, 12)}
    _drop_masks(tmp_path / "B", maskless)
    _boxes(tmp_path, n=12)
    assert not folder.check_dataset(_files_cfg(tmp_path)).errors
    opened: list[str] = []
    original = folder.read_mask
    monkeypatch.setattr(folder, "read_mask", lambda path: opened.append(Path(path).stem) or original(path))
    weak = build_federated_data(_files_cfg(tmp_path), 0).site("B")
    assert maskless <= set(weak.train.ids)  # images without mask train
    assert weak.val.ids and weak.test.ids  # the masked cases split as configured
    assert not (set(weak.val.ids) | set(weak.test.ids)) & maskless
    assert not set(weak.train.ids) & set(opened) and set(weak.val.ids) | set(weak.test.ids) <= set(opened)
    # a patient with an image without mask trains whole (no patient straddles train and val/test)
    _folder(tmp_path, n=12)  # every mask back
    write_metadata(tmp_path / "B", [{"id": f"B{i}", "case": f"p{i // 2}"} for i in range(12)])
    _drop_masks(tmp_path / "B", {"B0"})  # p0 = B0 (no mask) + B1 (mask)
    cfg = _files_cfg(tmp_path, group_column="case")
    weak = build_federated_data(cfg, 0).site("B")
    assert {"B0", "B1"} <= set(weak.train.ids) and weak.test.ids
    # a split file may not put an image without mask into val/test
    (tmp_path / "split.json").write_text(json.dumps({"sites": {
        "A": {"train": [f"A{i}" for i in range(8)], "val": ["A8", "A9"], "test": ["A10", "A11"]},
        "B": {"train": [f"B{i}" for i in range(1, 8)], "val": ["B0"], "test": ["B8"]}}}))
    with pytest.raises(DataError, match=r"case\(s\) B0 have no mask file but are listed under val/test"):
        build_federated_data(_files_cfg(tmp_path, split_file=tmp_path / "split.json"), 0)


def test_missing_box_of_an_image_without_mask_names_file_and_case(tmp_path: Path) -> None:
    _folder(tmp_path, n=6)
    _drop_masks(tmp_path / "B", {"B5"})
    _boxes(tmp_path, n=5)  # B0..B4 only
    with pytest.raises(DataError, match=r"B/boxes.json: no box for training image 'B5'"):
        build_federated_data(_files_cfg(tmp_path), 0)
    errors = folder.check_dataset(_files_cfg(tmp_path)).errors
    assert any("no box for training image 'B5'" in p.message for p in errors)


def test_an_image_without_mask_is_still_an_error_at_pixel_sites_and_in_derive_mode(tmp_path: Path) -> None:
    _folder(tmp_path, n=6)
    _boxes(tmp_path, n=6)
    _drop_masks(tmp_path / "A", {"A2"})  # pixel site, files mode
    with pytest.raises(DataError, match=r"A2.png: image without mask: no mask A2.\* in"):
        build_federated_data(_files_cfg(tmp_path), 0)
    _folder(tmp_path, n=6)  # restore A2
    _drop_masks(tmp_path / "B", {"B2"})  # weak site, derive mode
    cfg = DataConfig(source="folder", root=tmp_path, cache=False, supervision={"B": "box"})  # type: ignore[dict-item]
    with pytest.raises(DataError, match=r"B2.png: image without mask"):
        build_federated_data(cfg, 0)
    assert any("image without mask" in p.message for p in folder.check_dataset(cfg).errors)
