"""Segment-Anything (SAM) with LoRA and pFedSAM's L-MoE, in the official checkpoint layout.

Registered as model ``sam`` (typed config ``fedseg.config.SAMConfig``). Files: :mod:`.common`
(LayerNorm2d, MLPs), :mod:`.lora`, :mod:`.moe`, :mod:`.encoder` (ViT), :mod:`.prompt`,
:mod:`.decoder`, :mod:`.model` (:class:`SAM`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from fedseg.models.registry import MODELS
from fedseg.models.sam.lora import LoRALinear
from fedseg.models.sam.model import (
    PROMPT_MODES,
    SAM,
    boxes_from_mask,
    encoder_arguments,
    is_extension_key,
    is_lora_key,
    is_moe_key,
)
from fedseg.models.sam.moe import LocalMoE

__all__ = ["SAM", "LoRALinear", "LocalMoE", "PROMPT_MODES", "boxes_from_mask", "build_sam", "is_extension_key",
           "is_lora_key", "is_moe_key"]


@MODELS.register("sam")
def build_sam(spatial_dims: int, in_channels: int, out_channels: int, *, image_size: int = 64, patch_size: int = 8,
              embed_dim: int = 32, depth: int = 2, num_heads: int = 2, mlp_ratio: float = 4.0,
              window_size: int = 0, global_attn_indexes: Sequence[int] = (), use_rel_pos: bool = True,
              prompt_embed_dim: int = 32, decoder_depth: int = 2, decoder_heads: int = 2, decoder_mlp_dim: int = 64,
              iou_head_hidden_dim: int = 32, mask_in_chans: int = 16, num_multimask_outputs: int = 3,
              prompt_mode: str = "none", lora_rank: int = 4, lora_alpha: float | None = None,
              lora_blocks: Sequence[int] | None = None, moe_experts: int = 4, moe_top_k: int = 2,
              moe_bottleneck: int = 4, moe_every: int = 1) -> nn.Module:
    """Build :class:`SAM` (typed config: ``fedseg.config.SAMConfig``; defaults: the tiny test size).

    Raises:
        ValueError: ``spatial_dims`` is not 2, ``out_channels`` is not 2 (binary only), ``in_channels``
            is not 1 or 3, or the sizes do not fit (image/patch, heads/width, top-k/experts).
    """
    if spatial_dims != 2:
        raise ValueError(f"model sam is 2D only (spatial_dims 2), got spatial_dims={spatial_dims!r}")
    if out_channels != 2:
        raise ValueError(f"model sam segments one foreground class (2 output channels: background, foreground), "
                         f"got {out_channels} classes; use a U-Net for multi-class data")
    encoder = encoder_arguments(
        patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
        window_size=window_size, global_attn_indexes=global_attn_indexes, use_rel_pos=use_rel_pos,
        lora_rank=lora_rank, lora_alpha=lora_alpha, lora_blocks=lora_blocks, moe_experts=moe_experts,
        moe_top_k=moe_top_k, moe_bottleneck=moe_bottleneck, moe_every=moe_every)
    return SAM(in_channels=in_channels, image_size=image_size, prompt_mode=prompt_mode, encoder=encoder,
               prompt_embed_dim=prompt_embed_dim, decoder_depth=decoder_depth, decoder_heads=decoder_heads,
               decoder_mlp_dim=decoder_mlp_dim, iou_head_hidden_dim=iou_head_hidden_dim, mask_in_chans=mask_in_chans,
               num_multimask_outputs=num_multimask_outputs)
