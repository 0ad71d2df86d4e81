from __future__ import annotations

import pytest
import torch

from fedseg.algorithms.base import module_keys
from fedseg.config import TransUNetConfig
from fedseg.models import MODELS, build_model
from fedseg.models.transunet import BottleneckTransformer, TransUNet

TINY = {"name": "transunet", "channels": [4, 8, 12], "strides": [2, 2], "heads": 2, "pos_grid": 3}


def test_registered_next_to_unet() -> None:
    assert {"transunet", "unet"} <= set(MODELS.names())


@pytest.mark.parametrize("pos_embed", ["learned", "sincos", "none"])
@pytest.mark.parametrize(("dims", "shape"), [(2, (2, 1, 16, 16)), (3, (2, 2, 8, 8, 8))])
def test_forward_backward_on_tiny_inputs(dims: int, shape: tuple[int, ...], pos_embed: str) -> None:
    torch.manual_seed(0)
    model = build_model(TransUNetConfig(**{**TINY, "pos_embed": pos_embed}), dims, shape[1], 3)
    logits = model(torch.randn(shape))
    assert logits.shape == (shape[0], 3, *shape[2:]) and logits.dtype == torch.float32
    logits.logsumexp(dim=1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    attention = model.get_submodule("bottleneck.blocks.0.attn.qkv").weight.grad
    assert attention is not None and attention.abs().sum() > 0


def test_learned_positions_are_resized_to_any_bottleneck_grid() -> None:
    model = build_model(TransUNetConfig(**TINY), 2, 1, 2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 16, 24)).shape == (1, 2, 16, 24)  # bottleneck 4x6, grid 3x3


def test_attention_gives_every_output_a_view_of_the_whole_image() -> None:
    """A change in one corner reaches the opposite corner only through the attention stage."""
    x = torch.zeros(1, 1, 64, 64)
    y = x.clone()
    y[..., :4, :4] = 5.0
    far = (..., slice(-4, None), slice(-4, None))
    for layers, reaches in ((0, False), (1, True)):
        torch.manual_seed(0)
        cfg = TransUNetConfig(name="transunet", channels=[4, 8], strides=[2], heads=2, transformer_layers=layers)
        model = build_model(cfg, 2, 1, 2).eval()  # batch norm in eval mode: no image-wide statistics
        with torch.no_grad():
            changed = not torch.equal(model(x)[far], model(y)[far])
        assert changed is reaches, layers


def test_without_transformer_it_is_a_plain_conv_unet() -> None:
    with_attn = build_model(TransUNetConfig(**TINY), 2, 1, 2)
    without = build_model(TransUNetConfig(**{**TINY, "transformer_layers": 0}), 2, 1, 2)
    assert isinstance(with_attn, TransUNet) and isinstance(with_attn.bottleneck, BottleneckTransformer)
    assert isinstance(without.bottleneck, torch.nn.Identity)
    assert set(without.state_dict()) < set(with_attn.state_dict())


def test_depth_width_heads_and_layers_are_configurable() -> None:
    cfg = TransUNetConfig(name="transunet", channels=[2, 4, 6, 8], strides=[2, 2, 2], heads=4, transformer_layers=3,
                      mlp_ratio=1.5, norm="instance", num_res_units=0)
    model = build_model(cfg, 3, 1, 2)
    assert len(model.encoder) == 4 and len(model.decoder) == 3 and len(model.bottleneck.blocks) == 3
    assert model.bottleneck.blocks[0].attn.num_heads == 4
    assert model.bottleneck.blocks[0].mlp.linear1.out_features == 12
    assert model(torch.randn(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)


def test_heads_must_divide_the_bottleneck_width() -> None:
    with pytest.raises(ValueError, match=r"model.heads=5 must divide .*channels\[-1\]=12; allowed: \[1, 2, 3, 4, 6, 12\]"):
        build_model(TransUNetConfig(**{**TINY, "heads": 5}), 2, 1, 2)
    with pytest.raises(ValueError, match="divisible by 6"):
        build_model(TransUNetConfig(**{**TINY, "channels": [4, 8, 16], "pos_embed": "sincos"}), 3, 1, 2)


def test_head_module_names_select_last_decoder_block_and_output_conv() -> None:
    model = build_model(TransUNetConfig(**TINY), 2, 1, 2)
    keys = module_keys(model, model.head_module_names)
    assert "out.conv.conv.weight" in keys and any(k.startswith("decoder.0.") for k in keys)
    assert not any(k.startswith(("decoder.1.", "encoder.", "bottleneck.")) for k in keys)
