from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from fedseg.losses.prototype import (
    PrototypeAverage,
    batch_prototypes,
    labels_on_grid,
    prototype_alignment_loss,
    prototype_contrastive_loss,
)

E0, E1, E2 = torch.eye(3)


def _map(vectors: list[list[torch.Tensor]]) -> torch.Tensor:
    """A (1, C, h, w) feature map from an h x w grid of (C,) vectors."""
    return torch.stack([torch.stack(row) for row in vectors]).permute(2, 0, 1)[None]


def test_labels_on_grid_nearest() -> None:
    # 4x4 labels, one class per 2x2 quadrant; nearest to 2x2 picks each quadrant's top-left.
    labels = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])[None]
    assert labels_on_grid(labels, (2, 2)).tolist() == [[[0, 1], [2, 3]]]
    assert labels_on_grid(labels[:, None], (4, 4)).tolist() == labels.tolist()
    with pytest.raises(ValueError, match="2-D feature grid"):
        labels_on_grid(labels[0], (2, 2))


def test_batch_prototypes_by_hand() -> None:
    # 2x2 features, labels upsampled to 4x4 (each feature pixel covers a 2x2 label block).
    feats = _map([[E0, 3 * E0], [E1, E2]])
    labels = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 2, 2], [1, 1, 2, 2]])[None, None]
    protos = batch_prototypes(feats.requires_grad_(), labels)
    assert list(protos) == [0, 1, 2]
    assert_close(protos[0], 2 * E0)  # mean of E0 and 3*E0: background included
    assert_close(protos[1], E1)
    assert_close(protos[2], E2)
    assert not protos[0].requires_grad


def test_batch_prototypes_pool_the_batch_3d() -> None:
    feats = torch.arange(2 * 2 * 8, dtype=torch.float32).reshape(2, 2, 2, 2, 2)
    labels = torch.ones(2, 1, 2, 2, 2, dtype=torch.int64)
    protos = batch_prototypes(feats, labels)
    assert_close(protos[1], feats.movedim(1, -1).reshape(-1, 2).mean(0))


def test_prototype_average_weights_batches_equally() -> None:
    avg = PrototypeAverage()
    assert avg.result() == {}
    avg.update({0: torch.tensor([1.0, 0.0]), 1: torch.tensor([4.0, 4.0])})
    avg.update({0: torch.tensor([3.0, 2.0])})
    out = avg.result()
    assert_close(out[0], torch.tensor([2.0, 1.0]))  # (b1 + b2) / 2
    assert_close(out[1], torch.tensor([4.0, 4.0]))  # seen in one batch only
    with pytest.raises(ValueError, match="class 0"):
        avg.update({0: torch.zeros(3)})


def test_contrastive_near_zero_at_positive_and_large_at_negative() -> None:
    pos, neg = E1[None], torch.stack([E0, -E1])
    low = prototype_contrastive_loss(E1[None], pos, neg)
    # exp saturates at 1e6 for the positive; negatives give exp(0) = 1 and exp(-200) ~ 0.
    assert low.item() == pytest.approx(math.log(1 + 1e-6), abs=1e-6)
    high = prototype_contrastive_loss(E0[None], pos, neg)
    # positive exp(0) = 1 against the saturated negative 1e6 (+ exp(0) for -E1's orthogonal).
    assert high.item() == pytest.approx(math.log(1e6 + 2), rel=1e-5)
    worst = prototype_contrastive_loss(-E1[None], pos, torch.stack([-E1]))
    assert worst.item() > 30.0  # -log(1e-9 / 1e6) ~ 34.5, finite


def test_contrastive_gradient_flows_to_features() -> None:
    f = torch.tensor([[0.001, 0.002, 1.0]], requires_grad=True)
    # tau large enough that nothing saturates, so the gradient is not clamped away.
    loss = prototype_contrastive_loss(f, E0[None], torch.stack([E1, E2]), tau=1.0)
    loss.backward()
    assert f.grad is not None and f.grad.abs().sum() > 0


def test_contrastive_matches_formula() -> None:
    g = torch.Generator().manual_seed(0)
    f, pos, neg = torch.randn(5, 4, generator=g), torch.randn(2, 4, generator=g), torch.randn(3, 4, generator=g)
    s = F.cosine_similarity(f[:, None], torch.cat([pos, neg])[None], dim=2) / 0.5
    expected = -(s[:, :2].exp().sum(1) / s.exp().sum(1)).log().mean()
    assert_close(prototype_contrastive_loss(f, pos, neg, tau=0.5), expected)


