"""LoRA and L-MoE (fedseg.models.sam.lora / .moe): exact invariants on tiny tensors."""

from __future__ import annotations

import torch
from torch import nn

from fedseg.models.sam import LocalMoE, LoRALinear


def test_lora_starts_as_the_base_layer_and_merged_equals_unmerged() -> None:
    layer = LoRALinear(8, 12, rank=3, alpha=6.0)
    base = nn.Linear(8, 12)
    base.load_state_dict({"weight": layer.weight, "bias": layer.bias})
    x = torch.randn(5, 8)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)  # B = 0 at init
    with torch.no_grad():
        layer.lora_b.normal_()
    assert layer.scaling == 2.0
    unmerged = layer(x)
    torch.testing.assert_close(unmerged, base(x) + 2.0 * x @ (layer.lora_b @ layer.lora_a).t())
    layer.merge()
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.weight, base.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-5)
    plain = LoRALinear(8, 12, rank=0)
    assert set(plain.state_dict()) == {"weight", "bias"}


def test_router_weights_sum_to_one_over_the_top_k() -> None:
    moe = LocalMoE(8, num_experts=4, top_k=2)
    weights, probs = moe.routing(torch.randn(30, 8))
    torch.testing.assert_close(weights.sum(-1), torch.ones(30))
    torch.testing.assert_close(probs.sum(-1), torch.ones(30))
    assert ((weights > 0).sum(-1) == 2).all()
    # each token's two chosen experts are its two largest router probabilities
    assert torch.equal((weights > 0), probs >= probs.topk(2, dim=-1).values[:, -1:])


def test_one_expert_with_a_fixed_gate_is_a_plain_adapter() -> None:
    moe = LocalMoE(8, num_experts=1, top_k=1, bottleneck=2)
    with torch.no_grad():
        moe.gate.weight.fill_(0.3)  # any gate: softmax over one expert is 1
        moe.experts[0].up.weight.normal_()
    x = torch.randn(2, 3, 8)
    expert = moe.experts[0]
    torch.testing.assert_close(moe(x), expert.up(torch.nn.functional.gelu(expert.down(x))), rtol=0, atol=0)
    assert moe.balance_loss is not None and float(moe.balance_loss.detach()) == 1.0  # E * f * P = 1 * 1 * 1


def test_experts_add_nothing_at_init_and_balance_is_one_when_uniform() -> None:
    moe = LocalMoE(8, num_experts=4, top_k=1)
    x = torch.randn(16, 8)
    assert torch.equal(moe(x), torch.zeros(16, 8))  # zero-initialised up projections
    with torch.no_grad():
        moe.gate.weight.zero_()  # uniform router: P_e = 1/4; every token picks expert 0 (f_0 = 1)
    moe(x)
    assert moe.balance_loss is not None and abs(float(moe.balance_loss.detach()) - 1.0) < 1e-6
