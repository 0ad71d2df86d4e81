"""The report's pictures section: the best, median and worst test case of each site, as written
after the run by :mod:`fedseg.runtime.overlays` (``plots/overlays/overlays.json``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["overlay_section", "OVERLAY_INDEX"]

OVERLAY_INDEX = Path("plots") / "overlays" / "overlays.json"


def overlay_section(root: Path) -> list[str]:
    """Markdown lines of the section (none when the run wrote no pictures or the index is unreadable)."""
    path = root / OVERLAY_INDEX
    if not path.is_file():
        return []
    try:
        index = json.loads(path.read_text())
        sites = dict(index["sites"])
    except (ValueError, KeyError, TypeError):
        return []
    if not sites:
        return []
    lines = ["## Test cases per site", "",
             "Each picture: the image, the reference and the prediction (middle slice of a volume), for the "
             f"site's best, median and worst test Dice ({index.get('selection', '?')} checkpoint, the model the "
             "site is judged by).", ""]
    for site, entry in sites.items():
        lines += [f"### {site} ({entry.get('model', '?')} model)", ""]
        for case in entry.get("cases", []):
            dice = case.get("dice")
            score = "–" if not isinstance(dice, (int, float)) or math.isnan(dice) else f"{dice:.3f}"
            lines += [f"{case['rank']}: case `{case['case']}`, Dice {score}", "",
                      f"![{site} {case['rank']} case]({case['file']})", ""]
    return lines
