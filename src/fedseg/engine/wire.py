"""The wire format of messages: named tensors + scalars -> bytes and back.

Both engines count bytes on the wire as ``len(encode(message))`` so figures are comparable. The
format is a length-prefixed JSON header (names, dtypes, shapes, byte offsets, scalars) followed by
the raw little-endian tensor bytes.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import torch

from fedseg.types import Broadcast, ClientUpdate, MessageKey, TensorDict, check_message

__all__ = ["encode", "decode", "encode_tensors", "decode_tensors", "message_bytes"]

_MAGIC = b"FSG1"


def encode_tensors(groups: dict[str, TensorDict], scalars: dict[str, Any]) -> bytes:
    """Serialise groups of named tensors plus JSON-able scalars."""
    header: dict[str, Any] = {"scalars": scalars, "groups": {}}
    chunks: list[bytes] = []
    offset = 0
    for group, tensors in groups.items():
        entries = []
        for name, tensor in tensors.items():
            t = tensor.detach().to("cpu").contiguous()
            raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            entries.append([name, str(t.dtype).removeprefix("torch."), list(t.shape), offset, len(raw)])
            chunks.append(raw)
            offset += len(raw)
        header["groups"][group] = entries
    head = json.dumps(header, separators=(",", ":")).encode()
    return _MAGIC + struct.pack("<I", len(head)) + head + b"".join(chunks)


def decode_tensors(data: bytes) -> tuple[dict[str, TensorDict], dict[str, Any]]:
    """Inverse of :func:`encode_tensors`."""
    if data[:4] != _MAGIC:
        raise ValueError("not a fedseg message (bad magic bytes)")
    (hlen,) = struct.unpack("<I", data[4:8])
    header = json.loads(data[8 : 8 + hlen])
    body = memoryview(data)[8 + hlen :]
    groups: dict[str, TensorDict] = {}
    for group, entries in header["groups"].items():
        out: TensorDict = {}
        for name, dtype, shape, off, size in entries:
            dt = getattr(torch, dtype)
            if size:
                buf = torch.frombuffer(bytearray(body[off : off + size]), dtype=torch.uint8)
                out[name] = buf.view(dt).reshape(shape)
            else:
                out[name] = torch.empty(shape, dtype=dt)
        groups[group] = out
    return groups, header["scalars"]


def encode(message: ClientUpdate | Broadcast) -> bytes:
    """Check and serialise a message."""
    check_message(message)
    groups = {MessageKey.PARAMS.value: message.params, MessageKey.EXTRAS.value: message.extras}
    if isinstance(message, ClientUpdate):
        scalars = {
            "kind": "update",
            MessageKey.CLIENT_ID.value: message.client_id,
            MessageKey.NUM_EXAMPLES.value: message.num_examples,
            MessageKey.METRICS.value: message.metrics,
        }
    else:
        scalars = {"kind": "broadcast", MessageKey.CONFIG.value: message.config}
    return encode_tensors(groups, scalars)


def decode(data: bytes) -> ClientUpdate | Broadcast:
    """Inverse of :func:`encode`."""
    groups, scalars = decode_tensors(data)
    params, extras = groups[MessageKey.PARAMS.value], groups[MessageKey.EXTRAS.value]
    if scalars["kind"] == "update":
        return ClientUpdate(
            client_id=scalars[MessageKey.CLIENT_ID.value],
            params=params,
            num_examples=int(scalars[MessageKey.NUM_EXAMPLES.value]),
            extras=extras,
            metrics=scalars[MessageKey.METRICS.value],
        )
    return Broadcast(params=params, extras=extras, config=scalars[MessageKey.CONFIG.value])


def message_bytes(message: ClientUpdate | Broadcast) -> int:
    """Bytes this message takes on the wire."""
    return len(encode(message))
