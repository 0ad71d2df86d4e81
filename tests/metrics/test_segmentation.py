from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from fedseg.metrics import METRIC_NAMES, MetricAccumulator, case_metrics


def _cube(shape: tuple[int, ...], lo: int, hi: int) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.int64)
    mask[tuple(slice(lo, hi) for _ in shape)] = 1
    return mask


@pytest.mark.parametrize("shape", [(16, 16), (12, 12, 12)])
def test_identical_masks_are_perfect(shape: tuple[int, ...]) -> None:
    x = _cube(shape, 3, 9)
    m = case_metrics(x, x.clone(), num_classes=2, spacing=[1.3] * len(shape))
    assert m == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "precision": 1.0, "recall": 1.0}


def test_hand_computed_2x2() -> None:
    # pred has 3 foreground pixels, target 2, overlap 2: TP=2, FP=1, FN=0.
    pred = torch.tensor([[1, 1], [1, 0]])
    target = torch.tensor([[1, 1], [0, 0]])
    m = case_metrics(pred, target, num_classes=2, spacing=(1.0, 1.0))
    assert_allclose(m["dice"], 2 * 2 / (3 + 2), rtol=1e-12)  # 0.8
    assert_allclose(m["iou"], 2 / 3, rtol=1e-12)
    assert_allclose(m["precision"], 2 / 3, rtol=1e-12)
    assert_allclose(m["recall"], 1.0, rtol=1e-12)


def test_hand_computed_precision_recall() -> None:
    # target: 4x4 block (16 px); pred: 4x2 half of it plus 4 px outside -> TP=8, FP=4, FN=8.
    target = torch.zeros(10, 10, dtype=torch.int64)
    target[2:6, 2:6] = 1
    pred = torch.zeros(10, 10, dtype=torch.int64)
    pred[2:6, 2:4] = 1
    pred[8, 0:4] = 1
    m = case_metrics(pred, target, num_classes=2, spacing=(1.0, 1.0))
    assert_allclose(m["precision"], 8 / 12, rtol=1e-12)
    assert_allclose(m["recall"], 8 / 16, rtol=1e-12)
    assert_allclose(m["dice"], 16 / (16 + 4 + 8), rtol=1e-12)
    assert_allclose(m["iou"], 8 / 20, rtol=1e-12)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_cube_shifted_one_voxel_hd95_is_axis_spacing(axis: int) -> None:
    spacing = (1.0, 1.5, 2.5)
    target = _cube((16, 16, 16), 4, 10)
    pred = torch.roll(target, shifts=1, dims=axis)
    m = case_metrics(pred, target, num_classes=2, spacing=spacing)
    assert_allclose(m["hd95"], spacing[axis], rtol=1e-6)


@pytest.mark.parametrize("axis", [0, 1])
def test_square_shifted_one_pixel_hd95_is_axis_spacing(axis: int) -> None:
    spacing = (0.5, 2.0)
    target = _cube((20, 20), 5, 13)
    pred = torch.roll(target, shifts=1, dims=axis)
    m = case_metrics(pred, target, num_classes=2, spacing=spacing)
    assert_allclose(m["hd95"], spacing[axis], rtol=1e-6)


def test_both_empty_is_perfect() -> None:
    empty = torch.zeros(8, 8, dtype=torch.int64)
    m = case_metrics(empty, empty.clone(), num_classes=2, spacing=(1.0, 1.0))
    assert m == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "precision": 1.0, "recall": 1.0}


@pytest.mark.parametrize("missed", [True, False], ids=["gt_only", "pred_only"])
def test_one_side_empty_scores_worst_with_diagonal_hd95(missed: bool) -> None:
    spacing = (0.5, 2.0, 1.0)
    shape = (8, 10, 6)
    empty = torch.zeros(shape, dtype=torch.int64)
    full = _cube(shape, 2, 5)
    pred, target = (empty, full) if missed else (full, empty)
    m = case_metrics(pred, target, num_classes=2, spacing=spacing)
    diagonal = math.sqrt((8 * 0.5) ** 2 + (10 * 2.0) ** 2 + (6 * 1.0) ** 2)
    assert m["dice"] == m["iou"] == m["precision"] == m["recall"] == 0.0
    assert_allclose(m["hd95"], diagonal, rtol=1e-6)
    assert all(math.isfinite(v) for v in m.values())


