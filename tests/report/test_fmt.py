"""Means and cells: sample sd, site vs image means, non-finite values left out."""

from __future__ import annotations

import math

import pytest

from fedseg.report.fmt import fmt_mean_sd, fmt_ratio, image_mean, mean_sd, site_mean


def test_mean_sd_is_the_sample_sd_of_finite_values() -> None:
    mean, sd = mean_sd([0.8, 0.6, math.inf, None])
    assert mean == pytest.approx(0.7) and sd == pytest.approx(math.sqrt(0.02))
    assert mean_sd([0.5]) == (0.5, None) and mean_sd([math.nan]) == (None, None)
    assert fmt_mean_sd(0.7, math.sqrt(0.02), 3) == "0.700 ± 0.141"


def test_image_mean_weights_sites_by_n() -> None:
    per_site = {"a": {"dice": 0.9, "n": 4}, "b": {"dice": 0.7, "n": 6}, "c": {"dice": math.inf, "n": 90}}
    assert site_mean(per_site, "dice") == pytest.approx(0.8)
    assert image_mean(per_site, "dice") == pytest.approx((0.9 * 4 + 0.7 * 6) / 10)
    assert image_mean({"a": {"dice": 0.9}}, "dice") is None


def test_ratio_cells() -> None:
    assert (fmt_ratio(None), fmt_ratio(48 / 18), fmt_ratio(39.94)) == ("–", "2.67×", "39.9×")
