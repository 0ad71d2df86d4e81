"""fedseg messages and client state <-> Flower records: lossless, and the same wire bytes."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import RecordDict

from fedseg.engine import wire
from fedseg.runtime.flower.keys import Record
from fedseg.runtime.flower.records import (
    PACKED,
    RecordError,
    broadcast_content,
    broadcast_from_content,
    eval_content,
    eval_from_content,
    pack_tensors,
    scalars_to_config,
    state_from_records,
    state_to_records,
    tensors_to_record,
    unpack_tensors,
    update_content,
    update_from_content,
)
from fedseg.types import Broadcast, ClientUpdate


def _params() -> dict[str, torch.Tensor]:
    return {
        "conv.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2) / 7,
        "bn.num_batches_tracked": torch.tensor(5),
        "bn.running_mean": torch.tensor([0.5, -1.0]),
        "head.bias": torch.tensor([1.0, 2.0], dtype=torch.float16),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.empty(0, 3),
    }


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("pack", [True, False])
def test_broadcast_round_trip_keeps_tensors_config_and_control(pack: bool) -> None:
    bc = Broadcast(params=_params(), extras={"proto": torch.ones(2, 4)}, config={"round": 3, "lr": 0.1, "phase": "x"})
    content = broadcast_content(bc, {"client-id": "site0", "client-index": 0}, pack=pack)
    back, control = broadcast_from_content(content)
    _same(bc.params, back.params)
    _same(bc.extras, back.extras)
    assert back.config == bc.config
    assert control == {"client-id": "site0", "client-index": 0, PACKED: pack}
    assert wire.encode(back) == wire.encode(bc)


def test_packing_makes_one_array_per_dtype() -> None:
    record, layout = pack_tensors(_params())
    assert list(record) == ["float32", "int64", "float16", "bool"]
    assert record["float32"].shape == (24 + 2 + 0,)
    _same(_params(), unpack_tensors(record, layout))


@pytest.mark.parametrize("pack", [True, False])
def test_update_round_trip_reencodes_to_the_clients_exact_wire_bytes(pack: bool) -> None:
    update = ClientUpdate(client_id="site1", params=_params(), num_examples=17, extras={"e": torch.zeros(3)},
                          metrics={"loss": 0.25, "steps": 4, "ok": True, "nan": float("nan")})
    record = {"round": 2, "site": "site1", "kind": "train", "loss": 0.25, "bytes_up": 123}
    back, back_record = update_from_content(update_content(update, record, pack=pack))
    assert wire.encode(back) == wire.encode(update)
    assert back_record == record


def test_no_extras_record_when_there_are_no_extras() -> None:
    content = update_content(ClientUpdate("a", {"w": torch.ones(1)}, 1), {"kind": "train"})
    assert set(content.array_records) == {Record.PARAMS.value}


def test_eval_records_round_trip_in_order() -> None:
    records = [{"site": "a", "model": "global", "dice": 0.5, "n": 3}, {"site": "a", "model": "personal", "dice": 0.75}]
    assert eval_from_content(eval_content(records)) == records
    assert eval_from_content(eval_content([])) == []


def test_nested_client_state_round_trips_through_context_state() -> None:
    state = {
        "local_params": {"bn.weight": torch.ones(3), "bn.num_batches_tracked": torch.tensor(7)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                      "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "params": [0, 1], "foreach": None}]},
        "loss": float("nan"),
        "name": "x",
    }
    target = RecordDict()
    state_to_records(state, target)
    back = state_from_records(target)
    assert back["name"] == "x" and math.isnan(back["loss"])
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert isinstance(back["optimizer"]["param_groups"][0]["betas"], tuple)
    assert list(back["optimizer"]["state"]) == [0]
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], torch.zeros(2))
    _same(state["local_params"], back["local_params"])
    assert state_from_records(RecordDict()) == {}


def test_unsupported_values_are_named() -> None:
    with pytest.raises(RecordError, match="'hd95' is None"):
        scalars_to_config({"hd95": None}, where="eval record")
    with pytest.raises(RecordError, match=r"client state state.bad is a object"):
        state_to_records({"bad": object()}, RecordDict())
    with pytest.raises(RecordError, match=r"w\['x'\] has dtype torch.bfloat16"):
        tensors_to_record({"x": torch.ones(2, dtype=torch.bfloat16)}, where="w")
