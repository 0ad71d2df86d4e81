from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from fedseg.algorithms.finch import aggregate_prototypes, coarsest_cluster_means, finch


def _at(*degrees: float) -> torch.Tensor:
    """Unit 2-D vectors at the given angles: cosine distance depends only on the angle between."""
    rad = torch.tensor([math.radians(d) for d in degrees], dtype=torch.float64)
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def test_identical_prototypes_give_one_cluster_equal_to_the_input() -> None:
    proto = torch.tensor([0.3, -1.2, 2.0, 0.5])
    stacked = proto.repeat(5, 1)
    c = finch(stacked)
    assert c.tolist() == [[0]] * 5
    means = coarsest_cluster_means(stacked)
    assert means.shape == (1, 4)
    assert_close(means[0], proto)


def test_two_separated_groups() -> None:
    # a0..a2 at 0, 10, 30 deg; b0..b2 at 90, 100, 130 deg.
    # First neighbours (by angle gap): a0->a1 (10), a1->a0 (10 < 20), a2->a1 (20 < 60),
    # b0->b1 (10), b1->b0 (10 < 30), b2->b1 (30). Components: {a0,a1,a2}, {b0,b1,b2}.
    # Level 1 on the two means merges them into one cluster, which FINCH does not keep.
    x = _at(0, 10, 30, 90, 100, 130)
    c = finch(x)
    assert c.tolist() == [[0], [0], [0], [1], [1], [1]]
    means = coarsest_cluster_means(x)
    assert_close(means, torch.stack([x[:3].mean(0), x[3:].mean(0)]))


def test_two_level_hierarchy() -> None:
    # Pairs at {0,2}, {10,12}, {40,42}, {50,52} deg: each point's first neighbour is its pair
    # partner (2 deg < 8 deg) -> level 0 = 4 pairs. Pair means point at 1, 11, 41, 51 deg:
    # 1<->11 and 41<->51 are mutual first neighbours (10 < 30) -> level 1 = 2 clusters.
    # Level 2 would be a single cluster: dropped, so level 1 is the coarsest.
    x = _at(0, 2, 10, 12, 40, 42, 50, 52)
    c = finch(x)
    assert c[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert c[:, 1].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert c.shape == (8, 2)
    assert_close(coarsest_cluster_means(x), torch.stack([x[:4].mean(0), x[4:].mean(0)]))


def test_chain_links_far_ends() -> None:
    # Gaps 10, 11, 12, 13 deg: 0->10, 10->0 (10 < 11), 21->10 (11 < 12), 33->21 (12 < 13),
    # 46->33. Every point links to the previous one, so 0 and 46 deg (46 apart) share a
    # cluster: first-neighbour links chain transitively.
    x = _at(0, 10, 21, 33, 46)
    assert finch(x).tolist() == [[0]] * 5
    assert_close(coarsest_cluster_means(x), x.mean(0, keepdim=True))


def test_scale_does_not_matter_but_direction_does() -> None:
    # Cosine distance ignores the norm: 10x a vector is its own first neighbour's twin.
    x = torch.tensor([[1.0, 0.0], [10.0, 0.5], [0.0, 1.0], [0.2, 5.0]])
    assert finch(x)[:, 0].tolist() == [0, 0, 1, 1]


def test_labels_do_not_depend_on_client_order_beyond_renumbering() -> None:
    x = _at(0, 2, 10, 12, 40, 42, 50, 52)
    perm = torch.tensor([5, 0, 7, 2, 1, 6, 4, 3])
    c = finch(x)
    cp = finch(x[perm])
    for level in range(c.shape[1]):
        same = c[perm.numpy(), level][:, None] == c[perm.numpy(), level][None, :]
        same_p = cp[:, level][:, None] == cp[:, level][None, :]
        assert np.array_equal(same, same_p)


def test_zero_row_is_at_distance_one() -> None:
    # scikit-learn's cosine distance treats an all-zero row as orthogonal to everything.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 0.0]])
    assert finch(x)[:, 0].tolist() == [0, 0, 0]


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        finch(np.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        finch(np.array([[1.0, float("nan")], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="n_clients"):
        coarsest_cluster_means(torch.zeros(0, 3))


def test_aggregate_per_level_and_class() -> None:
    a, b, c = _at(0, 10, 30), _at(90, 100, 130), _at(45)
    clients = [
        {"enc": {0: a[0], 1: b[0]}, "dec": {0: a[0, :1]}},
        {"enc": {0: a[1], 1: b[1]}},
        {"enc": {0: a[2], 1: b[2], 2: c[0]}},
    ]
    out = aggregate_prototypes(clients)
    assert list(out) == ["enc", "dec"]
    assert list(out["enc"]) == [0, 1, 2]
    # Three clients in one angular group per class -> one cluster, the mean.
    assert_close(out["enc"][0], a.mean(0, keepdim=True))
    assert_close(out["enc"][1], b.mean(0, keepdim=True))
    # A class held by one client keeps that client's prototype.
    assert_close(out["enc"][2], c)
    assert_close(out["dec"][0], a[0, :1][None])


def test_aggregate_keeps_several_clusters() -> None:
    x = _at(0, 2, 40, 42)
    out = aggregate_prototypes([{"enc": {1: row}} for row in x])
    assert_close(out["enc"][1], torch.stack([x[:2].mean(0), x[2:].mean(0)]))


def test_aggregate_rejects_mismatched_widths() -> None:
    with pytest.raises(ValueError, match="widths"):
        aggregate_prototypes([{"enc": {0: torch.ones(3)}}, {"enc": {0: torch.ones(4)}}])
    with pytest.raises(ValueError, match="1-D"):
        aggregate_prototypes([{"enc": {0: torch.ones(1, 3)}}])
