"""The perturbed boundary loss (methods.md 3(h) check 4)."""

from __future__ import annotations

import pytest
import torch

from fedseg.losses.boundary import PerturbedBoundaryLoss, boundary_loss, shift, soft_boundary


def _square(size: int = 16, lo: int = 5, hi: int = 11, dims: int = 2) -> torch.Tensor:
    t = torch.zeros(1, 1, *([size] * dims))
    t[(0, 0, *([slice(lo, hi)] * dims))] = 1.0
    return t


def test_soft_boundary_of_a_square_is_a_band_of_width_k_minus_one() -> None:
    y = _square()
    b3 = soft_boundary(y, 3)
    assert set(b3.unique().tolist()) == {0.0, 1.0}
    assert b3[0, 0, 8, 3:13].tolist() == [0, 1, 1, 0, 0, 0, 0, 1, 1, 0]  # 4 -> 5 and 10 -> 11 edges
    assert soft_boundary(y, 5).sum() > b3.sum()
    with pytest.raises(ValueError, match="odd"):
        soft_boundary(y, 4)


@pytest.mark.parametrize("width", [3, 5, 7])
@pytest.mark.parametrize("dims", [2, 3])
def test_check4_zero_when_the_prediction_equals_the_target(width: int, dims: int) -> None:
    y = _square(dims=dims, size=12, lo=3, hi=8)
    assert boundary_loss(y.clone(), y, width).item() == 0.0
    assert boundary_loss(y.clone(), y, width, offsets=[0] * dims).item() == 0.0
    logits = torch.cat([-100 * (y - 0.5), 100 * (y - 0.5)], dim=1)  # softmax exactly 0/1 in float32
    assert PerturbedBoundaryLoss(widths=[width], max_shift=0)(logits, y.long()).item() == 0.0


def test_check4_grows_with_a_boundary_shift() -> None:
    y = _square()
    losses = [boundary_loss(shift(y, [s, 0]), y, 3).item() for s in range(4)]
    assert losses[0] == 0.0
    assert 0 < losses[1] < losses[2] < losses[3], losses
    # the perturbation itself: a one-pixel shift of the target against a perfect prediction
    assert boundary_loss(y.clone(), y, 3, offsets=[1, 0]).item() == pytest.approx(losses[1])


def test_check4_differentiable() -> None:
    y = _square()
    logits = torch.randn(1, 2, 16, 16, requires_grad=True)
    loss = PerturbedBoundaryLoss()(logits, y.long(), torch.Generator().manual_seed(0))
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_shift_moves_and_zero_fills() -> None:
    t = torch.arange(1, 10, dtype=torch.float32).reshape(1, 1, 3, 3)
    assert shift(t, [1, 0])[0, 0].tolist() == [[0, 0, 0], [1, 2, 3], [4, 5, 6]]
    assert shift(t, [0, -1])[0, 0].tolist() == [[2, 3, 0], [5, 6, 0], [8, 9, 0]]
    assert torch.equal(shift(t, [0, 0]), t)


def test_perturbation_draws_from_the_generator() -> None:
    pbl = PerturbedBoundaryLoss()
    draws = [pbl.draw(2, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert draws[0] == draws[1]
    gen = torch.Generator().manual_seed(0)
    seen = [pbl.draw(2, gen) for _ in range(200)]
    assert {w for w, _ in seen} == {3, 5, 7}
    assert {o for _, offs in seen for o in offs} == {-1, 0, 1}
    with pytest.raises(ValueError, match="odd"):
        PerturbedBoundaryLoss(widths=[2])
    with pytest.raises(ValueError, match="max_shift"):
        PerturbedBoundaryLoss(max_shift=-1)