def test_alignment_loss_by_hand() -> None:
    # Foreground pixels: two of class 1 (equal to its prototype E1), one of class 2 at E1 too.
    feats = _map([[E0, E1], [E1, E1]])
    labels = torch.tensor([[0, 1], [1, 2]])[None]
    protos = {0: E0[None], 1: E1[None], 2: E2[None]}
    loss = prototype_alignment_loss(feats, labels, protos)
    c1 = math.log(1 + 2e-6)  # saturated positive vs two exp(0)
    c2 = math.log(1e6 + 2) + 2 / 3  # at a negative prototype; MSE(E1, E2) = 2/3
    assert loss.item() == pytest.approx((c1 + c2) / 2, rel=1e-5)


def test_alignment_counts_classes_without_prototypes() -> None:
    feats = _map([[E1, E1]])
    labels = torch.tensor([[1, 2]])[None]
    loss = prototype_alignment_loss(feats, labels, {0: E0[None], 1: E1[None]})
    # Class 2 has no prototype: adds 0 but still counts in the mean, as the authors' code.
    assert loss.item() == pytest.approx(math.log(1 + 1e-6) / 2, abs=1e-6)


def test_alignment_empty_foreground_is_zero_with_graph() -> None:
    feats = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = prototype_alignment_loss(feats, torch.zeros(2, 4, 4, dtype=torch.int64), {0: E0[None], 1: E1[None]})
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert feats.grad is not None and torch.equal(feats.grad, torch.zeros_like(feats))
    assert prototype_alignment_loss(feats, torch.ones(2, 4, 4, dtype=torch.int64), {}).item() == 0.0


def test_alignment_gradient_flows_and_labels_are_resized() -> None:
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 16, 16), generator=g)
    protos = {0: torch.randn(2, 3, generator=g), 1: torch.randn(3, 3, generator=g), 2: torch.randn(1, 3, generator=g)}
    loss = prototype_alignment_loss(feats, labels, protos, tau=1.0)
    loss.backward()
    assert loss.item() > 0 and feats.grad is not None
    grid = labels_on_grid(labels, (4, 4))
    fg_grad = feats.grad.abs().sum(1)
    assert torch.all(fg_grad[grid == 0] == 0) and torch.all(fg_grad[grid != 0] > 0)


def test_alignment_subsampling_is_seeded_and_bounded() -> None:
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(1, 3, 8, 8, generator=g, requires_grad=True)
    labels = torch.randint(1, 3, (1, 8, 8), generator=g)
    protos = {0: E0[None], 1: E1[None], 2: E2[None]}

    def run(seed: int) -> torch.Tensor:
        return prototype_alignment_loss(
            feats, labels, protos, tau=1.0, num_pixels=5, generator=torch.Generator().manual_seed(seed)
        )

    assert torch.equal(run(7), run(7))
    run(7).backward()
    assert feats.grad is not None and int((feats.grad.abs().sum(1) > 0).sum()) == 5
    full = prototype_alignment_loss(feats, labels, protos, tau=1.0)
    assert torch.equal(prototype_alignment_loss(feats, labels, protos, tau=1.0, num_pixels=64), full)
    with pytest.raises(ValueError, match="num_pixels"):
        prototype_alignment_loss(feats, labels, protos, num_pixels=0)


def test_contrastive_is_constant_on_nonnegative_features_at_the_authors_constants() -> None:
    # Post-ReLU features and their prototypes are >= 0, so cosines are >= 0 and, once above
    # logit_clamp * tau = 0.1, every logit is clamped at 20 and every exp at 1e6: the loss is
    # log((P + Q) / P) whatever the features, with zero gradient (docs/benchmarks.md, FedBCS: why
    # FPL's InfoNCE at the `last` tap gives no training signal and FPL behaved like FedProto).
    g = torch.Generator().manual_seed(0)
    f = torch.rand(16, 8, generator=g).add(0.1).requires_grad_()
    pos, neg = torch.rand(1, 8, generator=g).add(0.1), torch.rand(1, 8, generator=g).add(0.1)
    cos = F.cosine_similarity(f[:, None], torch.cat([pos, neg])[None], dim=2)
    assert cos.min() > 0.1  # the precondition: every logit saturates
    loss = prototype_contrastive_loss(f, pos, neg)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    assert f.grad is not None and torch.count_nonzero(f.grad) == 0
