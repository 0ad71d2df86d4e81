"""SAM's prompt encoder in the official layout (``prompt_encoder.pe_layer.positional_encoding_gaussian_matrix``,
``point_embeddings.<0-3>``, ``not_a_point_embed``, ``mask_downscaling.{0,1,3,4,6}``, ``no_mask_embed``).

Only what the supported prompt modes use runs: no sparse prompt (``none``, SAMed-style automatic
mode: the decoder sees its output tokens only and the learned ``no_mask_embed``), or one box per
image (its two corners, as SAM's box prompt). Point and mask prompts are not used; their
parameters exist so that official checkpoints load strictly.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from fedseg.models.sam.common import LayerNorm2d

__all__ = ["PositionEmbeddingRandom", "PromptEncoder"]


class PositionEmbeddingRandom(nn.Module):
    """Fourier features of coordinates with a fixed random Gaussian matrix ``(2, num_pos_feats)``."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.positional_encoding_gaussian_matrix: torch.Tensor
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((2, num_pos_feats)))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """Coordinates in ``[0, 1]`` ``(..., 2)`` (x, y) -> ``(..., 2 * num_pos_feats)``."""
        projected = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix * (2 * math.pi)
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def grid(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of pixel centres on an ``(h, w)`` grid: ``(C, h, w)``."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        coords = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        return self.encode(coords).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Box prompts -> sparse tokens ``(B, N, C)``; no mask prompt -> dense ``no_mask_embed`` ``(B, C, h, w)``."""

    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int], input_image_size: tuple[int, int],
                 mask_in_chans: int = 16) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))  # neg, pos, 2 corners
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid, ``(1, C, h, w)``."""
        return self.pe_layer.grid(self.image_embedding_size)[None]

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Boxes ``(B, 4)`` as ``x0, y0, x1, y1`` in input-image pixels -> corner tokens ``(B, 2, C)``."""
        corners = (boxes.float() + 0.5).reshape(-1, 2, 2)
        h, w = self.input_image_size
        corners = corners / torch.tensor([w, h], dtype=corners.dtype, device=corners.device)
        tokens = self.pe_layer.encode(corners)
        first, second = cast(nn.Embedding, self.point_embeddings[2]), cast(nn.Embedding, self.point_embeddings[3])
        return torch.stack([tokens[:, 0] + first.weight[0], tokens[:, 1] + second.weight[0]], dim=1)

    def forward(self, boxes: torch.Tensor | None, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse ``(B, N, C)`` (N = 0 without boxes, 2 with) and dense ``(B, C, h, w)`` embeddings."""
        device = self.no_mask_embed.weight.device
        if boxes is None:
            sparse = torch.zeros((batch_size, 0, self.embed_dim), device=device)
        else:
            sparse = self.embed_boxes(boxes)
        h, w = self.image_embedding_size
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch_size, -1, h, w)
        return sparse, dense
