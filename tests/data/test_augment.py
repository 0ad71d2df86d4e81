from __future__ import annotations

from typing import Any

import pytest
import torch

from fedseg.config import AugmentConfig, ConfigError, config_from_dict
from fedseg.data.augment import BatchAugmenter

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


def test_config_limits_rotation_to_30_degrees_and_checks_ranges_and_axes() -> None:
    with pytest.raises(ConfigError, match="rotate_deg"):
        config_from_dict({"train": {"augment": {"rotate_deg": 45}}})
    with pytest.raises(ConfigError, match="gamma must be"):
        config_from_dict({"train": {"augment": {"gamma": [1.5, 0.7]}}})
    with pytest.raises(ValueError, match="flip_axes"):
        BatchAugmenter(AugmentConfig(flip_axes=[2]), [8, 8], seed=0)
    assert config_from_dict({}).train.augment.enabled is False


def _flipped_or_not(out: torch.Tensor, src: torch.Tensor, dim: int) -> torch.Tensor:
    """Per sample: True if flipped along ``dim``, False if untouched (fails if neither)."""
    same = (out == src).flatten(1).all(1)
    flip = (out == src.flip(dim)).flatten(1).all(1)
    assert bool((same | flip).all()), "a sample is neither the input nor its flip"
    return flip & ~same


def test_flips_flip_exactly_the_drawn_samples_with_their_masks() -> None:
    gen = torch.Generator().manual_seed(1)
    masks = (torch.rand(200, 1, 6, 5, generator=gen) > 0.5).long()
    images = torch.randn(200, 2, 6, 5, generator=gen)
    cfg = _only(flip=0.3).model_copy(update={"flip_axes": [1]})
    out_i, out_m = BatchAugmenter(cfg, [6, 5], seed=4)(images, masks)
    flipped = _flipped_or_not(out_i, images, -1)
    assert torch.equal(flipped, _flipped_or_not(out_m, masks, -1))  # masks move with their images
    drawn = torch.rand(200, generator=torch.Generator().manual_seed(4)) < 0.3  # the flag generator's first draw
    assert torch.equal(flipped, drawn)
    assert 40 <= int(flipped.sum()) <= 80  # Binomial(200, 0.3): mean 60, sd 6.5


def test_zero_probability_transforms_are_skipped_and_draw_nothing() -> None:
    images, masks = _batch(2)
    only_flip = _only(flip=0.5)
    # the same flips whatever the (probability-0) settings of the other transforms
    other = only_flip.model_copy(update={"rotate_deg": 30.0, "noise_std": 5.0, "gamma": (0.1, 0.2)})
    a = BatchAugmenter(only_flip, [16, 16], seed=9)(images, masks)
    b = BatchAugmenter(other, [16, 16], seed=9)(images, masks)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_inputs_are_not_modified() -> None:
    images, masks = _batch(2)
    before = images.clone(), masks.clone()
    cfg = AugmentConfig(enabled=True, **{f"{k}_prob": 1.0 for k in _ALL_PROBS})
    BatchAugmenter(cfg, [16, 16], seed=0)(images, masks)
    assert torch.equal(images, before[0]) and torch.equal(masks, before[1])


def test_intensity_scale_and_shift_stay_in_their_configured_ranges() -> None:
    images = torch.ones(64, 1, 4, 4)
    masks = torch.zeros(64, 1, 4, 4, dtype=torch.long)
    scaled, _ = BatchAugmenter(_only(intensity_scale=1.0), [4, 4], seed=0)(images, masks)
    factors = scaled[:, 0, 0, 0]
    assert bool((factors >= 0.9).all() and (factors <= 1.1).all()) and factors.std() > 0.02
    assert torch.equal(scaled, factors.view(-1, 1, 1, 1).expand_as(scaled))  # one factor per sample
    shifted, _ = BatchAugmenter(_only(intensity_shift=1.0), [4, 4], seed=0)(images, masks)
    assert bool(((shifted - 1).abs() <= 0.1 + 1e-6).all())


def test_gamma_keeps_each_samples_mean_and_std() -> None:
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    out, _ = BatchAugmenter(_only(gamma=1.0), [8, 8], seed=0)(images, torch.zeros(4, 1, 8, 8, dtype=torch.long))
    assert not torch.allclose(out, images)
    assert torch.allclose(out.flatten(1).mean(1), images.flatten(1).mean(1), atol=1e-5)
    assert torch.allclose(out.flatten(1).std(1), images.flatten(1).std(1), atol=1e-4)


def test_a_pure_translation_moves_the_mask_by_whole_pixels() -> None:
    masks = torch.zeros(1, 1, 16, 16, dtype=torch.long)
    masks[0, 0, 6:10, 6:10] = 1
    cfg = _only(affine=1.0).model_copy(update={"scale": 0.0, "translate": 0.2})
    _, out = BatchAugmenter(cfg, [16, 16], seed=5)(masks.float(), masks)
    assert int(out.sum()) in range(9, 17) and not torch.equal(out, masks)  # shifted, not lost (<= 3.2 px)


@pytest.mark.parametrize("dims", [2, 3])
def test_a_batch_of_another_size_names_the_expected_size(dims: int) -> None:
    images, masks = _batch(dims)
    with pytest.raises(ValueError, match="built for samples of size"):
        BatchAugmenter(_only(flip=1.0), [8] * dims, seed=0)(images, masks)


def test_gaussian_smoothing_is_a_zero_padded_truncated_convolution() -> None:
    from fedseg.data.augment import _gaussian_smooth

    field = torch.randn(2, 9, 7, 5, generator=torch.Generator().manual_seed(0))
    sigma, radius = 1.3, 4  # int(3 * 1.3 + 0.5)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    kernel = (taps / taps.sum()).view(1, 1, -1)
    expected = field
    for axis in (1, 2, 3):
        moved = expected.movedim(axis, -1)
        lines = torch.nn.functional.conv1d(moved.reshape(-1, 1, moved.shape[-1]), kernel, padding=radius)
        expected = lines.view(moved.shape).movedim(-1, axis)
    assert torch.allclose(_gaussian_smooth(field, sigma), expected, atol=1e-6)
