"""LoRA (Hu et al., 2022) on a linear layer, keeping the layer's own parameter names.

``W' = W + (alpha / r) B A`` with ``A: (r, in)`` (Kaiming-uniform) and ``B: (out, r)`` zero at
init, so at init the layer equals the pretrained one (methods.md section 6, "LoRA for SAM"). The
layer *is* an ``nn.Linear``: ``weight``/``bias`` keep their state-dict names (SAM's
``...attn.qkv.weight``) and the adapter adds ``lora_a``/``lora_b`` beside them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LoRALinear", "LORA_SUFFIXES"]

LORA_SUFFIXES: tuple[str, ...] = (".lora_a", ".lora_b")
"""State-dict key endings of the LoRA factors."""


class LoRALinear(nn.Linear):
    """A linear layer with an optional low-rank update (``rank`` 0: a plain ``nn.Linear``).

    Args:
        in_features: input width.
        out_features: output width.
        bias: whether the base layer has a bias.
        rank: LoRA rank r (0: no adapter).
        alpha: LoRA alpha; the update is scaled by ``alpha / rank`` (default ``alpha = rank``: scale 1).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rank: int = 0,
                 alpha: float | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if rank < 0:
            raise ValueError(f"LoRA rank must be >= 0, got {rank}")
        self.rank = rank
        self.scaling = (float(alpha) if alpha is not None else float(rank)) / rank if rank else 0.0
        self.merged = False
        if rank:
            self.lora_a = nn.Parameter(torch.empty(rank, in_features))
            self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) B A``, shaped like ``weight`` (zeros without an adapter)."""
        if not self.rank:
            return torch.zeros_like(self.weight)
        return (self.lora_b @ self.lora_a) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.rank and not self.merged:
            out = out + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scaling
        return out

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``weight`` (for export or inference); the forward then skips it."""
        if self.rank and not self.merged:
            self.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (``weight`` back to the base weights, up to rounding)."""
        if self.rank and self.merged:
            self.weight -= self.delta_weight()
            self.merged = False
