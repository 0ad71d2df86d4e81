"""fedseg messages and client state <-> Flower records.

* tensors (``Broadcast.params`` / ``ClientUpdate.params`` and ``extras``) travel as Flower
  ``ArrayRecord`` s named :attr:`Record.PARAMS` and :attr:`Record.EXTRAS`: either one named
  ``Array`` per tensor (``flower.pack_arrays: false``), or -- the default -- the tensors of one dtype
  concatenated into one ``Array`` named after the dtype, with the names, dtypes and shapes in the
  message's ConfigRecord (``<record>.layout``). Flower moves every ``Array`` as its own object, one
  HTTP request per object and hop, so packing turns ~160 requests per U-Net message into ~4;
* scalars (round config, client id, n_k, metrics, metrics.jsonl records) as ``ConfigRecord`` s;
* a client's persistent state (a nested dict of tensors and scalars) as an ``ArrayRecord`` of its
  tensors plus a ``ConfigRecord`` holding the nesting as JSON, inside ``context.state``.

Every conversion is lossless: ``update_from_content(update_content(u))`` re-encodes to the same
:mod:`fedseg.engine.wire` bytes as ``u``, which is why both engines can count bytes on the wire
as ``len(wire.encode(message))`` (see docs/deployment.md, "Bytes on the wire").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedseg.runtime.flower.keys import Field, Record
from fedseg.types import Broadcast, ClientState, ClientUpdate, Scalar, TensorDict

__all__ = [
    "PACKED",
    "RecordError",
    "pack_tensors",
    "unpack_tensors",
    "convert_params",
    "tensors_to_record",
    "record_to_tensors",
    "scalars_to_config",
    "config_to_dict",
    "broadcast_content",
    "broadcast_from_content",
    "update_content",
    "update_from_content",
    "eval_content",
    "eval_from_content",
    "state_to_records",
    "state_from_records",
]


PACKED = "packed"
"""Control key :func:`broadcast_from_content` adds: whether the message's tensors came packed."""


class RecordError(TypeError):
    """A value cannot travel as a Flower record; the message names the key and the type."""


# ---------------------------------------------------------------------------------------- tensors
def tensors_to_record(tensors: Mapping[str, torch.Tensor], *, where: str = "message") -> ArrayRecord:
    """Named tensors -> ``ArrayRecord`` (CPU copies, order kept).

    Raises:
        RecordError: a dtype NumPy cannot hold (bfloat16 and other torch-only types).
    """
    arrays: dict[str, Array] = {}
    for name, tensor in tensors.items():
        t = tensor.detach().to("cpu").contiguous()
        try:
            arrays[name] = Array(t.numpy())
        except TypeError as exc:
            raise RecordError(
                f"{where}[{name!r}] has dtype {t.dtype}, which a Flower Array (NumPy) cannot hold; "
                "allowed: float16/32/64, (u)int8/16/32/64, bool"
            ) from exc
    return ArrayRecord(arrays)


def record_to_tensors(record: ArrayRecord) -> TensorDict:
    """``ArrayRecord`` -> named tensors (order kept)."""
    return {name: torch.from_numpy(array.numpy()) for name, array in record.items()}


def pack_tensors(tensors: Mapping[str, torch.Tensor], *, where: str = "message") -> tuple[ArrayRecord, str]:
    """Named tensors -> an ``ArrayRecord`` with one flat ``Array`` per dtype (named by the dtype,
    in order of first appearance) and the JSON layout ``[[name, dtype, shape], ...]``."""
    layout: list[list[Any]] = []
    flats: dict[str, list[torch.Tensor]] = {}
    for name, tensor in tensors.items():
        t = tensor.detach().to("cpu")
        dtype = str(t.dtype).removeprefix("torch.")
        layout.append([name, dtype, list(t.shape)])
        flats.setdefault(dtype, []).append(t.reshape(-1))
    packed = {dtype: torch.cat(parts) for dtype, parts in flats.items()}
    return tensors_to_record(packed, where=where), json.dumps(layout, separators=(",", ":"))


def unpack_tensors(record: ArrayRecord, layout: str) -> TensorDict:
    """Inverse of :func:`pack_tensors`."""
    flats = record_to_tensors(record)
    offsets = dict.fromkeys(flats, 0)
    out: TensorDict = {}
    for name, dtype, shape in json.loads(layout):
        numel = 1
        for size in shape:
            numel *= int(size)
        start = offsets[dtype]
        out[name] = flats[dtype][start:start + numel].reshape(shape).clone()
        offsets[dtype] = start + numel
    return out


# ---------------------------------------------------------------------------------------- scalars
def _config_value(value: Any, key: str, where: str) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, list) and value and all(type(v) is type(value[0]) for v in value):
        if isinstance(value[0], (bool, int, float, str, bytes)):
            return list(value)
    raise RecordError(
        f"{where}: {key!r} is {value!r} ({type(value).__name__}); a Flower ConfigRecord holds "
        "bool, int, float, str, bytes or a non-empty list of one of them"
    )


