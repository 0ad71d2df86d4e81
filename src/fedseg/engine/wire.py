"""The wire format of messages: named tensors + scalars -> bytes and back.

Both engines count bytes on the wire as ``len(encode(message))`` so figures are comparable. The
format is a length-prefixed JSON header (names, dtypes, shapes, byte offsets, scalars) followed by
the raw little-endian tensor bytes. :func:`encoded_size` gives the same length without building
the bytes (used for the ``bytes_*_raw`` figures: a message's size without any codec).

Replies that carry records rather than tensors (evaluation metrics, the personalize record) are
messages too: :func:`encode_records` serialises a list of JSON-able records (canonical JSON: sorted
keys, no spaces), so both engines send, decode and count the same bytes.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import torch

from fedseg.types import Broadcast, ClientUpdate, MessageKey, TensorDict, check_message

__all__ = [
    "encode",
    "decode",
    "encode_tensors",
    "decode_tensors",
    "message_bytes",
    "encoded_size",
    "encode_records",
    "decode_records",
]

_MAGIC = b"FSG1"


def _header(groups: dict[str, TensorDict], scalars: dict[str, Any]) -> tuple[bytes, int]:
    """The JSON header of :func:`encode_tensors` and the length of the body that follows it."""
    header: dict[str, Any] = {"scalars": scalars, "groups": {}}
    offset = 0
    for group, tensors in groups.items():
        entries = []
        for name, tensor in tensors.items():
            size = tensor.numel() * tensor.element_size()
            entries.append([name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape), offset, size])
            offset += size
        header["groups"][group] = entries
    return json.dumps(header, separators=(",", ":")).encode(), offset


def encode_tensors(groups: dict[str, TensorDict], scalars: dict[str, Any]) -> bytes:
    """Serialise groups of named tensors plus JSON-able scalars."""
    head, _ = _header(groups, scalars)
    chunks: list[bytes] = []
    for tensors in groups.values():
        for tensor in tensors.values():
            t = tensor.detach().to("cpu").contiguous()
            chunks.append(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
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
            dt = getattr(torch, dtype, None) if isinstance(dtype, str) else None
            if not isinstance(dt, torch.dtype):  # a name, never an arbitrary torch attribute
                raise ValueError(f"not a fedseg message: tensor {name!r} has dtype {dtype!r}")
            if size:
                buf = torch.frombuffer(bytearray(body[off : off + size]), dtype=torch.uint8)
                out[name] = buf.view(dt).reshape(shape)
            else:
                out[name] = torch.empty(shape, dtype=dt)
        groups[group] = out
    return groups, header["scalars"]


def _groups_scalars(message: ClientUpdate | Broadcast) -> tuple[dict[str, TensorDict], dict[str, Any]]:
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
    return groups, scalars


def encode(message: ClientUpdate | Broadcast) -> bytes:
    """Check and serialise a message."""
    check_message(message)
    return encode_tensors(*_groups_scalars(message))


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


def encoded_size(message: ClientUpdate | Broadcast) -> int:
    """``len(encode(message))``, computed from the header alone (no tensor bytes are copied)."""
    check_message(message)
    head, body = _header(*_groups_scalars(message))
    return len(_MAGIC) + 4 + len(head) + body


def encode_records(records: list[dict[str, Any]]) -> bytes:
    """A reply of records (evaluation metrics, a personalize record) as canonical JSON bytes.

    Raises:
        TypeError: ``records`` is not a list of dicts, or a value is not JSON-able.
    """
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise TypeError(f"a records reply must be a list of dicts, got {type(records).__name__}")
    return json.dumps(records, sort_keys=True, separators=(",", ":")).encode()


def decode_records(data: bytes) -> list[dict[str, Any]]:
    """Inverse of :func:`encode_records`.

    Raises:
        ValueError: ``data`` is not a JSON list of objects.
    """
    records = json.loads(data)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("a records reply must be a JSON list of objects")
    return records
