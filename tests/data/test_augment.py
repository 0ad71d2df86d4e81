from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from fedseg.config import AugmentConfig, ConfigError, config_from_dict
from fedseg.data.augment import BatchAugmenter, build_augmentation

_ALL_PROBS = ("rotate", "affine", "elastic", "flip", "intensity_scale", "intensity_shift", "noise", "gamma")


def _only(**probs: float) -> AugmentConfig:
    """Every transform off except the ones given (``rotate=1.0`` sets ``rotate_prob``)."""
    values: dict[str, Any] = {f"{name}_prob": 0.0 for name in _ALL_PROBS}
    values.update({f"{name}_prob": p for name, p in probs.items()})
    return AugmentConfig(enabled=True, **values)


def _batch(dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    size = (16,) * dims
    masks = torch.zeros(2, 1, *size, dtype=torch.long)
    masks[(slice(None), slice(None), slice(1, 13), *([slice(3, 7)] * (dims - 1)))] = 1  # off-centre bar
    images = masks.float() + 0.1 * torch.randn(2, 1, *size, generator=torch.Generator().manual_seed(0))
    return images, masks


@pytest.mark.parametrize("dims", [2, 3])
def test_all_probabilities_zero_is_the_identity(dims: int) -> None:
    images, masks = _batch(dims)
    out_i, out_m = BatchAugmenter(_only(), images.shape[2:], seed=0)(images, masks)
    assert torch.equal(out_i, images) and torch.equal(out_m, masks)
    assert type(out_i) is torch.Tensor and out_m.dtype == torch.int64


@pytest.mark.parametrize("dims", [2, 3])
def test_a_sure_flip_on_one_axis_is_torch_flip(dims: int) -> None:
    images, masks = _batch(dims)
    cfg = _only(flip=1.0).model_copy(update={"flip_axes": [dims - 1]})
    out_i, out_m = BatchAugmenter(cfg, images.shape[2:], seed=0)(images, masks)
    assert torch.equal(out_i, images.flip(-1)) and torch.equal(out_m, masks.flip(-1))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("kind", ["rotate", "affine", "elastic"])
def test_spatial_transforms_move_image_and_mask_together(dims: int, kind: str) -> None:
    _, masks = _batch(dims)
    images = masks.float()  # the image is the mask, so after a shared warp they must agree
    cfg = _only(**{kind: 1.0}).model_copy(update={"rotate_deg": 30.0, "scale": 0.3, "translate": 0.2})
    out_i, out_m = BatchAugmenter(cfg, images.shape[2:], seed=3)(images, masks)
    assert set(out_m.unique().tolist()) <= {0, 1}
    assert not torch.equal(out_m, masks)
    assert (out_m[out_i > 0.99] == 1).all() and (out_m[out_i < 0.01] == 0).all()


@pytest.mark.parametrize("dims", [2, 3])
def test_intensity_transforms_change_the_image_only(dims: int) -> None:
    images, masks = _batch(dims)
    cfg = _only(intensity_scale=1.0, intensity_shift=1.0, noise=1.0, gamma=1.0)
    out_i, out_m = BatchAugmenter(cfg, images.shape[2:], seed=0)(images, masks)
    assert torch.equal(out_m, masks) and not torch.allclose(out_i, images)


@pytest.mark.parametrize("dims", [2, 3])
def test_same_seed_same_output_other_seed_differs(dims: int) -> None:
    images, masks = _batch(dims)
    cfg = AugmentConfig(enabled=True, rotate_prob=0.5, affine_prob=0.5, elastic_prob=0.5, noise_prob=0.5)
    a = BatchAugmenter(cfg, images.shape[2:], seed=7)
    b = BatchAugmenter(cfg, images.shape[2:], seed=7)
    c = BatchAugmenter(cfg, images.shape[2:], seed=8)
    for _ in range(3):  # a sequence of batches, not just the first
        ai, am = a(images, masks)
        bi, bm = b(images, masks)
        ci, _ = c(images, masks)
        assert torch.equal(ai, bi) and torch.equal(am, bm)
    assert not torch.equal(ai, ci)


def test_rotation_range_is_the_configured_angle_in_radians_about_every_3d_axis() -> None:
    rotate = build_augmentation(AugmentConfig(rotate_deg=30), [8, 8, 8]).transforms[0].rand_rotate
    bound = math.radians(30)
    assert rotate.range_x == rotate.range_y == rotate.range_z == pytest.approx((-bound, bound))
    rotate_2d = build_augmentation(AugmentConfig(rotate_deg=30), [8, 8]).transforms[0].rand_rotate
    assert rotate_2d.range_y == (0.0, 0.0)


def test_config_limits_rotation_to_30_degrees_and_checks_ranges_and_axes() -> None:
    with pytest.raises(ConfigError, match="rotate_deg"):
        config_from_dict({"train": {"augment": {"rotate_deg": 45}}})
    with pytest.raises(ConfigError, match="gamma must be"):
        config_from_dict({"train": {"augment": {"gamma": [1.5, 0.7]}}})
    with pytest.raises(ValueError, match="flip_axes"):
        build_augmentation(AugmentConfig(flip_axes=[2]), [8, 8])
    assert config_from_dict({}).train.augment.enabled is False
