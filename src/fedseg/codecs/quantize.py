"""Quantisers: fp16, uniform 8/16-bit quantisation and 1-bit scaled sign, per tensor or per output channel."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch

from fedseg.codecs.base import CODECS, Codec, TensorSpec

__all__ = ["Float16", "UniformQuantizer", "Int8", "Int16", "Sign"]

_FP16_MAX = 65504.0
_FP16_REL = 2.0**-11  # half an ulp of fp16, relative (10-bit mantissa)
_FP16_SUB = 2.0**-25  # half the smallest fp16 subnormal


@CODECS.register("fp16")
@dataclass(frozen=True)
class Float16(Codec):
    """Cast to IEEE half precision: 2 bytes per value.

    Parts: ``h`` ``(*shape)`` float16. Values beyond the fp16 range are clamped to +-65504 (with
    error feedback the excess is carried to the next round).

    Error bound: ``|x - x_hat| <= 2^-11 |x| + 2^-25 + max(|x| - 65504, 0)`` (round to nearest).
    """

    name: ClassVar[str] = "fp16"
    role: ClassVar[Literal["sparsifier", "quantizer"]] = "quantizer"

    def parts(self, spec: TensorSpec) -> dict[str, TensorSpec]:
        return {"h": TensorSpec(spec.shape, torch.float16)}

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"h": x.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16)}

    def decode(self, parts: Mapping[str, torch.Tensor], spec: TensorSpec) -> torch.Tensor:
        return parts["h"].to(spec.dtype).reshape(spec.shape)

    def error_bound(self, x: torch.Tensor) -> torch.Tensor:
        ax = x.abs().double()
        return (_FP16_REL * ax + _FP16_SUB + (ax - _FP16_MAX).clamp(min=0)).to(x.dtype)


@dataclass(frozen=True)
class UniformQuantizer(Codec):
    """Uniform ``b``-bit min/max quantisation (methods.md, FedSegNet (e))::

        step = (max - min) / (2^b - 1)
        q    = round((x - min) / step)          in {0, ..., 2^b - 1}   (q = 0 when max = min)
        x_hat = min + q * step

    ``min``/``max`` are taken over the whole tensor, or per output channel (dimension 0) when
    ``per_channel`` is set and the tensor has at least 2 dimensions (1-D tensors such as biases,
    norm parameters and top-k values always use one range).

    Parts: ``q`` ``(*shape)`` signed b-bit integer holding ``q - 2^(b-1)``; ``lo`` ``(G,)`` and
    ``step`` ``(G,)`` float32, ``G`` = 1 or the number of channels: ``b/8`` bytes per value plus 8
    bytes per range.

    Error bound: ``|x - x_hat| <= step/2`` plus float32 rounding (``4 eps32 max(|min|, |max|)``).
    """

    role: ClassVar[Literal["sparsifier", "quantizer"]] = "quantizer"
    bits: ClassVar[int]
    storage: ClassVar[torch.dtype]

    per_channel: bool = False

    def _groups(self, shape: tuple[int, ...]) -> int:
        return shape[0] if self.per_channel and len(shape) >= 2 else 1

    def parts(self, spec: TensorSpec) -> dict[str, TensorSpec]:
        groups = self._groups(spec.shape)
        return {
            "q": TensorSpec(spec.shape, self.storage),
            "lo": TensorSpec((groups,), torch.float32),
            "step": TensorSpec((groups,), torch.float32),
        }

    def _ranges(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``lo`` and ``step`` per group, float32 ``(G,)``."""
        groups = self._groups(tuple(x.shape))
        if x.numel() == 0:
            zeros = torch.zeros(groups, dtype=torch.float32)
            return zeros, zeros.clone()
        flat = x.detach().to(torch.float32).reshape(groups, -1)
        lo = flat.amin(dim=1)
        hi = flat.amax(dim=1)
        return lo, (hi - lo) / float(2**self.bits - 1)

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        lo, step = self._ranges(x)
        groups = lo.shape[0]
        if x.numel() == 0:
            return {"q": torch.zeros(x.shape, dtype=self.storage), "lo": lo, "step": step}
        flat = x.detach().to(torch.float32).reshape(groups, -1)
        safe = torch.where(step > 0, step, torch.ones_like(step))
        q = torch.round((flat - lo[:, None]) / safe[:, None]).clamp_(0, 2**self.bits - 1)
        q = torch.where(step[:, None] > 0, q, torch.zeros_like(q))
        stored = (q - 2 ** (self.bits - 1)).to(self.storage).reshape(x.shape)
        return {"q": stored, "lo": lo, "step": step}

    def decode(self, parts: Mapping[str, torch.Tensor], spec: TensorSpec) -> torch.Tensor:
        if spec.numel == 0:
            return torch.zeros(spec.shape, dtype=spec.dtype)
        lo, step = parts["lo"].to(torch.float32), parts["step"].to(torch.float32)
        groups = lo.shape[0]
        q = parts["q"].to(torch.float32).reshape(groups, -1) + float(2 ** (self.bits - 1))
        out: torch.Tensor = lo[:, None] + q * step[:, None]
        return out.reshape(spec.shape).to(spec.dtype)

    def error_bound(self, x: torch.Tensor) -> torch.Tensor:
        lo, step = self._ranges(x)
        groups = lo.shape[0]
        hi = lo + step * float(2**self.bits - 1)
        eps = torch.finfo(torch.float32).eps
        per_group = step / 2 + 4 * eps * torch.maximum(lo.abs(), hi.abs())
        if x.numel() == 0:
            return torch.zeros_like(x)
        return per_group[:, None].expand(groups, x.numel() // groups).reshape(x.shape).to(x.dtype)


@CODECS.register("int8")
@dataclass(frozen=True)
class Int8(UniformQuantizer):
    """8-bit uniform quantisation (see :class:`UniformQuantizer`): 1 byte per value."""

    name: ClassVar[str] = "int8"
    bits: ClassVar[int] = 8
    storage: ClassVar[torch.dtype] = torch.int8


@CODECS.register("int16")
@dataclass(frozen=True)
class Int16(UniformQuantizer):
    """16-bit uniform quantisation (see :class:`UniformQuantizer`): 2 bytes per value."""

    name: ClassVar[str] = "int16"
    bits: ClassVar[int] = 16
    storage: ClassVar[torch.dtype] = torch.int16


@CODECS.register("sign")
@dataclass(frozen=True)
class Sign(Codec):
    """1-bit scaled-sign quantisation (ours; EF-signSGD, Karimireddy et al. 2019)::

        s     = mean(|x|)                    per tensor, or per output channel with ``per_channel``
        x_hat = s * sign(x)                  (sign(0) = +1)

    ``s = mean|x|`` minimises ``||x - s sign(x)||_2`` over ``s``. After a sparsifier it sends the
    kept values as ``+-s`` (ternary, as in sparse ternary compression, Sattler et al. 2019). Use it
    with error feedback: the residual carries each coordinate's magnitude error to the next round.

    Tensors with fewer than ``min_numel`` elements (biases, normalisation parameters and running
    statistics) are quantised to 8 bits instead (ours): a sign code would move every channel's
    running variance by the same +-s, which turns small variances negative and the model's
    output into NaN in eval mode.

    Parts (``n >= min_numel``): ``bits`` ``(ceil(n/8),)`` uint8 (1 = non-negative, numpy bit
    order) and ``scale`` ``(G,)`` float32, ``G`` = 1 or the number of output channels: 1/8 byte
    per value. (Smaller): the parts of :class:`Int8`.

    Error bound: ``|x - x_hat| = ||x| - s|`` (plus float32 rounding of ``s``); Int8's for small tensors.
    """

    name: ClassVar[str] = "sign"
    role: ClassVar[Literal["sparsifier", "quantizer"]] = "quantizer"

    per_channel: bool = False
    min_numel: int = 1024

    def __post_init__(self) -> None:
        if self.min_numel < 0:
            raise ValueError(f"sign.min_numel must be >= 0, got {self.min_numel}")

    def _small(self, numel: int) -> bool:
        return numel < self.min_numel

    def _groups(self, shape: tuple[int, ...]) -> int:
        return shape[0] if self.per_channel and len(shape) >= 2 else 1

    def parts(self, spec: TensorSpec) -> dict[str, TensorSpec]:
        if self._small(spec.numel):
            return Int8(per_channel=self.per_channel).parts(spec)
        return {"bits": TensorSpec(((spec.numel + 7) // 8,), torch.uint8),
                "scale": TensorSpec((self._groups(spec.shape),), torch.float32)}

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        groups = self._groups(tuple(x.shape))
        if x.numel() == 0:
            return torch.zeros(groups, dtype=torch.float32)
        return x.detach().to(torch.float32).abs().reshape(groups, -1).mean(dim=1)

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._small(x.numel()):
            return Int8(per_channel=self.per_channel).encode(x)
        positive = (x.detach().reshape(-1) >= 0).cpu().numpy()
        return {"bits": torch.from_numpy(np.packbits(positive)), "scale": self._scale(x)}

    def decode(self, parts: Mapping[str, torch.Tensor], spec: TensorSpec) -> torch.Tensor:
        if self._small(spec.numel):
            return Int8(per_channel=self.per_channel).decode(parts, spec)
        positive = np.unpackbits(parts["bits"].cpu().numpy(), count=spec.numel).astype(np.float32)
        signs = torch.from_numpy(positive * 2.0 - 1.0)
        scale = parts["scale"].to(torch.float32)
        out = signs.reshape(scale.shape[0], -1) * scale[:, None]
        return out.reshape(spec.shape).to(spec.dtype)

    def error_bound(self, x: torch.Tensor) -> torch.Tensor:
        if self._small(x.numel()):
            return Int8(per_channel=self.per_channel).error_bound(x)
        scale = self._scale(x)
        groups = scale.shape[0]
        s = scale[:, None].expand(groups, x.numel() // groups).reshape(x.shape).to(x.dtype)
        eps = torch.finfo(torch.float32).eps
        return (x.detach().abs() - s).abs() + 4 * eps * torch.maximum(x.detach().abs(), s)
