"""FedOAP's U-Net: DCA against standard attention, the bank, the zero adapter, 2D/3D, config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedseg.config import config_from_dict
from fedseg.config.model import FedOAPUNetConfig
from fedseg.models import build_model
from fedseg.models.fedoap_unet import DecoupledCrossAttention, FedOAPUNet, SpatialAdapter, token_grid

D, HEADS = 16, 8


def _mha_like(dca: DecoupledCrossAttention) -> nn.MultiheadAttention:
    """torch's MultiheadAttention with the DCA's W_Q, W_K, W_V and W_O."""
    mha = nn.MultiheadAttention(D, HEADS, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([dca.q_proj.weight, dca.k_proj.weight, dca.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([dca.q_proj.bias, dca.k_proj.bias, dca.v_proj.bias]))
        mha.out_proj.weight.copy_(dca.out_proj.weight)
        mha.out_proj.bias.copy_(dca.out_proj.bias)
    return mha.eval()


def _self_attention(dca: DecoupledCrossAttention, x: torch.Tensor) -> torch.Tensor:
    """Standard pre-norm self-attention ``X + MHA(LN(X))`` on the tokens of ``x``, as a map."""
    t = dca.tokens(x)
    h = dca.norm(t)
    out, _ = _mha_like(dca)(h, h, h, need_weights=False)
    return (t + out).transpose(1, 2).reshape(x.shape)


def _randomised(dca: DecoupledCrossAttention) -> DecoupledCrossAttention:
    with torch.no_grad():
        for p in dca.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return dca


def test_dca_without_a_bank_is_standard_self_attention() -> None:
    dca = _randomised(DecoupledCrossAttention(D, HEADS))
    x = torch.randn(3, D, 4, 5)
    torch.testing.assert_close(dca(x), _self_attention(dca, x), rtol=0, atol=1e-5)


def test_check1_one_client_bank_of_the_same_input_unpooled_with_tied_projections_is_self_attention() -> None:
    """methods.md 3(h) check 1: the bank is the client's own K and V of the same input (m = n,
    no pooling) and W_Q = W_K = W_V; every key then appears twice (live + bank) with the same
    value, which leaves the softmax-weighted mean unchanged."""
    dca = _randomised(DecoupledCrossAttention(D, HEADS))
    with torch.no_grad():
        dca.k_proj.load_state_dict(dca.q_proj.state_dict())
        dca.v_proj.load_state_dict(dca.q_proj.state_dict())
    x = torch.randn(1, D, 4, 4)
    with torch.no_grad():
        h = dca.norm(dca.tokens(x))[0]
        dca.set_bank(dca.k_proj(h), dca.v_proj(h))
    torch.testing.assert_close(dca(x), _self_attention(dca, x), rtol=0, atol=1e-5)
    # the same bank from the pooling path: m = n tokens is the identity pooling
    k, v = dca.bank(x, 16)
    torch.testing.assert_close(k[0], dca.bank_key, rtol=0, atol=1e-6)
    torch.testing.assert_close(v[0], dca.bank_value, rtol=0, atol=1e-6)


def test_a_foreign_bank_changes_the_output_and_wk_wv_get_gradient() -> None:
    dca = _randomised(DecoupledCrossAttention(D, HEADS))
    x = torch.randn(2, D, 4, 4)
    plain = dca(x).detach()
    dca.set_bank(torch.randn(64, D), torch.randn(64, D))
    out = dca(x)
    assert not torch.allclose(out, plain)
    out.square().sum().backward()
    for proj in (dca.q_proj, dca.k_proj, dca.v_proj, dca.out_proj):
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_bank_is_pooled_to_m_tokens_and_refuses_bad_shapes() -> None:
    dca = DecoupledCrossAttention(D, HEADS)
    k, v = dca.bank(torch.randn(5, D, 12, 10), 64)
    assert k.shape == v.shape == (5, 64, D)
    assert token_grid(64, 3) == (4, 4, 4) and token_grid(64, 2) == (8, 8)
    with pytest.raises(ValueError, match="perfect square"):
        token_grid(60, 2)
    with pytest.raises(ValueError, match=r"\(M, 16\)"):
        dca.set_bank(torch.zeros(4, 8), torch.zeros(4, 8))
    with pytest.raises(ValueError, match="must divide"):
        DecoupledCrossAttention(12, 8)


@pytest.mark.parametrize("dims", [2, 3])
def test_zero_adapter_is_the_identity(dims: int) -> None:
    adapter = SpatialAdapter(6, dims)
    x = torch.randn(2, 6, *([5] * dims))
    assert torch.equal(adapter(x), x)
    adapter.pointwise.weight.data.fill_(0.1)
    assert not torch.equal(adapter(x), x)


@pytest.mark.parametrize("dims", [2, 3])
def test_model_shapes_and_named_parts(dims: int) -> None:
    model = build_model(FedOAPUNetConfig(features=[4, 8, 16]), dims, 1, 2)
    assert isinstance(model, FedOAPUNet)
    x = torch.randn(2, 1, *([8] * dims))
    assert model(x).shape == (2, 2, *([8] * dims))
    k, v = model.bank(x, 8 if dims == 3 else 16)
    assert k.shape == (2, 8 if dims == 3 else 16, 16)
    modules = dict(model.named_modules())
    for name in (*model.query_module_names, *model.adapter_module_names, *model.head_module_names):
        assert name in modules
    assert model.query_module_names == ("dca.q_proj",)


def test_with_a_zero_adapter_the_model_equals_the_model_without_one() -> None:
    with_adapter = build_model(FedOAPUNetConfig(features=[4, 8, 16]), 2, 1, 2).eval()
    without = build_model(FedOAPUNetConfig(features=[4, 8, 16], adapter=False), 2, 1, 2).eval()
    without.load_state_dict({k: v for k, v in with_adapter.state_dict().items() if not k.startswith("adapter.")})
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(with_adapter(x), without(x))


def test_without_dca_there_is_no_attention_and_no_bank() -> None:
    model = build_model(FedOAPUNetConfig(features=[4, 8, 16], dca=False), 2, 1, 2)
    assert isinstance(model, FedOAPUNet) and model.dca is None and model.query_module_names == ()
    assert not any(k.startswith("dca.") for k in model.state_dict())
    model.set_bank(None, None)  # a no-op
    with pytest.raises(ValueError, match="no DCA block"):
        model.bank(torch.zeros(1, 1, 8, 8), 4)


def test_config_derives_channels_and_refuses_bad_values() -> None:
    cfg = config_from_dict({"model": {"name": "fedoap_unet", "features": [8, 16, 32], "dca_heads": 4}})
    assert isinstance(cfg.model, FedOAPUNetConfig)
    assert cfg.model.channels == [8, 16, 32] and cfg.model.strides == [2, 2]
    assert FedOAPUNetConfig.model_validate(cfg.model.model_dump(mode="json")) == cfg.model
    with pytest.raises(ValueError, match="dca_heads"):
        build_model(FedOAPUNetConfig(features=[4, 8, 12]), 2, 1, 2)
    with pytest.raises(ValueError, match="spatial_dims 2 or 3"):
        build_model(FedOAPUNetConfig(features=[4, 8, 16]), 1, 1, 2)
