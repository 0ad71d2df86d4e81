"""The Flower executor alone, on a scripted Grid: a site that answers with an error, one that never
answers and one whose reply cannot be read each become a ClientFailure for that site only (the
executor contract); the others' replies come back unchanged; timeouts name the setting."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import torch
from flwr.app import Error, Message, RecordDict
from flwr.serverapp import Grid

from flower_testlib import task_identity
from fedseg.config import FlowerConfig
from fedseg.engine import wire
from fedseg.runtime.common import DataSpec
from fedseg.runtime.flower.executor import FlowerExecutor, SiteInfo
from fedseg.runtime.flower.records import eval_content, update_content
from fedseg.types import Broadcast, ClientFailure, ClientUpdate

SITES = ["ok", "raises", "silent", "garbled", "expired", "gone"]


class ScriptedGrid(Grid):
    """Each node behaves as its site's name says: ``ok`` answers, ``raises`` answers with an
    error (as Flower's runtimes do when a ClientApp raises), ``silent`` never answers, ``garbled``
    answers with an empty RecordDict, ``expired``'s message runs out of TTL (the SuperLink answers
"Message Unavailable"), ``gone`` stopped sending heartbeats (the SuperLink answers "Node Unavailable")."""

    def __init__(self) -> None:
        self.nodes = {100 + i: site for i, site in enumerate(SITES)}
        self.replies: dict[str, Message] = {}
        self.sent: list[Message] = []

    def set_run(self, run: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    @property
    def run(self) -> Any:  # pragma: no cover
        raise NotImplementedError

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id
            self.sent.append(message)
            site = self.nodes[message.metadata.dst_node_id]
            if site == "ok":
                if message.metadata.message_type == "train":
                    update = ClientUpdate(site, {"w": torch.full((2,), 3.0)}, num_examples=5)
                    reply = Message(update_content(update, {"site": site, "n": 5}), reply_to=message)
                else:
                    reply = Message(eval_content([{"site": site, "dice": 0.5}]), reply_to=message)
            elif site == "raises":
                reply = Message(Error(code=2, reason="<class 'ValueError'>:<'boom in local training'>"),
                                reply_to=message)
            elif site in ("expired", "gone"):
                code, why = (3, "Error: Message Unavailable") if site == "expired" else (5, "Error: Node Unavailable")
                reply = Message(Error(code=code, reason=why), reply_to=message)
            elif site == "garbled":
                reply = Message(RecordDict(), reply_to=message)
            else:
                ids.append(message.metadata.message_id)
                continue
            self.replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    with task_identity():
        yield


def _executor(grid: ScriptedGrid, **kwargs: Any) -> FlowerExecutor:
    sites = {site: SiteInfo(site, node, i, DataSpec(2, 1, 2), (5, 1, 1), 1)
             for i, (node, site) in enumerate(grid.nodes.items())}
    settings = FlowerConfig(reply_timeout=0.3, poll_interval=0.01)
    return FlowerExecutor(grid, sites, {s: i for i, s in enumerate(SITES)}, settings, local_keys=set(), **kwargs)


PAYLOAD = wire.encode(Broadcast({"w": torch.zeros(2)}))


def test_each_failing_client_becomes_a_client_failure_and_the_others_answer() -> None:
    grid = ScriptedGrid()
    start = time.monotonic()
    out = _executor(grid).fit(1, SITES, PAYLOAD)
    assert time.monotonic() - start < 5
    assert list(out) == SITES  # one entry per requested client, in order
    data, record = out["ok"]
    update = wire.decode(data)
    assert isinstance(update, ClientUpdate) and torch.equal(update.params["w"], torch.full((2,), 3.0))
    assert record["n"] == 5
    for site in ("raises", "silent", "garbled", "expired", "gone"):
        assert isinstance(out[site], ClientFailure) and out[site].client_id == site
    assert "ValueError: boom in local training" in out["raises"].reason
    assert "flower.reply_timeout" in out["silent"].reason and "0.3 s" in out["silent"].reason
    assert "unreadable train reply" in out["garbled"].reason
    assert "flower.reply_timeout" in out["expired"].reason  # an expired message is a missed deadline
    assert "Node Unavailable" in out["gone"].reason
    # every message expires at the deadline: a SuperNode that comes back later never runs it
    assert {m.metadata.ttl for m in grid.sent} == {0.3}


def test_the_timeout_names_federation_round_timeout_when_it_is_set() -> None:
    grid = ScriptedGrid()
    out = _executor(grid, round_timeout=0.2).evaluate(2, ["ok", "silent"], PAYLOAD, "val")
    assert wire.decode_records(out["ok"]) == [{"site": "ok", "dice": 0.5}]
    assert isinstance(out["silent"], ClientFailure)
    assert "federation.round_timeout" in out["silent"].reason and "flower.reply_timeout" not in out["silent"].reason
    assert {m.metadata.ttl for m in grid.sent} == {0.2}


def test_personalize_failures_are_per_client() -> None:
    out = _executor(ScriptedGrid()).personalize(3, ["raises", "silent"], PAYLOAD)
    assert all(isinstance(out[s], ClientFailure) for s in ("raises", "silent"))
