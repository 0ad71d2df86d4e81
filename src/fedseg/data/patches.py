"""Random training patches with foreground oversampling, from stacked volumes or case by case.

The sampler follows nnU-Net's rule: in a batch of ``B`` patches the last
``B - round(B * (1 - fg_oversample))`` are centred on a foreground voxel (a foreground class
present in the case is picked uniformly, then one of its voxels), the others lie uniformly
at random in the volume. Foreground voxel indices are computed once per case with MONAI's
:func:`~monai.transforms.utils.map_classes_to_indices`; every random draw comes from the
``torch.Generator`` passed in, so patch positions are a pure function of its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.transforms.utils import map_classes_to_indices
from torch import Tensor

from fedseg.data.base import DataError
from fedseg.data.cases import CaseStore, padded_shape

__all__ = ["PatchSampler", "pad_to_size", "oversample_mask"]


def pad_to_size(volumes: Tensor, size: Sequence[int], value: float = 0.0) -> Tensor:
    """Pad every spatial axis of ``volumes`` that is shorter than ``size`` (centred, constant).

    Args:
        volumes: ``(N, C, *spatial)`` tensor.
        size: minimum spatial size, one entry per spatial axis.
        value: fill value.

    Returns:
        ``(N, C, *max(spatial, size))``; ``volumes`` itself when nothing needs padding.
    """
    spatial = volumes.shape[2:]
    if len(size) != len(spatial):
        raise ValueError(f"size {list(size)} needs one entry per spatial axis of shape {tuple(volumes.shape)}")
    pads: list[int] = []
    for have, want in zip(reversed(spatial), reversed(list(size)), strict=True):
        missing = max(int(want) - int(have), 0)
        pads += [missing // 2, missing - missing // 2]
    if not any(pads):
        return volumes
    return F.pad(volumes, pads, mode="constant", value=value)


def oversample_mask(batch_size: int, fg_oversample: float) -> list[bool]:
    """Which positions of a batch get a foreground-centred patch (nnU-Net's rule).

    Position ``j`` is forced to foreground iff ``j >= round(batch_size * (1 - fg_oversample))``,
    so a batch of 2 with ``fg_oversample = 1/3`` has one forced patch and a batch of 3 has one.
    """
    first = round(batch_size * (1.0 - fg_oversample))
    return [j >= first for j in range(batch_size)]


class PatchSampler:
    """Random fixed-size patches of the cases of a split, a fraction centred on foreground.

    Build it from stacked in-memory masks, or with :meth:`for_cases` from a case store whose cases
    may differ in shape (each is padded to the patch size on its own, as :func:`pad_to_size` does).
    The foreground voxels of a case are found the first time it is drawn, so the masks are read
    once per round, case by case; the draws are the same either way.

    Args:
        masks: ``(N, 1, *spatial)`` int64 label maps of the cases the sampler serves, already
            at least ``patch_size`` along every axis (see :func:`pad_to_size`).
        patch_size: patch size, one entry per spatial axis.
        num_classes: number of classes including background.
        fg_oversample: fraction in ``[0, 1]`` of foreground-centred patches per batch.

    Raises:
        DataError: ``patch_size`` does not match the spatial rank or exceeds the volume.
    """

    def __init__(self, masks: Tensor, patch_size: Sequence[int], num_classes: int, fg_oversample: float) -> None:
        spatial = tuple(int(s) for s in masks.shape[2:])
        self._setup(patch_size, spatial, num_classes, fg_oversample)
        if any(p > s for p, s in zip(self.patch_size, spatial, strict=True)):
            raise DataError(f"train.patch_size {list(self.patch_size)} exceeds the (padded) volume size {list(spatial)}")
        self.spatial = spatial
        cpu = masks.detach().cpu()
        self._shapes = [spatial] * int(masks.shape[0])
        self._mask_of: Callable[[int], Tensor] = lambda case: cpu[case]

    @classmethod
    def for_cases(cls, cases: CaseStore, patch_size: Sequence[int], num_classes: int,
                  fg_oversample: float) -> PatchSampler:
        """A sampler over the cases of ``cases`` (shapes may differ; each padded to ``patch_size``)."""
        if not cases.has_masks:
            raise DataError("patches need pixel masks, but this split has none (data.supervision)")
        sampler = cls.__new__(cls)
        shapes = cases.shapes()
        sampler._setup(patch_size, shapes[0] if shapes else tuple(int(p) for p in patch_size), num_classes,
                    fg_oversample)
        sampler._shapes = [padded_shape(shape, sampler.patch_size) for shape in shapes]
        sampler.spatial = sampler._shapes[0] if sampler._shapes else sampler.patch_size

        def mask_of(case: int) -> Tensor:
            mask = cases.mask(case)
            if mask is None:
                raise DataError(f"case {case} has no mask")
            return pad_to_size(mask[None], sampler.patch_size)[0]

        sampler._mask_of = mask_of
        return sampler

    def _setup(self, patch_size: Sequence[int], spatial: tuple[int, ...], num_classes: int,
               fg_oversample: float) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != len(spatial):
            raise DataError(
                f"train.patch_size {list(self.patch_size)} has {len(self.patch_size)} entries but the images have "
                f"{len(spatial)} spatial axes {list(spatial)}; give one size per axis"
            )
        if not 0.0 <= fg_oversample <= 1.0:
            raise DataError(f"train.fg_oversample must be in [0, 1], got {fg_oversample}")
        self.fg_oversample = fg_oversample
        self.num_classes = num_classes
        # Per case, when first drawn: flat voxel indices of each foreground class present (absent
        # classes dropped), int32 where the volume allows (half the memory, the same values).
        self._fg: dict[int, list[Tensor]] = {}

    def shape_of(self, case: int) -> tuple[int, ...]:
        """The (padded) spatial shape of ``case`` that patch starts refer to."""
        return self._shapes[case]

    def _foreground(self, case: int) -> list[Tensor]:
        found = self._fg.get(case)
        if found is None:
            mask = self._mask_of(case)
            small = mask.numel() < 2**31
            per_class = map_classes_to_indices(mask, num_classes=self.num_classes)[1:]
            found = [torch.as_tensor(ix).to(torch.int32 if small else torch.int64) for ix in per_class if len(ix) > 0]
            self._fg[case] = found
        return found

    def _random_start(self, case: int, gen: torch.Generator) -> list[int]:
        return [int(torch.randint(s - p + 1, (1,), generator=gen))
                for s, p in zip(self._shapes[case], self.patch_size, strict=True)]

    def _foreground_start(self, case: int, gen: torch.Generator) -> list[int] | None:
        classes = self._foreground(case)
        if not classes:
            return None
        spatial = self._shapes[case]
        voxels = classes[int(torch.randint(len(classes), (1,), generator=gen))]
        flat = int(voxels[int(torch.randint(len(voxels), (1,), generator=gen))])
        centre = list(torch.unravel_index(torch.tensor(flat), spatial))
        return [
            min(max(int(c) - p // 2, 0), s - p)
            for c, p, s in zip(centre, self.patch_size, spatial, strict=True)
        ]

    def starts(self, cases: Sequence[int], gen: torch.Generator) -> list[list[int]]:
        """Patch start corners for a batch of ``cases`` (indices into the sampler's volumes).

        A forced-foreground position whose case has no foreground gets a random patch.
        """
        out = []
        for case, force_fg in zip(cases, oversample_mask(len(cases), self.fg_oversample), strict=True):
            start = self._foreground_start(int(case), gen) if force_fg else None
            out.append(start if start is not None else self._random_start(int(case), gen))
        return out

    def crop(self, volumes: Tensor, cases: Sequence[int], starts: Sequence[Sequence[int]]) -> Tensor:
        """Stack the patches ``volumes[case, :, start:start + patch_size]``.

        Args:
            volumes: ``(N, C, *spatial)`` on any device.
            cases: case indices, length B.
            starts: start corners from :meth:`starts`, length B.

        Returns:
            ``(B, C, *patch_size)`` on the device of ``volumes``.
        """
        patches = []
        for case, start in zip(cases, starts, strict=True):
            index: list[int | slice] = [int(case), slice(None)]
            index += [slice(s, s + p) for s, p in zip(start, self.patch_size, strict=True)]
            patches.append(volumes[tuple(index)])
        return torch.stack(patches)

    def sample(
        self, images: Tensor, masks: Tensor, cases: Sequence[int], gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Draw one batch of patches.

        Args:
            images: ``(N, C, *spatial)`` float volumes the sampler was built for.
            masks: ``(N, 1, *spatial)`` int64 label maps.
            cases: case index of each batch position, length B.
            gen: CPU generator for every random choice.

        Returns:
            ``(B, C, *patch_size)`` images and ``(B, 1, *patch_size)`` masks.
        """
        starts = self.starts(cases, gen)
        return self.crop(images, cases, starts), self.crop(masks, cases, starts)
