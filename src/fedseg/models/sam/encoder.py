"""SAM's image encoder: a ViTDet-style ViT with windowed and global attention, decomposed relative
position terms and a conv neck, in the state-dict layout of the official checkpoints
(``image_encoder.patch_embed.proj``, ``pos_embed``, ``blocks.<i>.{norm1,attn.qkv,attn.proj,
attn.rel_pos_h,attn.rel_pos_w,norm2,mlp.lin1,mlp.lin2}``, ``neck.{0,1,2,3}``).

Written from the SAM paper (Kirillov et al., 2023) and the layout of facebookresearch/segment-anything
``modeling/image_encoder.py``. Two additions, under keys the official files do not have: LoRA on
``attn.qkv`` (``attn.qkv.lora_a/lora_b``, :mod:`fedseg.models.sam.lora`) and pFedSAM's L-MoE in
parallel to the MLP (``blocks.<i>.moe.*``, :mod:`fedseg.models.sam.moe`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedseg.models.sam.common import LayerNorm2d, MLPBlock
from fedseg.models.sam.lora import LoRALinear
from fedseg.models.sam.moe import LocalMoE

__all__ = ["ImageEncoderViT", "Block", "Attention", "PatchEmbed", "resize_pos_embed", "resize_rel_pos"]


def resize_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """Absolute position embeddings ``(1, G, G, C)`` resized (bicubic) to ``(1, grid, grid, C)``."""
    if pos.shape[1] == grid and pos.shape[2] == grid:
        return pos
    out = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).to(pos.dtype)


def resize_rel_pos(rel: torch.Tensor, length: int) -> torch.Tensor:
    """Relative position table ``(L, head_dim)`` resized (linear) to ``(length, head_dim)``."""
    if rel.shape[0] == length:
        return rel
    out = F.interpolate(rel.t()[None].float(), size=length, mode="linear", align_corners=False)
    return out[0].t().to(rel.dtype)


def _window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, H, W, C)`` -> windows ``(B * nW, window, window, C)`` (zero-padded) and the padded size."""
    b, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def _window_unpartition(windows: torch.Tensor, window: int, padded: tuple[int, int],
                        size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`_window_partition`, padding removed."""
    hp, wp = padded
    b = windows.shape[0] // (hp * wp // window // window)
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :size[0], :size[1], :].contiguous()


def _rel_table(size: int, rel: torch.Tensor) -> torch.Tensor:
    """``(size, size, head_dim)``: the embedding of every relative offset q - k (equal q/k sizes)."""
    rel = resize_rel_pos(rel, 2 * size - 1)
    coords = torch.arange(size, device=rel.device)
    return rel[(coords[:, None] - coords[None, :] + size - 1).long()]


class Attention(nn.Module):
    """Multi-head self-attention over a ``(B, H, W, C)`` grid with decomposed relative positions
    (MViTv2) and an optional LoRA on ``qkv``."""

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, use_rel_pos: bool = True,
                 input_size: tuple[int, int] = (1, 1), lora_rank: int = 0, lora_alpha: float | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        self.qkv = LoRALinear(dim, dim * 3, bias=qkv_bias, rank=lora_rank, alpha=lora_alpha)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, h * w, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            rh, rw = _rel_table(h, self.rel_pos_h), _rel_table(w, self.rel_pos_w)
            rq = q.reshape(-1, h, w, q.shape[-1])
            rel_h = torch.einsum("bhwc,hkc->bhwk", rq, rh)
            rel_w = torch.einsum("bhwc,wkc->bhwk", rq, rw)
            attn = (attn.view(-1, h, w, h, w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).view(
                -1, h * w, h * w)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        result: torch.Tensor = self.proj(out)
        return result


class Block(nn.Module):
    """Pre-norm ViT block (window attention when ``window_size > 0``), with L-MoE beside the MLP
    when ``moe`` is given: ``x + MLP(n(x)) + L-MoE(n(x))``."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 use_rel_pos: bool = True, window_size: int = 0, input_size: tuple[int, int] = (1, 1),
                 lora_rank: int = 0, lora_alpha: float | None = None, moe: LocalMoE | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, use_rel_pos=use_rel_pos,
                              input_size=input_size if window_size == 0 else (window_size, window_size),
                              lora_rank=lora_rank, lora_alpha=lora_alpha)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size
        if moe is not None:
            self.moe = moe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            size = (x.shape[1], x.shape[2])
            x, padded = _window_partition(x, self.window_size)
            x = _window_unpartition(self.attn(x), self.window_size, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        hidden = self.norm2(x)
        out = self.mlp(hidden)
        moe = getattr(self, "moe", None)
        if isinstance(moe, LocalMoE) and moe.enabled:
            out = out + moe(hidden)
        result: torch.Tensor = x + out
        return result


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection ``(B, C, H, W) -> (B, H/p, W/p, D)``."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(x).permute(0, 2, 3, 1)
        return out


class ImageEncoderViT(nn.Module):
    """SAM's ViT image encoder: ``(B, 3, S, S) -> (B, out_chans, S/p, S/p)``.

    Args:
        img_size: input side S (multiple of ``patch_size``).
        patch_size: patch side p.
        embed_dim, depth, num_heads, mlp_ratio: ViT size (ViT-B: 768, 12, 12, 4).
        out_chans: neck width (the prompt embedding width; 256 in SAM).
        window_size: window side of the non-global blocks (0: every block attends globally; 14 in SAM).
        global_attn_indexes: blocks with global attention (ViT-B: 2, 5, 8, 11).
        use_rel_pos: decomposed relative position terms (True in SAM).
        lora_rank, lora_alpha, lora_blocks: LoRA on ``attn.qkv`` of ``lora_blocks`` (None: all).
        moe_experts, moe_top_k, moe_bottleneck, moe_every: L-MoE in every ``moe_every``-th block
            (blocks 0, k, 2k...); ``moe_experts`` 0: none.
    """

    def __init__(self, *, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float, out_chans: int, window_size: int = 0, global_attn_indexes: Sequence[int] = (),
                 use_rel_pos: bool = True, lora_rank: int = 0, lora_alpha: float | None = None,
                 lora_blocks: Sequence[int] | None = None, moe_experts: int = 0, moe_top_k: int = 2,
                 moe_bottleneck: int = 4, moe_every: int = 1) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"model.image_size {img_size} must be a multiple of model.patch_size {patch_size}")
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        lora_at = set(range(depth)) if lora_blocks is None else set(lora_blocks)
        self.blocks = nn.ModuleList()
        for i in range(depth):
            moe = (LocalMoE(embed_dim, moe_experts, moe_top_k, moe_bottleneck)
                   if moe_experts and i % moe_every == 0 else None)
            self.blocks.append(Block(
                embed_dim, num_heads, mlp_ratio=mlp_ratio, use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size, input_size=(grid, grid),
                lora_rank=lora_rank if i in lora_at else 0, lora_alpha=lora_alpha, moe=moe))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = x + resize_pos_embed(self.pos_embed, x.shape[1])
        for block in self.blocks:
            x = block(x)
        out: torch.Tensor = self.neck(x.permute(0, 3, 1, 2))
        return out
