"""In-memory federated dataset containers (the contract between data and engine)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedseg.io.errors import DataError, Problem

__all__ = ["SegmentationSet", "SiteData", "FederatedData", "DataError", "Problem", "MissingMaskError"]


class MissingMaskError(DataError):
    """Pixel masks were asked of data that has none (a weakly-supervised site's training split)."""


@dataclass
class SegmentationSet:
    """One split of one site, fully in memory.

    Attributes:
        images: ``(N, C, *spatial)`` float32, intensity-normalised.
        masks: ``(N, 1, *spatial)`` int64 class indices in ``[0, num_classes)``; ``None`` for the
            training split of a weakly-supervised site (it holds ``weak`` labels instead).
        spacing: ``(N, D)`` float64, mm per voxel along each spatial axis (PNG: pixel_spacing).
        ids: case identifiers (file stems), length N.
        weak: per-sample weak labels, first dimension N (:mod:`fedseg.data.supervision`: box masks
            ``(N, 1, *spatial)`` uint8, image-level class vectors ``(N, num_classes)`` float32).
        supervision: ``"pixel"``, ``"box"`` or ``"image"``: the label kind of this split.
    """

    images: torch.Tensor
    masks: torch.Tensor | None
    spacing: torch.Tensor
    ids: list[str] = field(default_factory=list)
    weak: dict[str, torch.Tensor] = field(default_factory=dict)
    supervision: str = "pixel"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def pixel_masks(self) -> torch.Tensor:
        """``masks``, or a :class:`MissingMaskError` naming the supervision kind when there are none."""
        if self.masks is None:
            raise MissingMaskError(
                f"this split is {self.supervision}-supervised and holds no pixel masks (data.supervision); "
                "only a weak-label algorithm (fedmix) can train on it"
            )
        return self.masks


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
