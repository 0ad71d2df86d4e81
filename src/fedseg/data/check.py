"""What a check of a real dataset finds: per-case and per-site summaries, and the dataset-level rules.

:mod:`fedseg.data.folder` reads the cases (:class:`CaseSummary`), :mod:`fedseg.data.assembly`
groups them into sites and splits, and the rules here turn the result into :class:`Problem`\\ s
(shapes that cannot be stacked, empty sites or splits) and the tables ``fedseg data check``
prints (:class:`SiteSummary`, :class:`DatasetReport`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from fedseg.data.base import DataError, Problem
from fedseg.data.layout import CaseFiles
from fedseg.data.preprocess import PreprocessedCase
from fedseg.data.splits import SPLITS
from fedseg.data.supervision import SupervisionKind

__all__ = [
    "CaseSummary",
    "SiteSummary",
    "DatasetReport",
    "Splits",
    "Maskless",
    "problems_of",
    "shape_problems",
    "split_problems",
    "site_summaries",
]


@dataclass
class CaseSummary:
    """One case that read and checked without error.

    Attributes:
        files: its files, site and group.
        shape: final spatial shape (after preprocessing).
        labels: mask file values present (tabulated in check mode only; empty when loading).
        foreground: fraction of non-background voxels in the file mask.
        case: the preprocessed arrays (``None`` in check mode).
        weak: a weak site's training case (``data.weak_labels.source: files``): its kind and label,
            the box mask on the training grid ``(*spatial)`` uint8 or the class vector; its mask
            file was never opened (``case.mask`` is None).
    """

    files: CaseFiles
    shape: tuple[int, ...]
    labels: tuple[int, ...]
    foreground: float
    case: PreprocessedCase | None = None
    weak: tuple[SupervisionKind, np.ndarray] | None = None


@dataclass
class SiteSummary:
    """A (possibly simulated) site after splitting: what ``fedseg data check`` tabulates."""

    name: str
    cases: int = 0
    groups: int = 0
    splits: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in SPLITS})
    labels: tuple[int, ...] = ()
    shapes: tuple[tuple[int, ...], ...] = ()
    spec: str = ""
    """What the site's spec changes (channels, label map, slicing...; :mod:`fedseg.data.site_spec`)."""


@dataclass
class DatasetReport:
    """Everything a dataset check found."""

    root: Path | None
    spatial_dims: int
    problems: list[Problem]
    sites: list[SiteSummary]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


Splits = dict[str, dict[str, list[CaseSummary]]]
"""Site -> split name (train/val/test) -> its cases."""

Maskless = dict[str, dict[str, str]]
"""Site -> its images without mask (files-mode weak sites only): case id -> group."""

MAX_LISTED = 10
"""Case ids named in one message at most."""


def problems_of(exc: DataError, site: str) -> list[Problem]:
    """The problems a :class:`DataError` carries (or its message as one), attributed to ``site``."""
    found = exc.problems or [Problem("", str(exc))]
    return [replace(p, site=site) for p in found]


def shape_problems(summaries: list[CaseSummary], root: Path, dims: int) -> list[Problem]:
    """One error when the cases do not share a shape (the in-memory sets stack them), naming examples."""
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for s in summaries:
        by_shape.setdefault(tuple(s.shape), []).append(s.files.images[0].name)
    if len(by_shape) <= 1:
        return []

    def describe(shape: tuple[int, ...]) -> str:
        return f"{shape[1]}x{shape[0]} (WxH)" if dims == 2 else "x".join(str(n) for n in shape)

    detail = "; ".join(
        f"{describe(shape)}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''} ({len(names)} files)"
        for shape, names in sorted(by_shape.items(), key=lambda kv: -len(kv[1]))
    )
    return [Problem(f"data.root {root}", f"images differ in size after preprocessing and no target shape is set "
                                         f"(data.image_size or data.preprocess.target_shape): {detail}")]


def split_problems(splits: Splits, root: Path, had_errors: set[str], all_to_test: bool,
                   maskless: Maskless) -> list[Problem]:
    """Empty sites (errors, unless the site already has errors), empty train splits (errors) and
    empty val/test splits (warnings); a weak site without any mask is one warning."""
    problems = []
    for name, parts in splits.items():
        total = sum(len(v) for v in parts.values())
        if total == 0:
            if name not in had_errors:
                problems.append(Problem(str(root / name), "no usable case (empty site)", name))
            continue
        if all_to_test:
            continue
        no_mask = maskless.get(name, {})
        if no_mask and all(c.files.case_id in no_mask for k in SPLITS for c in parts[k]):
            problems.append(Problem(str(root / name), f"no image has a mask: all {total} case(s) are training cases "
                                    "(weak labels only), the val and test splits are empty and the site gets no "
                                    "evaluation metrics (reports show it without val/test rows)", name, "warning"))
            continue
        for k in SPLITS:
            if not parts[k]:
                severity: Literal["error", "warning"] = "error" if k == "train" else "warning"
                effect = "the site cannot train" if k == "train" else f"the site has no {k} metrics"
                problems.append(Problem(str(root / name), f"empty {k} split ({total} case(s) in all; {effect})", name,
                                        severity))
    return problems


def site_summaries(splits: Splits) -> list[SiteSummary]:
    """One :class:`SiteSummary` per site: case and group counts, split ids, label values, shapes."""
    out = []
    for name, parts in splits.items():
        cases = [c for k in SPLITS for c in parts[k]]
        out.append(SiteSummary(
            name=name,
            cases=len(cases),
            groups=len({c.files.group for c in cases}),
            splits={k: [c.files.case_id for c in parts[k]] for k in SPLITS},
            labels=tuple(sorted({v for c in cases for v in c.labels})),
            shapes=tuple(sorted({tuple(c.shape) for c in cases})),
        ))
    return out
