"""Deep supervision: nnU-Net's weights, nearest-neighbour targets, and the plain loss otherwise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedseg.losses import DeepSupervisionLoss, DiceCE
from fedseg.losses.deep_supervision import deep_supervision_weights, downsample_target
from fedseg.types import DEEP_SUPERVISION_OUTPUTS


@pytest.mark.parametrize(("n", "expected"), [
    (1, [1.0]),
    (2, [1.0, 0.0]),  # the lowest resolution weighs 0
    (3, [2 / 3, 1 / 3, 0.0]),  # [1, 1/2, 0] / 1.5
    (5, [8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0]),  # [1, 1/2, 1/4, 1/8, 0] / 1.875 (a 6-stage 3D nnU-Net)
])
def test_weights_are_nnunets(n: int, expected: list[float]) -> None:
    assert deep_supervision_weights(n) == pytest.approx(expected, rel=1e-15, abs=0)


def test_targets_are_downsampled_by_nearest_exact() -> None:
    target = torch.arange(16).reshape(1, 1, 4, 4)
    # nearest-exact picks source index floor((i + 0.5) * 2): rows/columns 1 and 3
    assert downsample_target(target, (2, 2)).tolist() == [[[[5, 7], [13, 15]]]]
    assert downsample_target(target, (2, 2)).dtype == torch.int64
    assert downsample_target(target, (4, 4)) is target


class _Sum(nn.Module):
    """A base loss easy to compute by hand: mean logit + mean target."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return logits.mean() + target.float().mean()


def test_the_loss_is_the_weighted_sum_over_outputs() -> None:
    logits = torch.full((1, 2, 4, 4), 1.0)
    low, lowest = torch.full((1, 2, 2, 2), 2.0), torch.full((1, 2, 1, 1), 5.0)
    setattr(logits, DEEP_SUPERVISION_OUTPUTS, (low, lowest))
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[..., 1, 1] = 1  # survives at 2x2 (row 1, column 1) and not at 1x1 (nearest-exact picks (2, 2))
    value = DeepSupervisionLoss(_Sum())(logits, target)
    # weights [2/3, 1/3, 0]: (1 + 1/16) * 2/3 + (2 + 1/4) * 1/3 + (5 + 0) * 0
    assert value.item() == pytest.approx((1 + 1 / 16) * 2 / 3 + (2 + 1 / 4) / 3, rel=1e-6)


def test_without_outputs_it_is_the_base_loss_exactly() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 1, 8, 8))
    base = DiceCE(3)
    assert torch.equal(DeepSupervisionLoss(base)(logits, target), base(logits, target))
