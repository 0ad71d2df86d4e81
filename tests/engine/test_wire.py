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
