"""L-MoE: pFedSAM's local mixture of adapters, in parallel to a ViT block's MLP (methods.md 4b).

``L-MoE(x) = sum_e g_e(x) E_e(x)`` with ``g = softmax over the top-k of W_g x`` (zero outside the
top k, so the weights of a token sum to 1) and bottleneck experts ``E_e(x) = up(GELU(down(x)))``
(``d -> d / bottleneck -> d``). ``up`` is zero-initialised, so at init L-MoE adds nothing and the
student equals the teacher (methods.md 7). Every forward stores the Switch-Transformer
load-balancing loss ``E * sum_e f_e P_e`` (f_e: share of the top-k assignments routed to e, P_e:
mean router probability of e) in :attr:`LocalMoE.balance_loss`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Expert", "LocalMoE"]


class Expert(nn.Module):
    """A bottleneck adapter ``up(GELU(down(x)))``, ``up`` zero at init."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.up(self.act(self.down(x)))
        return out


class LocalMoE(nn.Module):
    """Top-k gated bottleneck experts over tokens ``(..., dim)``.

    Args:
        dim: token width d.
        num_experts: E >= 1.
        top_k: experts per token, 1 <= k <= E.
        bottleneck: expert hidden width is ``max(1, dim // bottleneck)``.
    """

    def __init__(self, dim: int, num_experts: int, top_k: int, bottleneck: int = 4) -> None:
        super().__init__()
        if num_experts < 1 or not 1 <= top_k <= num_experts:
            raise ValueError(f"L-MoE needs num_experts >= 1 and 1 <= top_k <= num_experts, got {num_experts}, {top_k}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.experts = nn.ModuleList(Expert(dim, max(1, dim // bottleneck)) for _ in range(num_experts))
        self.enabled = True
        self.balance_loss: torch.Tensor | None = None

    def routing(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router weights ``(N, E)`` (softmax over each token's top k, zero elsewhere; rows sum to 1)
        and the full router probabilities ``(N, E)`` for the balancing loss, for tokens ``(N, dim)``."""
        weights, probs, _ = self._route(x)
        return weights, probs

    def _route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.gate(x)
        top, index = logits.topk(self.top_k, dim=-1)
        weights = torch.zeros_like(logits).scatter(-1, index, torch.softmax(top, dim=-1))
        return weights, torch.softmax(logits, dim=-1), index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        weights, probs, index = self._route(flat)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            out = out + weights[:, e:e + 1] * expert(flat)
        chosen = torch.zeros_like(probs).scatter(-1, index, 1.0)
        share = chosen.mean(0) / self.top_k  # f_e, sums to 1
        self.balance_loss = self.num_experts * (share * probs.mean(0)).sum()
        return out.reshape(x.shape)
