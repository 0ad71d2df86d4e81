from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import tiny_config
from fedseg.config import config_from_dict
from fedseg.report.overlays import overlay_section
from fedseg.runtime.overlays import overlay_panel, pick_cases
from fedseg.runtime.sim import run_inprocess


def test_pick_cases_best_median_worst_each_case_once() -> None:
    assert pick_cases([0.2, 0.9, 0.5, 0.7, 0.1]) == [("best", 1), ("median", 2), ("worst", 4)]
    assert pick_cases([0.3, math.nan, 0.8]) == [("best", 2), ("median", 0), ("worst", 1)]  # NaN counts as worst
    assert pick_cases([0.4]) == [("best", 0)] and pick_cases([]) == []


def test_overlay_panel_puts_three_views_side_by_side_and_enlarges_small_images() -> None:
    image = np.random.default_rng(0).normal(size=(1, 8, 6)).astype(np.float32)
    ref = np.zeros((8, 6), dtype=np.int64)
    ref[2:5, 2:4] = 1
    panel = overlay_panel(image, ref, np.zeros_like(ref), 2)
    scale = 20  # 8 rows -> at least 160
    assert panel.shape == (8 * scale, (3 * 6 + 8) * scale, 3) and panel.dtype == np.uint8
    left, middle = panel[:, : 6 * scale], panel[:, (6 + 4) * scale: (12 + 4) * scale]
    assert not np.array_equal(left, middle)  # the reference is drawn on the middle view only


def test_a_finished_run_writes_overlays_per_site_and_the_report_shows_them(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_inprocess(config_from_dict(tiny_config("fedavg", dims=2, rounds=1)), run)
    index = json.loads((run / "plots" / "overlays" / "overlays.json").read_text())
    assert set(index["sites"]) == {"site0", "site1"}
    report = (run / "report.md").read_text()
    for site, entry in index["sites"].items():
        assert [c["rank"] for c in entry["cases"]][0] == "best" and entry["model"] == "global"
        dices = [c["dice"] for c in entry["cases"]]
        assert dices == sorted(dices, reverse=True)
        for case in entry["cases"]:
            assert (run / case["file"]).is_file() and f"]({case['file']})" in report
            with Image.open(run / case["file"]) as img:
                assert img.mode == "RGB"
    assert overlay_section(run)[0] == "## Test cases per site"


def test_no_section_without_pictures(tmp_path: Path) -> None:
    assert overlay_section(tmp_path) == []