def scalars_to_config(values: Mapping[str, Any], *, where: str = "record") -> ConfigRecord:
    """A flat mapping of scalars -> ``ConfigRecord`` (order kept; NumPy scalars become Python)."""
    return ConfigRecord({str(k): _config_value(v, str(k), where) for k, v in values.items()})


def config_to_dict(record: ConfigRecord) -> dict[str, Any]:
    """``ConfigRecord`` -> a plain dict (order kept)."""
    return {k: (list(v) if isinstance(v, list) else v) for k, v in record.items()}


def _split_prefixed(values: Mapping[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``{prefix + k: v}`` entries (prefix stripped) and the others."""
    inner = {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}
    outer = {k: v for k, v in values.items() if not k.startswith(prefix)}
    return inner, outer


# ---------------------------------------------------------------------------------------- messages
def _layout_key(name: Record) -> str:
    return f"{name.value}.layout"


def _put_tensors(content: RecordDict, scalars: dict[str, Any], name: Record, tensors: Mapping[str, torch.Tensor],
                 *, pack: bool, where: str, converted: tuple[ArrayRecord, str] | None = None) -> None:
    """Put ``tensors`` into ``content[name]`` (packed: the layout goes into ``scalars``)."""
    if pack:
        record, layout = converted if converted is not None else pack_tensors(tensors, where=where)
        content[name.value] = record
        scalars[_layout_key(name)] = layout
    else:
        content[name.value] = converted[0] if converted is not None else tensors_to_record(tensors, where=where)


def _get_tensors(content: RecordDict, scalars: dict[str, Any], name: Record) -> TensorDict:
    if name.value not in content.array_records:
        return {}
    layout = scalars.pop(_layout_key(name), None)
    record = content.array_records[name.value]
    return unpack_tensors(record, str(layout)) if layout is not None else record_to_tensors(record)


def convert_params(params: Mapping[str, torch.Tensor], *, pack: bool) -> tuple[ArrayRecord, str]:
    """Convert parameters once for several messages (see :func:`broadcast_content`)."""
    if pack:
        return pack_tensors(params, where="Broadcast.params")
    return tensors_to_record(params, where="Broadcast.params"), ""


def broadcast_content(
    broadcast: Broadcast,
    control: Mapping[str, Any],
    *,
    pack: bool = True,
    params: tuple[ArrayRecord, str] | None = None,
) -> RecordDict:
    """The content of a server -> client message.

    Args:
        broadcast: the algorithm's message.
        control: engine keys (:class:`Field` names: client id and index, round, split...).
        pack: one Array per dtype (default) or one per tensor.
        params: ``broadcast.params`` already converted by :func:`convert_params` (one ArrayRecord
            shared by every client's message, so Flower stores and sends identical content once).
    """
    content = RecordDict()
    scalars: dict[str, Any] = dict(control)
    _put_tensors(content, scalars, Record.PARAMS, broadcast.params, pack=pack, where="Broadcast.params",
                 converted=params)
    if broadcast.extras:
        _put_tensors(content, scalars, Record.EXTRAS, broadcast.extras, pack=pack, where="Broadcast.extras")
    scalars.update({f"{Field.BROADCAST_PREFIX.value}{k}": v for k, v in broadcast.config.items()})
    content[Record.CONFIG.value] = scalars_to_config(scalars, where="Broadcast.config")
    return content


def broadcast_from_content(content: RecordDict) -> tuple[Broadcast, dict[str, Any]]:
    """Inverse of :func:`broadcast_content`: the broadcast and the control keys (with ``packed``
    telling whether the tensors came packed, so the reply can mirror it)."""
    values = config_to_dict(_config(content, Record.CONFIG))
    packed = _layout_key(Record.PARAMS) in values
    if Record.PARAMS.value not in content.array_records:
        raise RecordError(f"message has no ArrayRecord {Record.PARAMS.value!r}; it has {sorted(content.array_records)}")
    params = _get_tensors(content, values, Record.PARAMS)
    extras = _get_tensors(content, values, Record.EXTRAS)
    config, control = _split_prefixed(values, Field.BROADCAST_PREFIX.value)
    control[PACKED] = packed
    return Broadcast(params=params, extras=extras, config=cast(dict[str, Scalar], config)), control


def update_content(update: ClientUpdate, record: Mapping[str, Any], *, pack: bool = True) -> RecordDict:
    """The content of a client -> server training reply: the update and its metrics.jsonl record."""
    content = RecordDict()
    scalars: dict[str, Any] = {Field.CLIENT_ID.value: update.client_id, Field.NUM_EXAMPLES.value: update.num_examples}
    _put_tensors(content, scalars, Record.PARAMS, update.params, pack=pack, where="ClientUpdate.params")
    if update.extras:
        _put_tensors(content, scalars, Record.EXTRAS, update.extras, pack=pack, where="ClientUpdate.extras")
    scalars.update({f"{Field.METRIC_PREFIX.value}{k}": v for k, v in update.metrics.items()})
    content[Record.UPDATE.value] = scalars_to_config(scalars, where="ClientUpdate")
    content[Record.RECORD.value] = scalars_to_config(record, where="train record")
    return content


def update_from_content(content: RecordDict) -> tuple[ClientUpdate, dict[str, Any]]:
    """Inverse of :func:`update_content`."""
    values = config_to_dict(_config(content, Record.UPDATE))
    if Record.PARAMS.value not in content.array_records:
        raise RecordError(f"reply has no ArrayRecord {Record.PARAMS.value!r}; it has {sorted(content.array_records)}")
    params = _get_tensors(content, values, Record.PARAMS)
    extras = _get_tensors(content, values, Record.EXTRAS)
    metrics, head = _split_prefixed(values, Field.METRIC_PREFIX.value)
    update = ClientUpdate(
        client_id=str(head[Field.CLIENT_ID.value]),
        params=params,
        num_examples=int(head[Field.NUM_EXAMPLES.value]),
        extras=extras,
        metrics=cast(dict[str, Scalar], metrics),
    )
    return update, config_to_dict(_config(content, Record.RECORD))


def eval_content(records: list[dict[str, Any]]) -> RecordDict:
    """Evaluation records -> ``fedseg.eval.<i>`` ConfigRecords (in order)."""
    content = RecordDict()
    for i, record in enumerate(records):
        content[f"{Record.EVAL.value}.{i}"] = scalars_to_config(record, where="eval record")
    return content


def eval_from_content(content: RecordDict) -> list[dict[str, Any]]:
    """Inverse of :func:`eval_content`."""
    prefix = f"{Record.EVAL.value}."
    names = sorted((k for k in content.config_records if k.startswith(prefix)), key=lambda k: int(k[len(prefix):]))
    return [config_to_dict(content.config_records[k]) for k in names]


def _config(content: RecordDict, name: Record) -> ConfigRecord:
    if name.value not in content.config_records:
        raise RecordError(f"message has no ConfigRecord {name.value!r}; it has {sorted(content.config_records)}")
    return content.config_records[name.value]


# ---------------------------------------------------------------------------------------- state
def _encode_state(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON layout of a state value; tensors are replaced by ``{"t": key}`` and collected."""
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value
        return {"t": key}
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"v": value}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"d": {k: _encode_state(v, f"{path}.{k}", tensors) for k, v in value.items()}}
        items = []
        for k, v in value.items():
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise RecordError(f"client state {path}: key {k!r} ({type(k).__name__}) is not a scalar")
            items.append([k, _encode_state(v, f"{path}[{k!r}]", tensors)])
        return {"m": items}
    if isinstance(value, (list, tuple)):
        tag = "l" if isinstance(value, list) else "u"
        return {tag: [_encode_state(v, f"{path}[{i}]", tensors) for i, v in enumerate(value)]}
    raise RecordError(
        f"client state {path} is a {type(value).__name__}; state holds tensors, scalars, None and "
        "dicts/lists/tuples of them"
    )


def _decode_state(node: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    (tag, body), = node.items()
    if tag == "t":
        return tensors[body]
    if tag == "v":
        return body
    if tag == "d":
        return {k: _decode_state(v, tensors) for k, v in body.items()}
    if tag == "m":
        return {k: _decode_state(v, tensors) for k, v in body}
    if tag == "l":
        return [_decode_state(v, tensors) for v in body]
    if tag == "u":
        return tuple(_decode_state(v, tensors) for v in body)
    raise RecordError(f"client state layout: unknown tag {tag!r}")


def state_to_records(state: ClientState, target: RecordDict) -> None:
    """Store a client state in ``target`` (a ``context.state``), replacing any earlier one."""
    tensors: dict[str, torch.Tensor] = {}
    layout = _encode_state(state, "state", tensors)
    target[Record.STATE_TENSORS.value] = tensors_to_record(tensors, where="client state")
    target[Record.STATE_LAYOUT.value] = ConfigRecord({Field.LAYOUT.value: json.dumps(layout, separators=(",", ":"))})


def state_from_records(source: RecordDict) -> ClientState:
    """The client state stored by :func:`state_to_records` (``{}`` when there is none yet)."""
    if Record.STATE_LAYOUT.value not in source.config_records:
        return {}
    layout = json.loads(str(source.config_records[Record.STATE_LAYOUT.value][Field.LAYOUT.value]))
    tensors = record_to_tensors(source.array_records[Record.STATE_TENSORS.value])
    state = _decode_state(layout, tensors)
    if not isinstance(state, dict):
        raise RecordError(f"client state layout does not describe a dict (got {type(state).__name__})")
    return state
