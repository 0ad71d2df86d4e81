"""Codecs for model updates on the wire: fp16, int8/int16, 1-bit sign (per tensor or channel), top-k, random-k.

Pure tensor math on :data:`~fedseg.types.Params`; the engine applies the configured chains to
every algorithm's messages (``codec.up`` on client updates, ``codec.down`` on broadcasts), so
algorithms stay unaware of them. See :mod:`fedseg.codecs.chain`.
"""

from __future__ import annotations

from fedseg.codecs import quantize as quantize  # noqa: F401  (registration)
from fedseg.codecs import topk as topk  # noqa: F401  (registration)
from fedseg.codecs.base import CODECS, Codec, CodecError, TensorSpec, build_codec
from fedseg.codecs.chain import (
    PACK_PREFIX,
    RESIDUAL_KEY,
    BroadcastCodec,
    CodecChain,
    UpdateCodec,
    WireCodecs,
    build_chain,
    build_wire_codecs,
    check_codec_config,
    pack,
    unpack,
)
from fedseg.codecs.quantize import Float16, Int8, Int16, Sign, UniformQuantizer
from fedseg.codecs.topk import RandK, TopK

__all__ = [
    "CODECS",
    "Codec",
    "CodecError",
    "TensorSpec",
    "build_codec",
    "CodecChain",
    "UpdateCodec",
    "BroadcastCodec",
    "WireCodecs",
    "build_chain",
    "build_wire_codecs",
    "check_codec_config",
    "pack",
    "unpack",
    "PACK_PREFIX",
    "RESIDUAL_KEY",
    "Float16",
    "Int8",
    "Int16",
    "UniformQuantizer",
    "Sign",
    "TopK",
    "RandK",
]
