"""The codec interface: one floating tensor -> named parts (smaller tensors) and back.

A codec is a small dataclass registered by name in :data:`CODECS`; its hyperparameters are typed
fields (``{name: int8, per_channel: true}`` -> ``Int8(per_channel=True)``). Codecs are pure tensor
math: they know nothing of messages, clients or the engine. :mod:`fedseg.codecs.chain` composes
them into chains and applies a chain to a whole :data:`~fedseg.types.Params` message.

Every codec states

* :meth:`Codec.parts`: the names, shapes and dtypes of its encoded parts as a function of the input
  shape and dtype alone, so a receiver that knows the parameter shapes can cut a packed byte blob
  back into parts without any per-tensor framing on the wire;
* :meth:`Codec.error_bound`: an element-wise upper bound on ``|x - decode(encode(x))|`` (tested).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from fedseg.registry import Registry, build_typed, suggest

__all__ = ["TensorSpec", "Codec", "CodecError", "CODECS", "build_codec"]


class CodecError(ValueError):
    """A bad codec configuration or a message that does not match its template."""


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a tensor (what a receiver knows without the values)."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorSpec:
        return cls(tuple(int(s) for s in tensor.shape), tensor.dtype)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class Codec(ABC):
    """Encodes one floating tensor into named parts; :meth:`decode` inverts it (lossy).

    Class attributes:
        name: the registry name.
        role: ``"sparsifier"`` (needs a reference to be meaningful: it zeroes coordinates, so it
            only makes sense on an update Delta, never on absolute weights) or ``"quantizer"``.
    """

    name: ClassVar[str]
    role: ClassVar[Literal["sparsifier", "quantizer"]]

    @abstractmethod
    def parts(self, spec: TensorSpec) -> dict[str, TensorSpec]:
        """Names, shapes and dtypes of the encoded parts of a tensor of ``spec`` (ordered)."""

    @abstractmethod
    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode a floating tensor ``x`` (any shape) into the parts of :meth:`parts`."""

    @abstractmethod
    def decode(self, parts: Mapping[str, torch.Tensor], spec: TensorSpec) -> torch.Tensor:
        """Rebuild a tensor of ``spec`` from its parts."""

    @abstractmethod
    def error_bound(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise upper bound on ``|x - decode(encode(x))|``, same shape as ``x``."""


CODECS: Registry[type[Codec]] = Registry("codec")


def build_codec(spec: Mapping[str, Any], where: str = "codec") -> Codec:
    """Instantiate ``spec['name']`` with the remaining keys as typed hyperparameters.

    Args:
        spec: e.g. ``{"name": "topk", "ratio": 0.01}``.
        where: the config path of ``spec`` for error messages (e.g. ``"codec.up[0]"``).

    Raises:
        CodecError: missing or unknown name, unknown keys (the allowed ones are listed), or a
            value of the wrong type or range.
    """
    params = dict(spec)
    name = params.pop("name", None)
    if not isinstance(name, str) or name not in CODECS:
        hint = suggest(name, CODECS.names()) if isinstance(name, str) else ""
        raise CodecError(f"{where}.name: got {name!r}; allowed: {', '.join(CODECS.names())}.{hint}")
    return build_typed(CODECS.get(name), params, kind="codec", name=name, where=where, error=CodecError)
