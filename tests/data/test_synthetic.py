"""Tests for the synthetic multi-site generator."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from scipy import ndimage

from fedseg.config import DataConfig, SplitConfig, SyntheticDataConfig
from fedseg.data.base import DataError
from fedseg.data.build import build_federated_data
from fedseg.data.synthetic import default_samples_per_site, make_synthetic_federation, site_parameters


def _all(site, attr):
    return torch.cat([getattr(site.train, attr), getattr(site.val, attr), getattr(site.test, attr)])


@pytest.mark.parametrize("dims,size", [(2, 32), (3, 16)])
def test_shapes_dtypes_and_masks(dims: int, size: int) -> None:
    cfg = SyntheticDataConfig(spatial_dims=dims, size=size, samples_per_site=[6, 5, 4], num_classes=3)
    fd = make_synthetic_federation(cfg, SplitConfig(), seed=0)
    assert [s.name for s in fd.sites] == ["site0", "site1", "site2"]
    assert (fd.spatial_dims, fd.in_channels, fd.num_classes) == (dims, 1, 3)
    assert fd.label_names == ["background", "lesion", "core"]
    for site, n in zip(fd.sites, [6, 5, 4]):
        images, masks, spacing = _all(site, "images"), _all(site, "masks"), _all(site, "spacing")
        assert images.shape == (n, 1) + (size,) * dims and images.dtype == torch.float32
        assert masks.shape == (n, 1) + (size,) * dims and masks.dtype == torch.int64
        assert spacing.shape == (n, dims) and spacing.dtype == torch.float64
        assert int(masks.min()) >= 0 and int(masks.max()) < 3
        assert bool((masks > 0).flatten(1).any(1).all()), "every image has foreground"
        flat = images.flatten(1)
        torch.testing.assert_close(flat.mean(1), torch.zeros(n), atol=1e-4, rtol=0)
        torch.testing.assert_close(flat.std(1, unbiased=False), torch.ones(n), atol=1e-3, rtol=0)
        ids = site.train.ids + site.val.ids + site.test.ids
        assert len(set(ids)) == n and all(i.startswith(f"{site.name}_") for i in ids)


def test_split_sizes_disjoint_and_imbalanced_default() -> None:
    fd = make_synthetic_federation(SyntheticDataConfig(size=16), SplitConfig(), seed=3)
    sizes = [len(s.train) + len(s.val) + len(s.test) for s in fd.sites]
    assert sizes == default_samples_per_site(3, 2) == [48, 31, 20]
    assert sizes[0] > sizes[1] > sizes[2]
    assert default_samples_per_site(3, 3) == [16, 11, 8]
    assert len(default_samples_per_site(5, 2)) == 5
    for site in fd.sites:
        train, val, test = set(site.train.ids), set(site.val.ids), set(site.test.ids)
        assert not (train & val or train & test or val & test)
        assert len(train) >= 1 and len(val) >= 1 and len(test) >= 1


def test_foreground_fraction_in_range() -> None:
    fd = make_synthetic_federation(SyntheticDataConfig(size=48, samples_per_site=[30, 30, 30]), SplitConfig(), 1)
    for site in fd.sites:
        frac = (_all(site, "masks") > 0).flatten(1).float().mean(1)
        assert float(frac.min()) > 0.015 and float(frac.max()) < 0.3


def test_same_seed_identical_different_seed_differs() -> None:
    cfg = SyntheticDataConfig(size=24, samples_per_site=[5, 4, 3])
    a = make_synthetic_federation(cfg, SplitConfig(), seed=7)
    b = make_synthetic_federation(cfg, SplitConfig(), seed=7)
    c = make_synthetic_federation(cfg, SplitConfig(), seed=8)
    for sa, sb, sc in zip(a.sites, b.sites, c.sites):
        for part in ("train", "val", "test"):
            pa, pb = getattr(sa, part), getattr(sb, part)
            assert torch.equal(pa.images, pb.images) and torch.equal(pa.masks, pb.masks)
            assert pa.ids == pb.ids
        assert not torch.equal(_all(sa, "masks").sort(0).values, _all(sc, "masks").sort(0).values)
        assert not torch.equal(_all(sa, "images").sort(0).values, _all(sc, "images").sort(0).values)


def test_sites_differ_like_scanners() -> None:
    cfg = SyntheticDataConfig(size=32, samples_per_site=[10, 10, 10])
    params = site_parameters(cfg, seed=0)
    assert len({p.spacing for p in params}) == 3
    assert params[0].spacing == (1.0, 1.0) and params[1].spacing == (0.8, 0.8)
    for key in ("gamma", "contrast", "noise", "blur", "bias"):
        assert len({round(getattr(p, key), 6) for p in params}) == 3, key
    fd = make_synthetic_federation(cfg, SplitConfig(), seed=0)
    # Noise level survives the z-score: compare high-frequency residual energy.
    hf = []
    for site in fd.sites:
        img = _all(site, "images")[:, 0].numpy()
        hf.append(float((img - ndimage.gaussian_filter(img, (0, 1.5, 1.5))).std()))
    noisiest, cleanest = int(np.argmax([p.noise for p in params])), int(np.argmin([p.noise for p in params]))
    assert hf[noisiest] > 1.5 * hf[cleanest]
    spacing = {tuple(_all(s, "spacing")[0].tolist()) for s in fd.sites}
    assert len(spacing) == 3


def test_3d_spacing_anisotropic() -> None:
    params = site_parameters(SyntheticDataConfig(spatial_dims=3), seed=0)
    assert params[0].spacing == (1.0, 1.0, 2.5)
    assert all(len(p.spacing) == 3 for p in params)


def test_lesion_brighter_than_background() -> None:
    fd = make_synthetic_federation(SyntheticDataConfig(size=32, samples_per_site=[8, 8, 8]), SplitConfig(), 0)
    for site in fd.sites:
        img, msk = _all(site, "images"), _all(site, "masks")
        assert float(img[msk > 0].mean()) > float(img[msk == 0].mean()) + 0.5


def test_bad_samples_per_site() -> None:
    with pytest.raises(DataError, match="samples_per_site"):
        make_synthetic_federation(SyntheticDataConfig(samples_per_site=[3, 3]), SplitConfig(), 0)


def test_build_dispatches_to_synthetic() -> None:
    cfg = DataConfig(synthetic=SyntheticDataConfig(size=16, samples_per_site=[3, 3], num_sites=2, num_classes=4))
    fd = build_federated_data(cfg, seed=0)
    assert [s.name for s in fd.sites] == ["site0", "site1"]
    assert fd.num_classes == 4 and fd.in_channels == 1 and fd.spatial_dims == 2
    assert fd.label_names == ["background", "lesion", "core", "inner_core"]
