"""Numbers and markdown for the reports: finite values, means, and cell formatting.

Conventions shared by every table:

* "mean ± sd" uses the **sample** standard deviation (``ddof=1``); with a single value only the
  mean is shown. Non-finite values (an HD95 of an empty prediction is ``inf`` or ``NaN``) are left
  out of means and shown as "–" like missing metrics.
* The *site mean* averages sites with equal weight; the *image mean* weights each site by its
  number of scored cases ``n``.
* MB are 10^6 bytes; a compression ratio is uncompressed bytes / bytes sent.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

from fedseg.records import Field

__all__ = [
    "DASH",
    "DECIMALS",
    "HEADERS",
    "MB",
    "METRICS",
    "fence",
    "finite",
    "fmt",
    "fmt_int",
    "fmt_mb",
    "fmt_mean_sd",
    "fmt_params",
    "fmt_ratio",
    "fmt_seconds",
    "md_cell",
    "mean_sd",
    "relpath",
    "site_mean",
    "image_mean",
]

METRICS: tuple[str, ...] = (Field.DICE, Field.IOU, Field.HD95, Field.PRECISION, Field.RECALL)
"""The reported metrics, in table order (``n`` is shown separately)."""

HEADERS: dict[str, str] = {
    Field.DICE: "Dice", Field.IOU: "IoU", Field.HD95: "HD95 (mm)", Field.PRECISION: "precision",
    Field.RECALL: "recall",
}  # fmt: skip
DECIMALS: dict[str, int] = {Field.DICE: 3, Field.IOU: 3, Field.HD95: 2, Field.PRECISION: 3, Field.RECALL: 3}
DASH = "–"
MB = 1e6


def finite(value: Any) -> float | None:
    """``value`` as a float, or None when missing, not a number, or not finite."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def mean_sd(values: Sequence[Any]) -> tuple[float | None, float | None]:
    """Mean and sample sd (ddof=1) of the finite values; sd is None for fewer than two."""
    kept = [v for v in (finite(x) for x in values) if v is not None]
    if not kept:
        return None, None
    if len(kept) == 1:
        return kept[0], None
    return statistics.fmean(kept), statistics.stdev(kept)


def site_mean(per_site: Mapping[str, Mapping[str, Any]], metric: str) -> float | None:
    """Mean of ``metric`` over sites, each site weighted equally (finite values only)."""
    return mean_sd([m.get(metric) for m in per_site.values()])[0]


def image_mean(per_site: Mapping[str, Mapping[str, Any]], metric: str) -> float | None:
    """Mean of ``metric`` over sites weighted by their case count ``n`` (the mean over images when
    each site's value is its mean over images). Sites without a finite value or ``n`` are left out."""
    pairs = [(finite(m.get(metric)), finite(m.get(Field.N))) for m in per_site.values()]
    kept = [(v, n) for v, n in pairs if v is not None and n is not None and n > 0]
    total = sum(n for _, n in kept)
    return sum(v * n for v, n in kept) / total if total > 0 else None


def fmt(value: Any, decimals: int) -> str:
    number = finite(value)
    return DASH if number is None else f"{number:.{decimals}f}"


def fmt_mean_sd(mean: float | None, sd: float | None, decimals: int) -> str:
    if mean is None:
        return DASH
    if sd is None:
        return fmt(mean, decimals)
    return f"{fmt(mean, decimals)} ± {fmt(sd, decimals)}"


def fmt_int(value: Any) -> str:
    number = finite(value)
    return DASH if number is None else str(int(number))


def fmt_mb(n_bytes: float | None) -> str:
    if n_bytes is None:
        return DASH
    mb = n_bytes / MB
    return f"{mb:.1f}" if mb >= 100 else f"{mb:.3f}"


def fmt_ratio(ratio: float | None) -> str:
    """A compression ratio such as ``39.9×``; "–" when unknown."""
    return DASH if ratio is None else f"{ratio:.2f}×" if ratio < 10 else f"{ratio:.1f}×"


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def fmt_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def fence(text: str) -> str:
    """A fenced code block that survives backticks inside ``text``."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    bars = "`" * max(3, longest + 1)
    return f"{bars}bash\n{text}\n{bars}"


def relpath(target: Path, start: Path) -> str:
    return PurePath(os.path.relpath(target, start)).as_posix()
