"""Site fingerprints: merging equals pooling, exactly; nothing per case; noise."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedseg.planning.fingerprint import (
    Fingerprint,
    add_noise,
    case_fingerprint,
    merge,
    percentile_of_counts,
)


def _cases(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, tuple[float, ...]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        shape = tuple(int(v) for v in rng.integers(4, 9, size=3))
        spacing = tuple(float(v) for v in rng.choice([0.5, 0.8, 1.0, 3.0], size=3))
        image = rng.integers(-1100, 1500, size=(2, *shape)).astype(np.float32)
        image[:, 0] = 0  # a zero border: the non-zero box is smaller than the image
        mask = rng.integers(0, 3, size=shape)
        out.append((image, mask, spacing))
    return out


def _exact(fp: Fingerprint) -> dict[str, object]:
    d = fp.to_dict()
    for key in ("intensity_sum", "intensity_sumsq"):
        d.pop(key)
    return d


def test_merging_sites_equals_the_pooled_fingerprint_exactly() -> None:
    cases = _cases(9)
    per_case = [case_fingerprint(i, m, s, 3) for i, m, s in cases]
    sites = [merge(per_case[:2]), merge(per_case[2:7]), merge(per_case[7:])]
    pooled = merge(per_case)
    merged = merge(sites)
    assert _exact(merged) == _exact(pooled)
    assert _exact(merge(reversed(sites))) == _exact(pooled)  # order does not matter
    np.testing.assert_allclose(merged.intensity_sum, pooled.intensity_sum, rtol=1e-12)
    np.testing.assert_allclose(merged.intensity_sumsq, pooled.intensity_sumsq, rtol=1e-12)


def test_statistics_match_numpy_on_the_pooled_cases() -> None:
    cases = _cases(7, seed=1)
    fp = merge(case_fingerprint(i, m, s, 3) for i, m, s in cases)
    spacings = np.array([s for _, _, s in cases])
    for a in range(3):
        assert math.isclose(percentile_of_counts(*fp.spacings_mm(a), 50), float(np.median(spacings[:, a])))
        assert math.isclose(percentile_of_counts(*fp.spacings_mm(a), 10), float(np.percentile(spacings[:, a], 10)))
    for c in range(2):
        voxels = np.concatenate([img[c][m > 0] for img, m, _ in cases]).astype(np.float64)
        for q in (0.5, 50, 99.5):  # integer intensities: the unit-bin histogram is exact
            assert fp.intensity_percentile(c, q) == pytest.approx(float(np.percentile(voxels, q)), abs=1e-9)
        mean, std = fp.intensity_mean_std(c)
        assert mean == pytest.approx(voxels.mean()) and std == pytest.approx(voxels.std())
    labels = np.concatenate([m.ravel() for _, m, _ in cases])
    assert fp.class_voxels == np.bincount(labels, minlength=3).tolist()
    assert fp.num_cases == 7


def test_round_trip_and_layout_mismatch() -> None:
    fp = merge(case_fingerprint(i, m, s, 3) for i, m, s in _cases(3))
    assert Fingerprint.from_dict(json.loads(json.dumps(fp.to_dict()))).to_dict() == fp.to_dict()
    with pytest.raises(ValueError, match="disagree"):
        merge([fp, Fingerprint(2, 2, 3)])
    with pytest.raises(ValueError, match="missing key"):
        Fingerprint.from_dict({"spatial_dims": 3})


def test_crop_size_of_a_zero_border() -> None:
    image = np.zeros((1, 4, 4, 4), np.float32)
    image[0, 1:3, :, :] = 5.0  # half of axis 0 non-zero
    fp = case_fingerprint(image, np.zeros((4, 4, 4), np.int64), (1.0, 1.0, 1.0), 2)
    assert fp.median_crop_size() == 0.5
    assert fp.intensity_count == [0]  # no foreground voxel


def test_noise_changes_counts_only_and_is_seeded() -> None:
    fp = merge(case_fingerprint(i, m, s, 3) for i, m, s in _cases(6))
    a = add_noise(fp, 1.0, np.random.default_rng(3))
    b = add_noise(fp, 1.0, np.random.default_rng(3))
    assert a.to_dict() == b.to_dict()
    assert a.intensity == fp.intensity and a.class_voxels == fp.class_voxels
    assert all(set(n) <= set(o) for n, o in zip(a.spacing, fp.spacing, strict=True))  # no new values
    with pytest.raises(ValueError, match="dp_epsilon"):
        add_noise(fp, 0.0, np.random.default_rng(0))
