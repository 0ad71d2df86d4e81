from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from fedseg.config import LabelCorruptionConfig, config_from_dict
from fedseg.data.base import DataError, FederatedData, SegmentationSet, SiteData
from fedseg.data.corrupt import apply_label_corruption, corrupt_masks


def _masks() -> torch.Tensor:
    m = torch.zeros(3, 1, 9, 9, dtype=torch.long)
    m[0, 0, 3:6, 3:6] = 1
    m[1, 0, 4, 4] = 2
    m[2, 0, 0, 0] = 1
    return m


def test_dilate_grows_every_class_into_background_only() -> None:
    out = corrupt_masks(_masks(), "dilate", radius=1)
    assert int((out[0] == 1).sum()) == 25 and int((out[1] == 2).sum()) == 9 and int((out[2] == 1).sum()) == 4
    touching = torch.zeros(1, 1, 5, 5, dtype=torch.long)
    touching[0, 0, 2, 1], touching[0, 0, 2, 3] = 1, 2
    grown = corrupt_masks(touching, "dilate", radius=1)
    assert grown[0, 0, 2, 1] == 1 and grown[0, 0, 2, 3] == 2  # classes never overwrite each other


def test_erode_shrinks_foreground_to_background() -> None:
    out = corrupt_masks(_masks(), "erode", radius=1)
    assert int((out[0] == 1).sum()) == 1 and int((out[1] == 2).sum()) == 0


def test_dilate_works_in_3d() -> None:
    m = torch.zeros(1, 1, 5, 5, 5, dtype=torch.long)
    m[0, 0, 2, 2, 2] = 1
    assert int(corrupt_masks(m, "dilate", radius=1).sum()) == 27


def test_shuffle_gives_every_image_another_images_mask_reproducibly() -> None:
    m = _masks()
    out = corrupt_masks(m, "shuffle", seed=3)
    assert all(not torch.equal(out[i], m[i]) for i in range(3))
    assert sorted(int(x.sum()) for x in out) == sorted(int(x.sum()) for x in m)
    assert torch.equal(out, corrupt_masks(m, "shuffle", seed=3))


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="allowed: dilate, erode, shuffle"):
        corrupt_masks(_masks(), "flip")
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        corrupt_masks(torch.zeros(3, 9, 9, dtype=torch.long), "dilate")


def _data() -> FederatedData:
    def split() -> SegmentationSet:
        return SegmentationSet(images=torch.zeros(3, 1, 9, 9), masks=_masks(), spacing=torch.ones(3, 2))

    sites = [SiteData(name, split(), split(), split()) for name in ("a", "b")]
    return FederatedData(sites=sites, spatial_dims=2, in_channels=1, num_classes=3)


def test_only_the_named_site_and_splits_change_never_test() -> None:
    data = _data()
    out = apply_label_corruption(data, LabelCorruptionConfig(site="b", mode="dilate", radius=1, splits=["train"]), 0)
    assert not torch.equal(out.site("b").train.masks, _masks())
    assert torch.equal(out.site("b").val.masks, _masks()) and torch.equal(out.site("b").test.masks, _masks())
    assert torch.equal(out.site("a").train.masks, _masks())
    assert torch.equal(data.site("b").train.masks, _masks())  # the input is not modified
    with pytest.raises(DataError, match="'c' is not a site; sites: a, b"):
        apply_label_corruption(data, LabelCorruptionConfig(site="c"), 0)


def test_config_rejects_test_split_and_the_run_applies_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Exception, match="splits"):
        config_from_dict(tiny_config(data={"corrupt_labels": {"site": "site1", "splits": ["test"]}}))
    import fedseg.runtime.common as common
    import fedseg.runtime.sim as sim
    from fedseg.data.build import build_federated_data

    seen: list[FederatedData] = []

    def spy(data: FederatedData, cfg: LabelCorruptionConfig, seed: int) -> FederatedData:
        out = apply_label_corruption(data, cfg, seed)
        seen.append(out)
        return out

    monkeypatch.setattr(common, "apply_label_corruption", spy)
    cfg = config_from_dict(tiny_config(rounds=1, data={"corrupt_labels": {"site": "site1", "mode": "shuffle"}}))
    sim.run_inprocess(cfg, tmp_path / "r", write_report=False)
    assert len(seen) == 1
    clean = build_federated_data(cfg.data, cfg.seed)
    assert not torch.equal(seen[0].site("site1").train.masks, clean.site("site1").train.masks)
    assert torch.equal(seen[0].site("site1").test.masks, clean.site("site1").test.masks)
