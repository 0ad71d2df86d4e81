"""Sparsifiers of an update: top-k (largest magnitudes, indices sent) and random-k (seeded, no indices)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from fedseg.codecs.base import CODECS, Codec, TensorSpec

__all__ = ["TopK", "RandK"]

_INT16_OFFSET = 2**15


def _index_dtype(numel: int) -> torch.dtype:
    """The narrowest signed integer type that holds every flat position of a tensor."""
    if numel <= 2**16:
        return torch.int16
    return torch.int32 if numel <= 2**31 else torch.int64


@dataclass(frozen=True)
class _RatioSparsifier(Codec):
    """Shared by the sparsifiers: keep ``k = ceil(ratio * n)`` entries of tensors of at least
    ``min_numel`` elements, send smaller ones dense."""

    role: ClassVar[Literal["sparsifier", "quantizer"]] = "sparsifier"

    ratio: float = 0.1
    min_numel: int = 1024

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"{self.name}.ratio must be in (0, 1], got {self.ratio}")
        if self.min_numel < 0:
            raise ValueError(f"{self.name}.min_numel must be >= 0, got {self.min_numel}")

    def k(self, numel: int) -> int:
        """Entries kept of a tensor with ``numel`` elements (at least 1 of a non-empty tensor)."""
        return min(numel, max(1, math.ceil(self.ratio * numel))) if numel else 0

    def _dense(self, numel: int) -> bool:
        return numel == 0 or numel < self.min_numel


@CODECS.register("topk")
@dataclass(frozen=True)
class TopK(_RatioSparsifier):
    """Keep the ``k = ceil(ratio * n)`` largest-magnitude entries of each tensor, zero the rest.

    Per tensor (layer-wise), so every layer sends the same fraction. Tensors with fewer than
    ``min_numel`` elements (biases, normalisation parameters and **running statistics**) are sent
    dense (ours): they cost little, and a batch-norm layer whose running mean/variance arrive one
    coordinate per round normalises with stale statistics in eval mode -- on BUS-BRA that turned
    the global model's prediction into all background (docs/benchmarks.md). Combine with error
    feedback (the chain's residual, :class:`fedseg.codecs.chain.UpdateCodec`) so the dropped mass
    is sent later.

    Parts (sparse): ``idx`` ``(k,)`` flat positions in ascending order, as int16 holding
    ``position - 2^15`` for tensors of at most 2^16 elements (2 bytes per index), else int32 (int64
    past 2^31 elements); ``val`` ``(k,)`` in the input dtype. (dense): ``dense`` ``(*shape)``.

    Error bound: kept entries are exact; a dropped entry's error is its own magnitude, which is
    at most the k-th largest magnitude ``tau``: ``|x - x_hat| <= min(|x|, tau)``.

    Args:
        ratio: fraction of entries kept, in (0, 1]; the paper's rho (methods.md default 0.1).
        min_numel: tensors with fewer elements are sent dense (ours; 0 sparsifies everything).
    """

    name: ClassVar[str] = "topk"

    ratio: float = 0.1
    min_numel: int = 1024

    def parts(self, spec: TensorSpec) -> dict[str, TensorSpec]:
        n = spec.numel
        if self._dense(n):
            return {"dense": spec}
        return {"idx": TensorSpec((self.k(n),), _index_dtype(n)), "val": TensorSpec((self.k(n),), spec.dtype)}

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n = x.numel()
        if self._dense(n):
            return {"dense": x.detach()}
        flat = x.detach().reshape(-1)
        idx = torch.topk(flat.abs(), self.k(n), sorted=False).indices.sort().values
        dtype = _index_dtype(n)
        stored = (idx - _INT16_OFFSET).to(dtype) if dtype == torch.int16 else idx.to(dtype)
        return {"idx": stored, "val": flat[idx]}

    def decode(self, parts: Mapping[str, torch.Tensor], spec: TensorSpec) -> torch.Tensor:
        if "dense" in parts:
            return parts["dense"].to(spec.dtype).reshape(spec.shape)
        out = torch.zeros(spec.numel, dtype=spec.dtype)
        idx = parts["idx"].long()
        if parts["idx"].dtype == torch.int16:
            idx = idx + _INT16_OFFSET
        out[idx] = parts["val"].to(spec.dtype)
        return out.reshape(spec.shape)

    def error_bound(self, x: torch.Tensor) -> torch.Tensor:
        n = x.numel()
        if self._dense(n):
            return torch.zeros_like(x)
        tau = torch.topk(x.detach().abs().reshape(-1), self.k(n)).values.min()
        return torch.minimum(x.detach().abs(), tau)


@CODECS.register("randk")
@dataclass(frozen=True)
class RandK(_RatioSparsifier):
    """Keep a random ``k = ceil(ratio * n)`` entries of each tensor, chosen by a seed that travels
    with them, so no indices are sent (ours; random-k sparsification with memory, Stich et al. 2018).

    The sender draws a fresh 63-bit seed from torch's global generator (seeded per round and
    client by the engine, so runs are reproducible); both sides rebuild the kept positions as
    ``torch.randperm(n, generator=seeded)[:k]`` (CPU generator: the same on every machine with the
    same torch). Unlike top-k the choice ignores magnitudes, so every coordinate is sent with
    probability ``ratio`` each round; combine with error feedback so the dropped mass is sent later.

    Parts (sparse): ``seed`` ``(1,)`` int64; ``val`` ``(k,)`` in the input dtype. (dense, tensors
    under ``min_numel`` elements): ``dense`` ``(*shape)``.

    Error bound: kept entries are exact, a dropped entry's error is its magnitude: ``|x - x_hat| <= |x|``.

    Args:
        ratio: fraction of entries kept, in (0, 1].
        min_numel: tensors with fewer elements are sent dense (0 sparsifies everything).
    """

    name: ClassVar[str] = "randk"

    ratio: float = 0.5
    min_numel: int = 1024

    def positions(self, seed: int, numel: int) -> torch.Tensor:
        """The kept flat positions for ``seed`` (ascending)."""
        gen = torch.Generator().manual_seed(seed)
        return torch.randperm(numel, generator=gen)[: self.k(numel)].sort().values

    def parts(self, spec: TensorSpec) -> dict[str, TensorSpec]:
        n = spec.numel
        if self._dense(n):
            return {"dense": spec}
        return {"seed": TensorSpec((1,), torch.int64), "val": TensorSpec((self.k(n),), spec.dtype)}

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n = x.numel()
        if self._dense(n):
            return {"dense": x.detach()}
        seed = int(torch.randint(0, 2**63 - 1, (1,)).item())
        idx = self.positions(seed, n)
        return {"seed": torch.tensor([seed], dtype=torch.int64), "val": x.detach().reshape(-1)[idx]}

    def decode(self, parts: Mapping[str, torch.Tensor], spec: TensorSpec) -> torch.Tensor:
        if "dense" in parts:
            return parts["dense"].to(spec.dtype).reshape(spec.shape)
        out = torch.zeros(spec.numel, dtype=spec.dtype)
        out[self.positions(int(parts["seed"][0]), spec.numel)] = parts["val"].to(spec.dtype)
        return out.reshape(spec.shape)

    def error_bound(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x) if self._dense(x.numel()) else x.detach().abs()
