"""Federated dataset containers (the contract between data and engine)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedseg.data.cases import CaseStore, TensorCases
from fedseg.io.errors import DataError, Problem

__all__ = ["SegmentationSet", "SiteData", "FederatedData", "DataError", "Problem", "MissingMaskError"]


class MissingMaskError(DataError):
    """Pixel masks were asked of data that has none (a weakly-supervised site's training split)."""


class _Keep:
    """Marker: ``masks`` not given (keep those of ``cases``)."""


_KEEP = _Keep()


@dataclass(init=False, eq=False)
class SegmentationSet:
    """One split of one site, read case by case (:mod:`fedseg.data.cases`).

    Its cases live in a :class:`~fedseg.data.cases.CaseStore`: stacked in-memory tensors
    (:class:`~fedseg.data.cases.TensorCases`: synthetic data, tests, data built in code) or one
    memory-mapped ``.npy`` file per case in the preprocessed-case cache
    (:class:`~fedseg.data.cases.ListCases`: folder data, streamed; cases may differ in shape).
    Construct it from ``images``/``masks`` tensors, or from ``cases``. ``images`` and ``masks``
    stay available as stacked tensors (stacked on demand for a streamed split: fine for small
    data, a :class:`DataError` for cases of different shapes); hot paths use :meth:`case`.

    Attributes:
        cases: the case store.
        spacing: ``(N, D)`` float64, mm per voxel along each spatial axis (PNG: pixel_spacing).
        ids: case identifiers (file stems), length N.
        weak: per-sample weak labels, first dimension N (:mod:`fedseg.data.supervision`: box masks
            ``(N, 1, *spatial)`` uint8, image-level class vectors ``(N, num_classes)`` float32).
        supervision: ``"pixel"``, ``"box"`` or ``"image"``: the label kind of this split.

    Args:
        images: ``(N, C, *spatial)`` float32, intensity-normalised (with ``cases``: replaces its images).
        masks: ``(N, 1, *spatial)`` int64 class indices in ``[0, num_classes)``; ``None`` for the
            training split of a weakly-supervised site (it holds ``weak`` labels instead). Not
            given with ``cases``: the store's own.
        cases: the case store, instead of ``images`` (``dataclasses.replace`` passes it).
    """

    cases: CaseStore
    spacing: torch.Tensor
    ids: list[str]
    weak: dict[str, torch.Tensor]
    supervision: str

    def __init__(
        self,
        images: torch.Tensor | None = None,
        masks: torch.Tensor | None | _Keep = _KEEP,
        spacing: torch.Tensor | None = None,
        ids: list[str] | None = None,
        weak: dict[str, torch.Tensor] | None = None,
        supervision: str = "pixel",
        cases: CaseStore | None = None,
    ) -> None:
        if images is not None:
            if isinstance(masks, _Keep):
                masks = cases.stacked_masks() if cases is not None else None
            cases = TensorCases(images, masks)
        elif cases is None:
            raise TypeError("SegmentationSet needs images (a tensor) or cases (a CaseStore)")
        elif not isinstance(masks, _Keep):
            cases = cases.with_masks(masks)
        if spacing is None:
            raise TypeError("SegmentationSet needs spacing ((N, D) mm per voxel)")
        self.cases = cases
        self.spacing = spacing
        self.ids = list(ids) if ids is not None else []
        self.weak = dict(weak) if weak is not None else {}
        self.supervision = supervision

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def num_cases(self) -> int:
        """Number of cases ``N``."""
        return len(self.cases)

    @property
    def in_memory(self) -> bool:
        """Whether the split is stacked in-memory tensors (else streamed from files)."""
        return self.cases.in_memory

    @property
    def has_masks(self) -> bool:
        """Whether the split has pixel masks (without stacking anything)."""
        return self.cases.has_masks

    @property
    def images(self) -> torch.Tensor:
        """``(N, C, *spatial)`` float32 (stacked on demand for a streamed split)."""
        return self.cases.stacked_images()

    @property
    def masks(self) -> torch.Tensor | None:
        """``(N, 1, *spatial)`` int64 class indices, or ``None`` (stacked on demand when streamed)."""
        return self.cases.stacked_masks() if self.cases.has_masks else None

    def case(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Case ``i``: ``(C, *spatial)`` float32 image and ``(1, *spatial)`` int64 mask (or None)."""
        return self.cases.case(i)

    def shape_of(self, i: int) -> tuple[int, ...]:
        """Spatial shape of case ``i``."""
        return self.cases.shape_of(i)

    def with_masks(self, masks: torch.Tensor | None) -> SegmentationSet:
        """This split with ``masks`` ``(N, 1, *spatial)`` instead of its own (None: without masks,
        a weakly-supervised training split); the images are stacked only when masks are given
        to a streamed split."""
        return SegmentationSet(cases=self.cases.with_masks(masks), spacing=self.spacing, ids=self.ids,
                               weak=self.weak, supervision=self.supervision)

    def pixel_masks(self) -> torch.Tensor:
        """``masks``, or a :class:`MissingMaskError` naming the supervision kind when there are none."""
        masks = self.masks
        if masks is None:
            raise MissingMaskError(
                f"this split is {self.supervision}-supervised and holds no pixel masks (data.supervision); "
                "only a weak-label algorithm (fedmix) can train on it"
            )
        return masks


@dataclass
class SiteData:
    """One client: its name and its train/val/test splits."""

    name: str
    train: SegmentationSet
    val: SegmentationSet
    test: SegmentationSet


@dataclass
class FederatedData:
    """All sites of a federation plus what the model needs to know."""

    sites: list[SiteData]
    spatial_dims: int
    in_channels: int
    num_classes: int
    label_names: list[str] = field(default_factory=list)

    def site(self, name: str) -> SiteData:
        for s in self.sites:
            if s.name == name:
                return s
        raise DataError(f"unknown site {name!r}; sites: {', '.join(s.name for s in self.sites)}")
