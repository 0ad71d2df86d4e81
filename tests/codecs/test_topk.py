from __future__ import annotations

import pytest
import torch

from fedseg.codecs import CodecChain, Int8, TensorSpec, TopK, UpdateCodec
from fedseg.codecs.chain import RESIDUAL_KEY


def test_keeps_the_k_largest_magnitudes_exactly() -> None:
    x = torch.tensor([[0.1, -5.0, 0.2], [3.0, 0.0, -0.3]])
    codec = TopK(ratio=0.3, min_numel=0)  # ceil(0.3 * 6) = 2
    parts = codec.encode(x)
    assert (parts["idx"].long() + 2**15).tolist() == [1, 3] and parts["idx"].dtype == torch.int16
    assert parts["val"].tolist() == [-5.0, 3.0]
    x_hat = codec.decode(parts, TensorSpec.of(x))
    assert torch.equal(x_hat, torch.tensor([[0.0, -5.0, 0.0], [3.0, 0.0, 0.0]]))


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.5, 1.0])
def test_roundtrip_is_within_the_stated_bound(ratio: float) -> None:
    x = torch.randn(7, 5, 3, generator=torch.Generator().manual_seed(1))
    codec = TopK(ratio=ratio, min_numel=0)
    x_hat = codec.decode(codec.encode(x), TensorSpec.of(x))
    assert ((x - x_hat).abs() <= codec.error_bound(x)).all()
    assert int((x_hat != 0).sum()) == codec.k(x.numel())
    if ratio == 1.0:
        assert torch.equal(x_hat, x)


def test_small_tensors_are_sent_dense() -> None:
    codec = TopK(ratio=0.1, min_numel=10)
    b = torch.arange(9.0)
    assert list(codec.parts(TensorSpec.of(b))) == ["dense"]
    assert torch.equal(codec.decode(codec.encode(b), TensorSpec.of(b)), b)
    # by default, norm layers and biases (under 1024 elements) are dense, conv kernels sparse
    assert list(TopK().parts(TensorSpec((256,), torch.float32))) == ["dense"]
    assert list(TopK().parts(TensorSpec((32, 16, 3, 3), torch.float32))) == ["idx", "val"]


def test_invalid_ratio_is_rejected() -> None:
    with pytest.raises(ValueError, match="ratio"):
        TopK(ratio=0.0, min_numel=0)


@pytest.mark.parametrize("quantiser", [None, Int8()], ids=["topk", "topk+int8"])
def test_error_feedback_sent_plus_residual_equals_sum_of_true_updates(quantiser: Int8 | None) -> None:
    """methods.md FedSegNet check 3: residual + sum of sent updates = sum of true updates."""
    gen = torch.Generator().manual_seed(2)
    stages = (TopK(ratio=0.1, min_numel=0),) + ((quantiser,) if quantiser else ())
    codec = UpdateCodec(CodecChain(stages), error_feedback=True)
    reference = {"w": torch.zeros(4, 5)}
    state: dict[str, object] = {}
    sent = torch.zeros(4, 5, dtype=torch.float64)
    true = torch.zeros(4, 5, dtype=torch.float64)
    for _ in range(6):
        delta = torch.randn(4, 5, generator=gen)
        true += delta.double()
        message = codec.encode({"w": reference["w"] + delta}, reference, state)
        sent += (codec.decode(message, reference)["w"] - reference["w"]).double()
    residual = state[RESIDUAL_KEY]["w"].double()  # type: ignore[index]
    torch.testing.assert_close(sent + residual, true, rtol=0, atol=1e-5)


def test_error_feedback_eventually_transmits_every_coordinate() -> None:
    """A constant update of 10 coordinates, 1 sent per round: each coordinate's accumulated mass
    is sent eventually (the smallest would never win without feedback), and nothing is lost."""
    codec = UpdateCodec(CodecChain((TopK(ratio=0.1, min_numel=0),)), error_feedback=True)
    reference = {"w": torch.zeros(10)}
    delta = torch.linspace(1.0, 2.0, 10)
    state: dict[str, object] = {}
    sent = torch.zeros(10)
    rounds = 30
    for _ in range(rounds):
        got = codec.decode(codec.encode({"w": delta}, reference, state), reference)["w"]
        assert int((got != 0).sum()) == 1
        sent += got
    assert (sent > 0).all()
    torch.testing.assert_close(sent + state[RESIDUAL_KEY]["w"], rounds * delta)  # type: ignore[index]


def test_without_error_feedback_the_smallest_coordinate_is_never_sent() -> None:
    codec = UpdateCodec(CodecChain((TopK(ratio=0.1, min_numel=0),)), error_feedback=False)
    reference = {"w": torch.zeros(10)}
    delta = torch.linspace(1.0, 2.0, 10)
    state: dict[str, object] = {}
    for _ in range(10):
        got = codec.decode(codec.encode({"w": delta}, reference, state), reference)["w"]
        assert got[0] == 0
    assert RESIDUAL_KEY not in state


def test_indices_use_int16_up_to_65536_elements_and_int32_beyond() -> None:
    codec = TopK(ratio=0.001, min_numel=0)
    assert codec.parts(TensorSpec((256, 256), torch.float32))["idx"].dtype == torch.int16
    assert codec.parts(TensorSpec((256, 257), torch.float32))["idx"].dtype == torch.int32
    x = torch.zeros(2**16)
    x[[0, 2**15, 2**16 - 1]] = torch.tensor([3.0, -2.0, 1.0])
    codec = TopK(ratio=3 / 2**16, min_numel=0)
    x_hat = codec.decode(codec.encode(x), TensorSpec.of(x))
    assert torch.equal(x_hat, x)


def test_randk_sends_no_indices_and_the_receiver_rebuilds_the_positions() -> None:
    from fedseg.codecs import RandK

    torch.manual_seed(3)
    x = torch.randn(40, 50)
    codec = RandK(ratio=0.1, min_numel=0)
    parts = codec.encode(x)
    assert set(parts) == {"seed", "val"} and parts["val"].numel() == 200
    assert {k: TensorSpec.of(v) for k, v in parts.items()} == codec.parts(TensorSpec.of(x))
    x_hat = codec.decode(parts, TensorSpec.of(x))
    kept = x_hat != 0
    assert int(kept.sum()) == 200 and torch.equal(x_hat[kept], x[kept])
    assert ((x - x_hat).abs() <= codec.error_bound(x)).all()
    assert not torch.equal(codec.encode(x)["seed"], parts["seed"])  # a fresh choice every call


def test_randk_with_error_feedback_sent_plus_residual_equals_sum_of_true_updates() -> None:
    """Through the real UpdateCodec (the chain alone hid issue 10: the codec encoded twice, and
    randk drew a different choice for the residual than for the packet)."""
    from fedseg.codecs import RandK

    torch.manual_seed(0)
    codec = UpdateCodec(CodecChain((RandK(ratio=0.25, min_numel=0), Int8())), error_feedback=True)
    reference = {"w": torch.zeros(64)}
    state: dict[str, object] = {}
    sent_total = torch.zeros(64)
    true_total = torch.zeros(64)
    for _ in range(6):
        update = torch.randn(64)
        true_total += update
        sent_total += codec.decode(codec.encode({"w": update}, reference, state), reference)["w"]
    residual = state[RESIDUAL_KEY]["w"]  # type: ignore[index]
    torch.testing.assert_close(sent_total + residual, true_total, atol=1e-5, rtol=0)