def test_multiclass_per_class_keys_and_mean() -> None:
    target = torch.zeros(10, 10, dtype=torch.int64)
    target[1:4, 1:4] = 1
    target[6:9, 6:9] = 2
    pred = target.clone()
    pred[6:9, 6:9] = 0  # class 2 missed entirely; class 3 absent in both
    m = case_metrics(pred, target, num_classes=4, spacing=(1.0, 1.0))
    assert (m["dice_c1"], m["dice_c2"], m["dice_c3"]) == (1.0, 0.0, 1.0)
    assert_allclose(m["dice"], 2 / 3, rtol=1e-12)
    assert set(m) == set(METRIC_NAMES) | {f"{k}_c{c}" for k in METRIC_NAMES for c in (1, 2, 3)}
    assert m["hd95_c1"] == 0.0 and m["hd95_c2"] == pytest.approx(math.sqrt(200))


def test_case_metrics_rejects_bad_input() -> None:
    x = torch.zeros(4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="same shape"):
        case_metrics(x, torch.zeros(4, 5, dtype=torch.int64), 2, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(x, x, 2, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="num_classes"):
        case_metrics(x, x, 1, (1.0, 1.0))
    with pytest.raises(ValueError, match="spatial"):
        case_metrics(x[None, None], x[None, None], 2, (1.0, 1.0))


def test_accumulator_matches_case_metrics_and_accepts_channel_axis() -> None:
    target = torch.stack([_cube((12, 12), 2, 8), torch.zeros(12, 12, dtype=torch.int64)])
    pred = torch.stack([torch.roll(target[0], 1, 0), torch.zeros(12, 12, dtype=torch.int64)])
    spacing = torch.tensor([[0.5, 2.0], [1.0, 1.0]])
    acc = MetricAccumulator(num_classes=2)
    acc.add(pred[:, None], target[:, None], spacing)
    expected = [case_metrics(pred[b], target[b], 2, spacing[b].tolist()) for b in range(2)]
    assert acc.per_case() == expected
    summary = acc.summary()
    assert summary["n"] == 2
    assert_allclose(summary["hd95"], (0.5 + 0.0) / 2, rtol=1e-6)
    acc.reset()
    assert len(acc) == 0 and acc.summary() == {"n": 0}


def test_accumulator_shared_spacing_3d() -> None:
    target = _cube((10, 10, 10), 2, 7)[None].repeat(3, 1, 1, 1)
    acc = MetricAccumulator(num_classes=2)
    acc.add(torch.roll(target, 1, 3), target, (1.0, 1.5, 2.5))
    assert acc.summary()["n"] == 3
    assert_allclose(acc.summary()["hd95"], 2.5, rtol=1e-6)


def test_accumulator_nanmean_ignores_nan() -> None:
    acc = MetricAccumulator(num_classes=2)
    acc.add_case({"dice": 0.5, "hd95": float("nan")})
    acc.add_case({"dice": 1.0, "hd95": 3.0})
    acc.extend([{"dice": float("nan"), "hd95": float("nan")}])
    summary = acc.summary()
    assert summary["n"] == 3
    assert_allclose(summary["dice"], 0.75, rtol=1e-12)
    assert_allclose(summary["hd95"], 3.0, rtol=1e-12)
    acc.reset()
    acc.add_case({"dice": float("nan")})
    assert np.isnan(acc.summary()["dice"])


def test_accumulator_rejects_mismatched_spacing() -> None:
    acc = MetricAccumulator(num_classes=2)
    x = torch.zeros(2, 8, 8, dtype=torch.int64)
    with pytest.raises(ValueError, match="rows"):
        acc.add(x, x, [[1.0, 1.0]] * 3)
    with pytest.raises(ValueError, match="spatial axes"):
        acc.add(x, x, (1.0, 1.0, 1.0))
