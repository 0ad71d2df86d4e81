"""SAM's mask decoder: a two-way transformer between output tokens and the image embedding, then
upscaling and per-token hypernetwork MLPs, in the official layout (``mask_decoder.transformer.
layers.<i>.{self_attn,cross_attn_token_to_image,cross_attn_image_to_token}.{q,k,v,out}_proj``,
``norm1-4``, ``mlp.lin1/lin2``, ``transformer.final_attn_token_to_image``, ``norm_final_attn``,
``iou_token``, ``mask_tokens``, ``output_upscaling.{0,1,3}``, ``output_hypernetworks_mlps.<i>.layers.<j>``,
``iou_prediction_head.layers.<j>``). Batched over images (one prompt set per image).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedseg.models.sam.common import MLP, LayerNorm2d, MLPBlock

__all__ = ["TokenAttention", "TwoWayAttentionBlock", "TwoWayTransformer", "MaskDecoder"]


class TokenAttention(nn.Module):
    """Attention with the projections' width reduced by ``downsample_rate`` (SAM decoder ``Attention``)."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        internal = embedding_dim // downsample_rate
        if internal % num_heads:
            raise ValueError(f"decoder heads {num_heads} must divide {internal} (prompt_embed_dim / {downsample_rate})")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, internal)
        self.k_proj = nn.Linear(embedding_dim, internal)
        self.v_proj = nn.Linear(embedding_dim, internal)
        self.out_proj = nn.Linear(internal, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        qh, kh, vh = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        attn = torch.softmax(qh @ kh.transpose(-2, -1) / math.sqrt(qh.shape[-1]), dim=-1)
        out = (attn @ vh).transpose(1, 2)
        result: torch.Tensor = self.out_proj(out.reshape(out.shape[0], out.shape[1], -1))
        return result


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, tokens -> image cross-attention, token MLP, image -> tokens cross-attention."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, downsample_rate: int = 2,
                 skip_first_layer_pe: bool = False) -> None:
        super().__init__()
        self.self_attn = TokenAttention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = TokenAttention(embedding_dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = TokenAttention(embedding_dim, num_heads, downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
                key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, keys + key_pe, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(keys + key_pe, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks and a final token -> image attention."""

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int, downsample_rate: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, downsample_rate, skip_first_layer_pe=i == 0)
            for i in range(depth))
        self.final_attn_token_to_image = TokenAttention(embedding_dim, num_heads, downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor,
                tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = image.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys))
        return queries, keys


class MaskDecoder(nn.Module):
    """Image embedding ``(B, C, h, w)`` + prompt tokens -> mask logits ``(B, 1 + multimask, 4h, 4w)``.

    Only the first mask token (SAM's single-mask output) feeds fedseg's binary segmentation; the
    multimask tokens and the IoU head are kept for the checkpoint layout.
    """

    def __init__(self, transformer_dim: int, transformer: TwoWayTransformer, num_multimask_outputs: int = 3,
                 iou_head_depth: int = 3, iou_head_hidden_dim: int = 256) -> None:
        super().__init__()
        self.transformer = transformer
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor, num_masks: int = 1) -> torch.Tensor:
        """Low-resolution mask logits ``(B, num_masks, 4h, 4w)`` of the first ``num_masks`` mask tokens."""
        b = image_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens[None].expand(b, -1, -1), sparse], dim=1)
        src = image_embeddings + dense
        _, c, h, w = src.shape
        hs, keys = self.transformer(src, image_pe.expand(b, -1, -1, -1), tokens)
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([self.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in range(num_masks)], dim=1)
        bu, cu, hu, wu = upscaled.shape
        masks: torch.Tensor = (hyper @ upscaled.reshape(bu, cu, hu * wu)).reshape(bu, num_masks, hu, wu)
        return masks
