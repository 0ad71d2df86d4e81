from __future__ import annotations

from typing import Any

import pytest
import torch

from fedseg.config import AugmentConfig, ConfigError, LossConfig, ModelConfig, TrainConfig, config_from_dict
from fedseg.data.base import SegmentationSet
from fedseg.engine.trainer import Trainer
from fedseg.losses import build_loss
from fedseg.models import build_model

_CPU = torch.device("cpu")


def _data(n: int = 5, size: tuple[int, ...] = (12, 10, 8)) -> SegmentationSet:
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, 1, *size, dtype=torch.long)
    masks[(slice(None), slice(None), *[slice(s // 2 - 1, s // 2 + 1) for s in size])] = 1
    images = masks.float() + 0.1 * torch.randn(n, 1, *size, generator=gen)
    spacing = torch.ones(n, len(size), dtype=torch.float64)
    return SegmentationSet(images=images, masks=masks, spacing=spacing, ids=[f"c{i}" for i in range(n)])


def _trainer(data: SegmentationSet, seed: int = 0, **train: Any) -> Trainer:
    cfg = TrainConfig(batch_size=2, **train)
    return Trainer(data, build_loss(LossConfig(), 2), cfg, epochs=1, device=_CPU, seed=seed, state={})


def test_without_patches_or_augmentation_batches_are_whole_images_in_seeded_order() -> None:
    data = _data()
    batches = list(_trainer(data, seed=3).batches(shuffle=True))
    order = torch.randperm(5, generator=torch.Generator().manual_seed(3))
    assert [b.image.shape[0] for b in batches] == [2, 2, 1]
    assert torch.equal(torch.cat([b.image for b in batches]), data.images[order])
    assert torch.equal(torch.cat([b.mask for b in batches]), data.masks[order])


def test_patches_have_the_patch_size_and_an_epoch_has_samples_per_volume_per_case() -> None:
    trainer = _trainer(_data(), patch_size=[4, 4, 4], samples_per_volume=3)
    batches = list(trainer.batches(shuffle=True))
    assert sum(b.image.shape[0] for b in batches) == 15
    assert all(b.image.shape[2:] == (4, 4, 4) and b.mask.shape[1:] == (1, 4, 4, 4) for b in batches)


def test_full_foreground_oversampling_puts_foreground_in_every_patch() -> None:
    trainer = _trainer(_data(), patch_size=[3, 3, 3], fg_oversample=1.0)
    assert all(bool((b.mask == 1).flatten(1).any(1).all()) for b in trainer.batches(shuffle=True))


def test_volumes_smaller_than_the_patch_are_zero_padded() -> None:
    data = _data(size=(6, 6, 4))
    batch = next(_trainer(data, patch_size=[6, 6, 8]).batches())
    assert batch.image.shape[2:] == (6, 6, 8)
    assert batch.image[..., :2].eq(0).all() and batch.image[..., 6:].eq(0).all()
    assert torch.equal(batch.image[..., 2:6], data.images[:2])


def test_patch_size_with_the_wrong_number_of_axes_names_the_key() -> None:
    with pytest.raises(ValueError, match="train.patch_size"):
        _trainer(_data(), patch_size=[4, 4])


def _fit_params(seed: int, **train: Any) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(channels=[4, 8], strides=[2], num_res_units=0), 3, 1, 2)
    _trainer(_data(size=(8, 8, 8)), seed=seed, **train).fit(model)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_fit_augments_but_batches_do_not() -> None:
    aug = AugmentConfig(enabled=True, rotate_prob=1.0, noise_prob=1.0)
    trainer = _trainer(_data(), patch_size=[4, 4, 4], augment=aug)
    plain = _trainer(_data(), patch_size=[4, 4, 4])
    for a, b in zip(trainer.batches(shuffle=True), plain.batches(shuffle=True), strict=True):
        assert torch.equal(a.image, b.image)
    with_aug = _fit_params(0, patch_size=[4, 4, 4], augment=aug)
    without = _fit_params(0, patch_size=[4, 4, 4])
    assert any(not torch.equal(v, without[k]) for k, v in with_aug.items())


def test_patched_augmented_fit_is_reproducible_from_the_seed() -> None:
    train = {"patch_size": [4, 4, 4], "augment": AugmentConfig(enabled=True, rotate_prob=0.5, elastic_prob=0.5)}
    a, b, c = _fit_params(1, **train), _fit_params(1, **train), _fit_params(2, **train)
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert any(not torch.equal(v, c[k]) for k, v in a.items())



def test_patch_and_window_sizes_must_be_multiples_of_the_model_downsampling() -> None:
    with pytest.raises(ConfigError, match=r"train.patch_size \[30, 32\].*multiple of 8"):
        config_from_dict({"train": {"patch_size": [30, 32]}})
    with pytest.raises(ConfigError, match="eval.sliding_window.roi_size"):
        config_from_dict({"model": {"channels": [4, 8], "strides": [2]}, "eval": {"sliding_window": {"roi_size": [5, 4]}}})
    assert config_from_dict({"train": {"patch_size": [32, 16, 8]}}).train.patch_size == [32, 16, 8]
