from __future__ import annotations

import pytest
import torch

from fedseg.codecs import BroadcastCodec, CodecChain, CodecError, Float16, Int8, Int16, Sign, TensorSpec, TopK


def _sample() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 3, 3, generator=gen) * torch.logspace(-3, 0, 6)[:, None, None, None]
    x[0, 0, 0, 0] = 0.0
    return x


@pytest.mark.parametrize(
    "codec", [Float16(), Int8(), Int8(per_channel=True), Int16(), Int16(per_channel=True)], ids=repr
)
def test_roundtrip_is_within_the_stated_bound(codec: Float16 | Int8 | Int16) -> None:
    x = _sample()
    parts = codec.encode(x)
    assert {k: TensorSpec.of(v) for k, v in parts.items()} == codec.parts(TensorSpec.of(x))
    x_hat = codec.decode(parts, TensorSpec.of(x))
    assert x_hat.shape == x.shape and x_hat.dtype == x.dtype
    assert ((x - x_hat).abs() <= codec.error_bound(x)).all()


def test_uniform_step_is_range_over_levels_and_extremes_are_exact() -> None:
    x = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    parts = Int8().encode(x)
    assert parts["q"].dtype == torch.int8
    torch.testing.assert_close(parts["lo"], torch.tensor([-1.0]))
    torch.testing.assert_close(parts["step"], torch.tensor([3.0 / 255]))
    x_hat = Int8().decode(parts, TensorSpec.of(x))
    assert x_hat[0] == -1.0 and abs(float(x_hat[3]) - 2.0) < 1e-6
    assert parts["q"].tolist()[0] == -128 and parts["q"].tolist()[3] == 127


def test_per_channel_uses_one_range_per_output_channel_and_one_for_1d() -> None:
    codec = Int8(per_channel=True)
    assert codec.parts(TensorSpec((5, 3, 3, 3), torch.float32))["lo"].shape == (5,)
    assert codec.parts(TensorSpec((5,), torch.float32))["lo"].shape == (1,)
    x = torch.stack([torch.linspace(0, 1, 9), torch.linspace(0, 1000, 9)])
    # per channel, the small channel keeps its resolution; per tensor it collapses
    small_pc = codec.decode(codec.encode(x), TensorSpec.of(x))[0]
    small_pt = Int8().decode(Int8().encode(x), TensorSpec.of(x))[0]
    assert (small_pc - x[0]).abs().max() < 1e-2 < (small_pt - x[0]).abs().max()


def test_constant_and_empty_tensors_are_exact() -> None:
    for codec in (Int8(), Int16(per_channel=True), Float16()):
        c = torch.full((3, 2), 0.25)
        assert torch.equal(codec.decode(codec.encode(c), TensorSpec.of(c)), c)
        e = torch.empty(0, 4)
        assert codec.decode(codec.encode(e), TensorSpec.of(e)).shape == (0, 4)


def test_fp16_clamps_out_of_range_values_instead_of_inf() -> None:
    x = torch.tensor([1e6, -1e6, 1.0])
    x_hat = Float16().decode(Float16().encode(x), TensorSpec.of(x))
    assert torch.isfinite(x_hat).all() and x_hat[0] == 65504.0
    assert ((x - x_hat).abs() <= Float16().error_bound(x)).all()


@pytest.mark.parametrize("codec", [Float16(), Int16(), Int16(per_channel=True)], ids=repr)
def test_sixteen_bits_give_relative_update_error_below_1e3(codec: Float16 | Int16) -> None:
    """methods.md FedSegNet check 2: rho = 1 and 16-bit quantisation -> relative error < 1e-3."""
    delta = _sample() * 1e-2
    for chain in (CodecChain((TopK(ratio=1.0, min_numel=0), codec)), CodecChain((codec,))):
        rel = float((chain.roundtrip(delta) - delta).norm() / delta.norm())
        assert rel < 1e-3


@pytest.mark.parametrize("codec", [Sign(min_numel=0), Sign(per_channel=True, min_numel=0)], ids=repr)
def test_sign_roundtrip_is_within_its_bound_and_sends_one_bit_per_value(codec: Sign) -> None:
    x = _sample()
    parts = codec.encode(x)
    assert {k: TensorSpec.of(v) for k, v in parts.items()} == codec.parts(TensorSpec.of(x))
    assert parts["bits"].numel() == (x.numel() + 7) // 8
    x_hat = codec.decode(parts, TensorSpec.of(x))
    assert x_hat.shape == x.shape and ((x - x_hat).abs() <= codec.error_bound(x)).all()
    groups = x.shape[0] if codec.per_channel else 1
    scale = x.abs().reshape(groups, -1).mean(dim=1)
    expected = torch.where(x >= 0, 1.0, -1.0) * scale.repeat_interleave(x.numel() // groups).reshape(x.shape)
    torch.testing.assert_close(x_hat, expected)


def test_sign_after_topk_sends_kept_values_as_plus_minus_their_mean_magnitude() -> None:
    x = torch.tensor([0.0, 4.0, -2.0, 0.1, 0.0, 0.0, 0.0, 0.0])
    chain = CodecChain((TopK(ratio=0.25, min_numel=0), Sign(min_numel=0)))
    x_hat = chain.decode(chain.encode(x), TensorSpec.of(x))
    assert x_hat.tolist() == [0.0, 3.0, -3.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_sign_is_refused_on_the_broadcast() -> None:
    with pytest.raises(CodecError, match="codec.down"):
        BroadcastCodec(CodecChain((Sign(),)))


def test_sign_quantises_small_tensors_to_8_bits_so_running_variances_stay_positive() -> None:
    running_var = torch.tensor([0.05, 0.1, 4.0, 8.0])  # an update of a batch-norm running variance
    codec = Sign()  # default min_numel 1024
    assert set(codec.parts(TensorSpec.of(running_var))) == {"q", "lo", "step"}
    x_hat = codec.decode(codec.encode(running_var), TensorSpec.of(running_var))
    assert ((running_var - x_hat).abs() <= codec.error_bound(running_var)).all()
    assert (x_hat > 0).all()
    big = torch.randn(2048)
    assert set(codec.parts(TensorSpec.of(big))) == {"bits", "scale"}
