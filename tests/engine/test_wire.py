from __future__ import annotations

import pytest
import torch

from fedseg.engine import wire
from fedseg.types import Broadcast, ClientUpdate, MessageError


def test_update_round_trips_exactly() -> None:
    upd = ClientUpdate(
        client_id="site0",
        params={"a": torch.randn(3, 4), "n": torch.tensor(7), "h": torch.randn(2).half(), "e": torch.empty(0)},
        num_examples=12,
        extras={"proto": torch.randn(2, 5, dtype=torch.float64)},
        metrics={"loss": 0.25, "tag": "x"},
    )
    data = wire.encode(upd)
    back = wire.decode(data)
    assert isinstance(back, ClientUpdate)
    assert back.client_id == "site0" and back.num_examples == 12 and back.metrics == upd.metrics
    for k, v in upd.params.items():
        assert torch.equal(back.params[k], v) and back.params[k].dtype == v.dtype
    assert torch.equal(back.extras["proto"], upd.extras["proto"])
    assert wire.message_bytes(upd) == len(data)


def test_broadcast_round_trips_and_size_counts_payload() -> None:
    bc = Broadcast(params={"w": torch.zeros(1000)}, config={"round": 3})
    data = wire.encode(bc)
    assert len(data) >= 4000
    back = wire.decode(data)
    assert isinstance(back, Broadcast) and back.config == {"round": 3}


def test_non_tensor_payload_is_rejected() -> None:
    with pytest.raises(MessageError, match="only tensors"):
        wire.encode(ClientUpdate(client_id="a", params={"w": [1, 2]}, num_examples=1))  # type: ignore[dict-item]
    with pytest.raises(MessageError, match="scalar"):
        wire.encode(Broadcast(params={}, config={"x": [1]}))  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "message",
    [
        ClientUpdate("site0", {"a": torch.randn(3, 4), "n": torch.tensor(7), "h": torch.randn(2).half(),
                               "e": torch.empty(0), "t": torch.randn(4, 3).t()}, 12,
                     extras={"p": torch.randn(2, dtype=torch.float64)}, metrics={"loss": 0.1234567891, "tag": "é"}),
        Broadcast(params={"w": torch.zeros(1000), "b": torch.ones(3, dtype=torch.bfloat16)}, config={"round": 3}),
        Broadcast(params={}),
    ],
)
def test_encoded_size_equals_the_serialized_length(message: ClientUpdate | Broadcast) -> None:
    assert wire.encoded_size(message) == len(wire.encode(message))


def test_records_replies_round_trip_and_are_canonical() -> None:
    records = [{"site": "s0", "dice": 0.5, "n": 3, "hd95": float("nan")}, {"b": 1, "a": "x"}]
    data = wire.encode_records(records)
    back = wire.decode_records(data)
    assert back[1] == records[1] and back[0]["n"] == 3 and back[0]["hd95"] != back[0]["hd95"]
    assert wire.encode_records([{"a": "x", "b": 1}]) == wire.encode_records([{"b": 1, "a": "x"}])  # key order
    assert wire.encode_records([]) == b"[]"


def test_a_records_reply_must_be_a_list_of_objects() -> None:
    with pytest.raises(TypeError, match="list of dicts"):
        wire.encode_records({"dice": 1.0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="list of objects"):
        wire.decode_records(b'{"dice": 1.0}')
