from __future__ import annotations

import pytest
import torch

from fedseg.data.base import DataError
from fedseg.data.patches import PatchSampler, oversample_mask, pad_to_size


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pad_to_size_pads_short_axes_centred_and_keeps_long_ones() -> None:
    x = torch.ones(2, 1, 3, 8)
    out = pad_to_size(x, [6, 4])
    assert out.shape == (2, 1, 6, 8)
    assert out[:, :, 1:4].eq(1).all() and out[:, :, 0].eq(0).all() and out[:, :, 4:].eq(0).all()
    assert pad_to_size(x, [3, 8]) is x


@pytest.mark.parametrize(
    ("batch", "fraction", "expected"),
    [(2, 1 / 3, [False, True]), (3, 1 / 3, [False, False, True]), (4, 0.0, [False] * 4), (2, 1.0, [True, True])],
)
def test_oversample_mask_follows_nnunet_rule(batch: int, fraction: float, expected: list[bool]) -> None:
    assert oversample_mask(batch, fraction) == expected


@pytest.mark.parametrize(("voxel", "start"), [((1, 1, 1), [0, 0, 0]), ((5, 6, 4), [3, 4, 2]), ((9, 11, 7), [6, 8, 4])])
def test_foreground_patch_is_centred_on_the_only_foreground_voxel_and_clamped(
    voxel: tuple[int, int, int], start: list[int]
) -> None:
    masks = torch.zeros(1, 1, 10, 12, 8, dtype=torch.long)
    masks[(0, 0, *voxel)] = 1
    sampler = PatchSampler(masks, [4, 4, 4], num_classes=2, fg_oversample=1.0)
    assert sampler.starts([0, 0], _gen()) == [start, start]


def test_random_patches_lie_inside_the_volume_and_depend_only_on_the_seed() -> None:
    masks = torch.zeros(3, 1, 9, 7, dtype=torch.long)
    sampler = PatchSampler(masks, [4, 7], num_classes=2, fg_oversample=0.0)
    starts = sampler.starts([0, 1, 2] * 20, _gen(5))
    assert all(0 <= a <= 5 and b == 0 for a, b in starts)
    assert len({a for a, _ in starts}) == 6  # every start position is reachable
    assert sampler.starts([0, 1, 2] * 20, _gen(5)) == starts
    assert sampler.starts([0, 1, 2] * 20, _gen(6)) != starts


def test_forced_foreground_without_foreground_falls_back_to_a_random_patch() -> None:
    sampler = PatchSampler(torch.zeros(1, 1, 6, 6, dtype=torch.long), [4, 4], num_classes=2, fg_oversample=1.0)
    (start,) = sampler.starts([0], _gen())
    assert all(0 <= s <= 2 for s in start)


def test_foreground_class_is_picked_uniformly_so_a_tiny_class_gets_half_the_patches() -> None:
    masks = torch.zeros(1, 1, 40, 40, dtype=torch.long)
    masks[0, 0, :20] = 1  # 800 voxels of class 1, far from the single class-2 voxel
    masks[0, 0, 35, 35] = 2
    sampler = PatchSampler(masks, [4, 4], num_classes=3, fg_oversample=1.0)
    cases = [0] * 200
    _, patches = sampler.sample(masks.float(), masks, cases, _gen())
    with_class2 = int((patches == 2).flatten(1).any(1).sum())
    assert 70 <= with_class2 <= 130


def test_sample_crops_exactly_the_same_window_from_image_and_mask() -> None:
    images = torch.arange(2 * 2 * 6 * 5, dtype=torch.float32).reshape(2, 2, 6, 5)
    masks = (images[:, :1] % 3 == 0).long()
    sampler = PatchSampler(masks, [3, 2], num_classes=2, fg_oversample=0.5)
    cases = [1, 0, 1]
    starts = sampler.starts(cases, _gen(3))
    img, msk = sampler.sample(images, masks, cases, _gen(3))
    assert img.shape == (3, 2, 3, 2) and msk.shape == (3, 1, 3, 2)
    for b, (case, (y, x)) in enumerate(zip(cases, starts, strict=True)):
        assert torch.equal(img[b], images[case, :, y : y + 3, x : x + 2])
        assert torch.equal(msk[b], masks[case, :, y : y + 3, x : x + 2])


def test_patch_size_with_the_wrong_rank_or_too_large_is_rejected() -> None:
    masks = torch.zeros(1, 1, 6, 6, dtype=torch.long)
    with pytest.raises(DataError, match="train.patch_size"):
        PatchSampler(masks, [4, 4, 4], num_classes=2, fg_oversample=0.3)
    with pytest.raises(DataError, match="exceeds"):
        PatchSampler(masks, [8, 4], num_classes=2, fg_oversample=0.3)
