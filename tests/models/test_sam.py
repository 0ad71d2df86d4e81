"""SAM (fedseg.models.sam): official checkpoint layout, strict init from a generated checkpoint,
position interpolation, prompt modes, forward/backward of the tiny config on CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import TINY_SAM, tiny_config
from fedseg.config import SAMConfig, config_from_dict
from fedseg.models import build_model
from fedseg.models.init import InitCheckpointError, load_init_checkpoint
from fedseg.models.sam import SAM, boxes_from_mask, is_extension_key
from fedseg.runtime.model_init import init_model
from fedseg.runtime.common import DataSpec

SIZES: dict[str, Any] = {"image_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 3, "num_heads": 2,
                         "window_size": 2, "global_attn_indexes": [1], "prompt_embed_dim": 16,
                         "decoder_mlp_dim": 24, "iou_head_hidden_dim": 12, "mask_in_chans": 8}
"""A tiny SAM with window attention (blocks 0, 2) and one global block (1), as ViT-B has."""


def _sam(**over: Any) -> SAM:
    cfg = SAMConfig.model_validate({**SIZES, **over})
    model = build_model(cfg, 2, 1, 2)
    assert isinstance(model, SAM)
    return model


def official_layout(image_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int, window_size: int,
                    global_attn_indexes: list[int], prompt_embed_dim: int, decoder_mlp_dim: int,
                    iou_head_hidden_dim: int, mask_in_chans: int, mlp_ratio: float = 4.0, decoder_depth: int = 2,
                    multimask: int = 3) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an official SAM checkpoint (segment-anything ``build_sam.py`` + ``modeling/``),
    enumerated by hand from that layout, independently of fedseg's modules."""
    d, c, grid, hd = embed_dim, prompt_embed_dim, image_size // patch_size, embed_dim // num_heads
    out: dict[str, tuple[int, ...]] = {"image_encoder.pos_embed": (1, grid, grid, d),
                                        "image_encoder.patch_embed.proj.weight": (d, 3, patch_size, patch_size),
                                        "image_encoder.patch_embed.proj.bias": (d,)}
    for i in range(depth):
        b = f"image_encoder.blocks.{i}."
        side = grid if (i in global_attn_indexes or window_size == 0) else window_size
        h = int(d * mlp_ratio)
        out.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "attn.qkv.weight": (3 * d, d),
                    b + "attn.qkv.bias": (3 * d,), b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                    b + "attn.rel_pos_h": (2 * side - 1, hd), b + "attn.rel_pos_w": (2 * side - 1, hd),
                    b + "norm2.weight": (d,), b + "norm2.bias": (d,), b + "mlp.lin1.weight": (h, d),
                    b + "mlp.lin1.bias": (h,), b + "mlp.lin2.weight": (d, h), b + "mlp.lin2.bias": (d,)})
    out.update({"image_encoder.neck.0.weight": (c, d, 1, 1), "image_encoder.neck.1.weight": (c,),
                "image_encoder.neck.1.bias": (c,), "image_encoder.neck.2.weight": (c, c, 3, 3),
                "image_encoder.neck.3.weight": (c,), "image_encoder.neck.3.bias": (c,)})
    p, m4 = "prompt_encoder.", mask_in_chans // 4
    out[p + "pe_layer.positional_encoding_gaussian_matrix"] = (2, c // 2)
    out.update({f"{p}point_embeddings.{i}.weight": (1, c) for i in range(4)})
    out.update({p + "not_a_point_embed.weight": (1, c), p + "no_mask_embed.weight": (1, c),
                p + "mask_downscaling.0.weight": (m4, 1, 2, 2), p + "mask_downscaling.0.bias": (m4,),
                p + "mask_downscaling.1.weight": (m4,), p + "mask_downscaling.1.bias": (m4,),
                p + "mask_downscaling.3.weight": (mask_in_chans, m4, 2, 2),
                p + "mask_downscaling.3.bias": (mask_in_chans,), p + "mask_downscaling.4.weight": (mask_in_chans,),
                p + "mask_downscaling.4.bias": (mask_in_chans,), p + "mask_downscaling.6.weight": (c, mask_in_chans, 1, 1),
                p + "mask_downscaling.6.bias": (c,)})

    def attention(prefix: str, internal: int) -> None:
        for proj in ("q_proj", "k_proj", "v_proj"):
            out.update({f"{prefix}.{proj}.weight": (internal, c), f"{prefix}.{proj}.bias": (internal,)})
        out.update({f"{prefix}.out_proj.weight": (c, internal), f"{prefix}.out_proj.bias": (c,)})

    t = "mask_decoder.transformer."
    for i in range(decoder_depth):
        layer = f"{t}layers.{i}."
        attention(layer + "self_attn", c)
        attention(layer + "cross_attn_token_to_image", c // 2)
        attention(layer + "cross_attn_image_to_token", c // 2)
        for n in range(1, 5):
            out.update({f"{layer}norm{n}.weight": (c,), f"{layer}norm{n}.bias": (c,)})
        out.update({layer + "mlp.lin1.weight": (decoder_mlp_dim, c), layer + "mlp.lin1.bias": (decoder_mlp_dim,),
                    layer + "mlp.lin2.weight": (c, decoder_mlp_dim), layer + "mlp.lin2.bias": (c,)})
    attention(t + "final_attn_token_to_image", c // 2)
    out.update({t + "norm_final_attn.weight": (c,), t + "norm_final_attn.bias": (c,)})
    md, tokens = "mask_decoder.", multimask + 1
    out.update({md + "iou_token.weight": (1, c), md + "mask_tokens.weight": (tokens, c),
                md + "output_upscaling.0.weight": (c, c // 4, 2, 2), md + "output_upscaling.0.bias": (c // 4,),
                md + "output_upscaling.1.weight": (c // 4,), md + "output_upscaling.1.bias": (c // 4,),
                md + "output_upscaling.3.weight": (c // 4, c // 8, 2, 2), md + "output_upscaling.3.bias": (c // 8,)})
    for i in range(tokens):
        dims = [(c, c), (c, c), (c // 8, c)]
        for j, (o, n) in enumerate(dims):
            out.update({f"{md}output_hypernetworks_mlps.{i}.layers.{j}.weight": (o, n),
                        f"{md}output_hypernetworks_mlps.{i}.layers.{j}.bias": (o,)})
    for j, (o, n) in enumerate([(iou_head_hidden_dim, c), (iou_head_hidden_dim, iou_head_hidden_dim),
                                (tokens, iou_head_hidden_dim)]):
        out.update({f"{md}iou_prediction_head.layers.{j}.weight": (o, n), f"{md}iou_prediction_head.layers.{j}.bias": (o,)})
    return out


def _generated(layout: dict[str, tuple[int, ...]], seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.1 for k, shape in layout.items()}


def test_state_dict_follows_the_official_layout_plus_lora_and_moe() -> None:
    model = _sam()
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if not is_extension_key(k)}
    assert own == official_layout(**SIZES)
    extensions = {k for k in model.state_dict() if is_extension_key(k)}
    assert "image_encoder.blocks.0.attn.qkv.lora_a" in extensions and "image_encoder.blocks.2.moe.gate.weight" in extensions
    assert all(k.startswith("image_encoder.blocks.") for k in extensions)


def test_a_generated_official_checkpoint_loads_strictly_through_init_checkpoint(tmp_path: Path) -> None:
    want = _generated(official_layout(**SIZES))
    torch.save(want, tmp_path / "sam_tiny.pth")
    cfg = config_from_dict(tiny_config("pfedsam", model={**SIZES, "init_checkpoint": str(tmp_path / "sam_tiny.pth")}))
    model, init, digest = init_model(cfg, DataSpec(spatial_dims=2, in_channels=1, num_classes=2), torch.device("cpu"))
    assert digest is not None and isinstance(model, SAM)
    for key, value in want.items():
        assert torch.equal(init[key], value), key
    # LoRA B = 0 and zero expert outputs: the loaded model is the pretrained one exactly
    x = torch.randn(2, 1, 20, 20)
    with model.experts(False):
        plain = model(x)
    torch.testing.assert_close(model(x), plain, rtol=0, atol=0)
    # a file of another architecture still fails, naming the key
    torch.save({**want, "image_encoder.blocks.9.norm1.weight": torch.ones(16)}, tmp_path / "bad.pth")
    with pytest.raises(InitCheckpointError, match="blocks.9.norm1.weight"):
        load_init_checkpoint(_sam(), tmp_path / "bad.pth")


def test_a_checkpoint_of_another_input_size_loads_with_interpolated_positions(tmp_path: Path) -> None:
    big = _generated(official_layout(**{**SIZES, "image_size": 64}))  # grid 8 vs the model's 4
    torch.save(big, tmp_path / "sam64.pth")
    model = _sam()
    load_init_checkpoint(model, tmp_path / "sam64.pth")
    sd = model.state_dict()
    assert sd["image_encoder.pos_embed"].shape == (1, 4, 4, 16)
    assert sd["image_encoder.blocks.1.attn.rel_pos_h"].shape == (7, 8)  # global block: resized 15 -> 7
    assert torch.equal(sd["image_encoder.blocks.0.attn.rel_pos_h"], big["image_encoder.blocks.0.attn.rel_pos_h"])
    constant = torch.full((1, 8, 8, 16), 0.25)  # interpolating a constant keeps it
    torch.save({**big, "image_encoder.pos_embed": constant}, tmp_path / "const.pth")
    load_init_checkpoint(model, tmp_path / "const.pth")
    torch.testing.assert_close(model.state_dict()["image_encoder.pos_embed"], torch.full((1, 4, 4, 16), 0.25))


def test_official_state_dict_with_merged_lora_reproduces_the_adapted_model() -> None:
    model = _sam(moe_experts=0)
    with torch.no_grad():
        for layer in model.lora_layers():
            layer.lora_b.normal_()
    plain = _sam(moe_experts=0, lora_rank=0)
    plain.load_state_dict(model.official_state_dict(merge_lora=True), strict=True)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(plain(x), model(x), rtol=1e-5, atol=1e-5)


def test_tiny_forward_backward_on_cpu_any_input_size() -> None:
    model = _sam()
    x = torch.randn(3, 1, 20, 28, requires_grad=True)
    logits = model(x)
    assert logits.shape == (3, 2, 20, 28) and torch.equal(logits[:, 0], torch.zeros(3, 20, 28))
    logits[:, 1].sigmoid().mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "mask_decoder.output_hypernetworks_mlps.0.layers.0.weight" in grads
    # B = 0 at init, so only B gets a gradient at first (LoRA's usual start)
    assert "image_encoder.blocks.0.attn.qkv.lora_b" in grads and "image_encoder.patch_embed.proj.weight" in grads
    grey = torch.randn(1, 1, 32, 32)  # grey is replicated to 3 channels
    rgb = _sam()
    rgb3 = build_model(SAMConfig.model_validate(SIZES), 2, 3, 2)
    rgb3.load_state_dict(rgb.state_dict())
    torch.testing.assert_close(rgb3(grey.expand(-1, 3, -1, -1)), rgb(grey), rtol=0, atol=0)


def test_prompt_modes() -> None:
    none, box = _sam(), _sam(prompt_mode="full_image_box")
    box.load_state_dict(none.state_dict())
    x = torch.randn(2, 1, 32, 32)
    assert not torch.allclose(none(x), box(x))
    oracle = _sam(prompt_mode="box_from_mask")
    with pytest.raises(ValueError, match="box_from_mask needs boxes"):
        oracle(x)
    mask = torch.zeros(2, 1, 32, 32, dtype=torch.long)
    mask[0, 0, 4:10, 6:20] = 1
    boxes = boxes_from_mask(mask)
    assert boxes.tolist() == [[6.0, 4.0, 19.0, 9.0], [0.0, 0.0, 31.0, 31.0]]
    assert oracle(x, boxes=boxes).shape == (2, 2, 32, 32)


@pytest.mark.parametrize(("over", "match"), [({"moe_top_k": 3, "moe_experts": 2}, "moe_top_k"),
                                             ({"image_size": 30}, "multiple of model.patch_size"),
                                             ({"lora_blocks": [5]}, "block indexes")])
def test_config_refuses_sizes_that_do_not_fit(over: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SAMConfig.model_validate({**SIZES, **over})


def test_builder_refuses_multiclass_and_3d() -> None:
    cfg = SAMConfig.model_validate(TINY_SAM)
    with pytest.raises(ValueError, match="one foreground class"):
        build_model(cfg, 2, 1, 3)
    with pytest.raises(ValueError, match="2D only"):
        build_model(cfg, 3, 1, 2)
