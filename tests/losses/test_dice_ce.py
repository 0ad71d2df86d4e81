from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from fedseg.config import LossConfig
from fedseg.losses import build_loss


def _target(shape: tuple[int, ...], num_classes: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, num_classes, shape, generator=g, dtype=torch.int64)


@pytest.mark.parametrize("spatial", [(8, 8), (4, 6, 5)])
def test_perfect_prediction_has_low_loss(spatial: tuple[int, ...]) -> None:
    target = _target((2, 1, *spatial), 3)
    perfect = 50.0 * F.one_hot(target[:, 0], 3).movedim(-1, 1).float()
    loss_fn = build_loss(LossConfig(), num_classes=3)
    low = loss_fn(perfect, target)
    high = loss_fn(-perfect, target)
    assert low.ndim == 0
    assert low.item() < 1e-3
    assert high.item() > 1.0


def test_dice_weight_zero_equals_torch_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = _target((2, 1, 8, 8), 3)
    loss = build_loss(LossConfig(dice_weight=0.0, ce_weight=1.0), num_classes=3)(logits, target)
    assert_close(loss, F.cross_entropy(logits, target[:, 0]), rtol=1e-6, atol=1e-7)


def test_weights_combine_linearly() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 6, 6, 6)
    target = _target((2, 1, 6, 6, 6), 2)
    dice = build_loss(LossConfig(dice_weight=1.0, ce_weight=0.0), 2)(logits, target)
    ce = build_loss(LossConfig(dice_weight=0.0, ce_weight=1.0), 2)(logits, target)
    both = build_loss(LossConfig(dice_weight=0.5, ce_weight=2.0), 2)(logits, target)
    assert_close(both, 0.5 * dice + 2.0 * ce, rtol=1e-6, atol=1e-7)


def test_gradients_flow() -> None:
    logits = torch.randn(1, 2, 8, 8, requires_grad=True)
    build_loss(LossConfig(), 2)(logits, _target((1, 1, 8, 8), 2)).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_wrong_shapes_raise() -> None:
    loss_fn = build_loss(LossConfig(), num_classes=3)
    with pytest.raises(ValueError, match=r"\(B, 3, \*spatial\)"):
        loss_fn(torch.randn(1, 2, 4, 4), _target((1, 1, 4, 4), 2))
    with pytest.raises(ValueError, match=r"target must have shape"):
        loss_fn(torch.randn(1, 3, 4, 4), _target((1, 4, 4), 3))


def test_both_weights_zero_raise() -> None:
    with pytest.raises(ValueError, match="both 0"):
        build_loss(LossConfig(dice_weight=0.0, ce_weight=0.0), 2)
