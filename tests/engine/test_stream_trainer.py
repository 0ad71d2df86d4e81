"""The trainer on a split streamed from disk gives exactly the batches, losses and weights of the
in-memory path, with any number of loader workers; cases of different shapes train and evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedseg.config import AugmentConfig, LossConfig, ModelConfig, TrainConfig
from fedseg.data.base import SegmentationSet
from fedseg.data.cases import ListCases
from fedseg.engine.evaluate import SlidingWindow, case_groups, evaluate
from fedseg.engine.trainer import Trainer
from fedseg.losses import build_loss
from fedseg.models import build_model

_CPU = torch.device("cpu")
_SIZE = (12, 10, 8)


def _in_memory(n: int = 5, size: tuple[int, ...] = _SIZE) -> SegmentationSet:
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, 1, *size, dtype=torch.long)
    masks[(slice(None), slice(None), *[slice(s // 2 - 1, s // 2 + 2) for s in size])] = 1
    masks[1:2] = 0  # one case without foreground
    images = masks.float() + 0.3 * torch.randn(n, 1, *size, generator=gen)
    return SegmentationSet(images=images, masks=masks, spacing=torch.ones(n, len(size), dtype=torch.float64),
                           ids=[f"c{i}" for i in range(n)])


def _on_disk(data: SegmentationSet, folder: Path) -> SegmentationSet:
    """The same cases as ``.npy`` files (float32 images, uint8 masks), read memory-mapped."""
    folder.mkdir(parents=True, exist_ok=True)
    images, masks = [], []
    for i in range(len(data)):
        image, mask = data.case(i)
        assert mask is not None
        images.append(folder / f"{i}.image.npy")
        masks.append(folder / f"{i}.mask.npy")
        np.save(images[-1], image.numpy())
        np.save(masks[-1], mask[0].numpy().astype(np.uint8))
    store = ListCases(images, masks, [data.shape_of(i) for i in range(len(data))], channels=1)
    return SegmentationSet(cases=store, spacing=data.spacing, ids=data.ids)


def _trainer(data: SegmentationSet, **train: Any) -> Trainer:
    cfg = TrainConfig(batch_size=2, lr=1e-2, **train)
    return Trainer(data, build_loss(LossConfig(), 2), cfg, epochs=2, device=_CPU, seed=7, state={})


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(channels=[4, 8], strides=[2], num_res_units=0), 3, 1, 2)


def _fit(data: SegmentationSet, **train: Any) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    model = _model()
    metrics = _trainer(data, **train).fit(model)
    return metrics, model.state_dict()


SETTINGS = {
    "whole": {},
    "patches": {"patch_size": [8, 8, 8], "samples_per_volume": 2},
    "patches+flips": {"patch_size": [8, 8, 8], "augment": AugmentConfig(enabled=True, flip_prob=0.5, rotate_prob=0,
                                                                         affine_prob=0, elastic_prob=0)},
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_streamed_batches_equal_the_in_memory_ones(setting: str, tmp_path: Path) -> None:
    memory = _in_memory()
    disk = _on_disk(memory, tmp_path)
    assert memory.in_memory and not disk.in_memory
    want = list(_trainer(memory, **SETTINGS[setting]).batches(shuffle=True))
    got = list(_trainer(disk, **SETTINGS[setting]).batches(shuffle=True))
    assert len(got) == len(want) > 1
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("setting", ["whole", "patches+flips"])
def test_streamed_training_is_bit_identical_with_any_number_of_workers(setting: str, workers: int,
                                                                       tmp_path: Path) -> None:
    memory = _in_memory()
    want_metrics, want = _fit(memory, **SETTINGS[setting])
    got_metrics, got = _fit(_on_disk(memory, tmp_path), num_workers=workers, **SETTINGS[setting])
    assert got_metrics == want_metrics
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_streamed_training_does_not_touch_the_global_generator(tmp_path: Path) -> None:
    disk = _on_disk(_in_memory(), tmp_path)
    torch.manual_seed(123)
    list(_trainer(disk, num_workers=1).batches(shuffle=True))
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))


def _mixed_shapes(folder: Path) -> SegmentationSet:
    shapes = [(12, 10, 8), (9, 11, 8), (6, 6, 4), (12, 10, 8)]
    images, masks = [], []
    for i, shape in enumerate(shapes):
        mask = np.zeros(shape, dtype=np.uint8)
        mask[2:5, 2:5, 1:3] = 1
        image = (mask + 0.2 * np.random.default_rng(i).standard_normal(shape)).astype(np.float32)[None]
        images.append(folder / f"{i}.image.npy")
        masks.append(folder / f"{i}.mask.npy")
        np.save(images[-1], image)
        np.save(masks[-1], mask)
    store = ListCases(images, masks, shapes, channels=1)
    return SegmentationSet(cases=store, spacing=torch.ones(len(shapes), 3, dtype=torch.float64),
                           ids=[f"m{i}" for i in range(len(shapes))])


def test_cases_of_different_shapes_train_on_patches_and_evaluate_case_by_case(tmp_path: Path) -> None:
    data = _mixed_shapes(tmp_path)
    with pytest.raises(Exception, match="differ in shape"):
        data.images  # noqa: B018 (stacking is refused, naming why)
    batches = list(_trainer(data, patch_size=[8, 8, 8]).batches(shuffle=True))
    assert [tuple(b.image.shape) for b in batches] == [(2, 1, 8, 8, 8)] * 2
    model = _model()
    metrics = _trainer(data, patch_size=[8, 8, 8]).fit(model)
    assert metrics["steps"] == 4.0 and np.isfinite(metrics["loss"])
    # whole-image evaluation needs one shape per pass: groups break where the shape changes
    assert case_groups(data, 16) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    scores = evaluate(model, data, num_classes=2, device=_CPU, window=SlidingWindow(roi_size=(8, 8, 8)))
    assert scores["n"] == 4 and np.isfinite(scores["dice"])


def test_without_patches_different_shapes_are_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train.patch_size"):
        _trainer(_mixed_shapes(tmp_path))


def test_streamed_evaluation_equals_the_in_memory_one(tmp_path: Path) -> None:
    memory = _in_memory()
    model = _model()
    window = SlidingWindow(roi_size=(8, 8, 8))
    want = evaluate(model, memory, num_classes=2, device=_CPU, batch_size=2, window=window)
    got = evaluate(model, _on_disk(memory, tmp_path), num_classes=2, device=_CPU, batch_size=2, window=window)
    assert got == pytest.approx(want, nan_ok=True) and got["n"] == 5
