"""No data in messages: every registered algorithm, both directions, both engines.

The wire format (:mod:`fedseg.engine.wire`) is the single choke point every message passes
through, so a spy on it sees everything a client or the server sends. The tiny data has a shape
no weight has (40x24 images) and case ids no other string has, so a leak cannot hide: no tensor
may end in the image's spatial shape (an image, a mask, a batch of them), no string anywhere in a
message may hold a case id or a data path, and every extras key must be on the algorithm's
allow-list (``Algorithm.message_extras``). On Flower the raw Flower records are checked too.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from fedseg.algorithms import ALGORITHMS, Algorithm
from fedseg.config import config_from_dict
from fedseg.engine import wire
from fedseg.runtime.sim import RunError, run_inprocess
from fedseg.types import Broadcast, ClientUpdate, MessageError, check_extras, check_message

H, W = 40, 24
"""Image shape: no weight of the tiny UNet (channels [4, 8], 3x3 kernels) ends in it."""
SITES = ("hospA", "hospB")


def _case_id(site: str, i: int) -> str:
    return f"pt{site[-1]}{i:02d}zq"


def write_sites(root: Path, n: int = 6) -> list[str]:
    """``root/<site>/{images,masks}/<case id>.png`` (HxW 40x24); the case ids."""
    rng = np.random.default_rng(0)
    ids = []
    for site in SITES:
        for sub in ("images", "masks"):
            (root / site / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = rng.integers(0, 120, (H, W), dtype=np.uint8)
            mask = np.zeros((H, W), np.uint8)
            mask[8:20, 6:14] = 1
            image[mask == 1] += 100
            Image.fromarray(image).save(root / site / "images" / f"{_case_id(site, i)}.png")
            Image.fromarray(mask).save(root / site / "masks" / f"{_case_id(site, i)}.png")
            ids.append(_case_id(site, i))
    return ids


def run_config(root: Path, algorithm: str) -> dict[str, Any]:
    cfg = tiny_config(algorithm, rounds=1, data={"source": "folder", "root": str(root), "cache": False})
    cfg["data"].pop("synthetic")
    return cfg


def _strings(value: Any) -> Iterator[str]:
    """Every string in a (nested) JSON-like value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


class Leaks:
    """What the spies found: one line per leak (empty: none), and how many messages were seen."""

    def __init__(self, ids: list[str], root: Path, algorithm: type[Algorithm]) -> None:
        self.ids, self.root, self.algorithm = ids, str(root), algorithm
        self.found: list[str] = []
        self.seen = {"update": 0, "broadcast": 0, "records": 0, "flower": 0}

    def tensor(self, where: str, name: str, shape: tuple[int, ...]) -> None:
        if len(shape) >= 2 and tuple(shape[-2:]) in ((H, W), (W, H)):
            self.found.append(f"{where}: tensor {name!r} has the data's shape {shape}")

    def text(self, where: str, text: str) -> None:
        hits = [i for i in self.ids if i in text]
        if hits or self.root in text:
            self.found.append(f"{where}: string {text[:60]!r} holds a case id or the data path")

    def message(self, message: ClientUpdate | Broadcast) -> None:
        kind = "update" if isinstance(message, ClientUpdate) else "broadcast"
        self.seen[kind] += 1
        for group in (message.params, message.extras):
            for name, tensor in group.items():
                self.tensor(kind, name, tuple(tensor.shape))
                self.text(kind, name)
        scalars = message.metrics if isinstance(message, ClientUpdate) else message.config
        for text in _strings({"scalars": scalars, "id": getattr(message, "client_id", "")}):
            self.text(kind, text)
        try:
            check_extras(message, self.algorithm.message_extras)
        except MessageError as exc:
            self.found.append(str(exc))

    def records(self, records: list[dict[str, Any]]) -> None:
        self.seen["records"] += 1
        for text in _strings(records):
            self.text("records", text)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Leaks]]:
    """Wraps wire.encode/decode/encode_records/decode_records; the test appends its :class:`Leaks`."""
    holder: list[Leaks] = []
    encode, decode = wire.encode, wire.decode
    encode_records, decode_records = wire.encode_records, wire.decode_records

    def spy_encode(message: Any) -> bytes:
        holder[0].message(message)
        return encode(message)

    def spy_decode(data: bytes) -> Any:
        message = decode(data)
        holder[0].message(message)
        return message

    def spy_encode_records(records: list[dict[str, Any]]) -> bytes:
        holder[0].records(records)
        return encode_records(records)

    def spy_decode_records(data: bytes) -> list[dict[str, Any]]:
        records = decode_records(data)
        holder[0].records(records)
        return records

    monkeypatch.setattr(wire, "encode", spy_encode)
    monkeypatch.setattr(wire, "decode", spy_decode)
    monkeypatch.setattr(wire, "encode_records", spy_encode_records)
    monkeypatch.setattr(wire, "decode_records", spy_decode_records)
    yield holder


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("no_data") / "sites"
    return root, write_sites(root)


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_no_message_of_any_algorithm_carries_data(tmp_path: Path, name: str, spy: list[Leaks],
                                                   data_root: tuple[Path, list[str]]) -> None:
    root, ids = data_root
    leaks = Leaks(ids, root, ALGORITHMS.get(name))
    spy.append(leaks)
    run_inprocess(config_from_dict(run_config(root, name)), tmp_path / "run", write_report=False)
    assert leaks.seen["broadcast"] >= 1 and leaks.seen["update"] >= 1 and leaks.seen["records"] >= 1, leaks.seen
    assert not leaks.found, "\n".join(leaks.found)


def test_the_spies_catch_a_leaking_update(data_root: tuple[Path, list[str]]) -> None:
    """The detector itself: an image batch, a case id and an unlisted extras key are all found."""
    root, ids = data_root
    leaks = Leaks(ids, root, ALGORITHMS.get("fedavg"))
    update = ClientUpdate("hospA", {"w": torch.zeros(3, 3)}, 4, extras={"batch": torch.zeros(2, 1, H, W)},
                          metrics={"note": f"worst case {ids[0]}"})
    leaks.message(update)
    assert len(leaks.found) == 3, leaks.found
    assert any("'batch'" in f and "allow-list" in f for f in leaks.found)
    fedmix = Leaks(ids, root, ALGORITHMS.get("fedmix"))
    fedmix.message(ClientUpdate("hospA", {}, 4, extras={"net2.conv.weight": torch.zeros(4, 1, 3, 3)}))
    assert not fedmix.found


def test_a_leaking_algorithm_is_caught_end_to_end(tmp_path: Path, spy: list[Leaks], monkeypatch: pytest.MonkeyPatch,
                                                  data_root: tuple[Path, list[str]]) -> None:
    """A FedAvg that sends its first training image in extras and a case id as a metric, run by
    the engine: the spies see both (so the sweep above would see them in any algorithm)."""
    from fedseg.algorithms.fedavg import FedAvg
    from fedseg.runtime import sim

    root, ids = data_root

    class Leaky(FedAvg):
        def client_update(self, model: Any, ctx: Any, num_examples: int, train_metrics: Any) -> ClientUpdate:
            update = super().client_update(model, ctx, num_examples, train_metrics)
            update.extras = {"image": torch.zeros(1, 1, H, W)}
            update.metrics["worst_case"] = ids[0]
            return update

    monkeypatch.setattr(sim, "build_algorithm", lambda spec: Leaky())
    leaks = Leaks(ids, root, Leaky)
    spy.append(leaks)
    with pytest.raises(RunError, match="extras 'image' not on the algorithm's allow-list"):  # the server refuses
        run_inprocess(config_from_dict(run_config(root, "fedavg")), tmp_path / "run", write_report=False)
    assert any("tensor 'image' has the data's shape (1, 1, 40, 24)" in f for f in leaks.found), leaks.found
    assert any(ids[0] in f for f in leaks.found) and any("allow-list" in f for f in leaks.found)


def test_check_message_refuses_path_like_strings_from_clients() -> None:
    for text in ("hospA/images/x.png", "C:\\data\\x", "case_001.nii.gz", "scan.PNG"):
        with pytest.raises(MessageError, match="looks like a file path"):
            check_message(ClientUpdate("hospA", {}, 1, metrics={"worst": text}))
        with pytest.raises(MessageError, match="looks like a file path"):
            check_message(ClientUpdate("hospA", {}, 1, metrics={text: 1.0}))
    check_message(ClientUpdate("hospA", {}, 1, metrics={"loss": 0.5, "phase": "head", "lr": 1e-3}))
    check_message(Broadcast({}, config={"note": "a/b"}))  # server -> client config is the server's own


def test_check_extras_prefixes_and_exact_keys() -> None:
    allowed = frozenset({"net2.", "prototypes"})
    check_extras(ClientUpdate("s", {}, 1, extras={"net2.a.weight": torch.zeros(1), "prototypes": torch.zeros(2)}),
                 allowed)
    with pytest.raises(MessageError, match=r"from 's': extras 'prototypes2' not on the algorithm's allow-list"):
        check_extras(ClientUpdate("s", {}, 1, extras={"prototypes2": torch.zeros(1)}), allowed)
    with pytest.raises(MessageError, match="none: it sends no extras"):
        check_extras(Broadcast({}, extras={"x": torch.zeros(1)}), frozenset())


def _flower_records(leaks: Leaks, where: str, content: Any) -> None:
    """Every array and config value of a Flower message (the transport's own records)."""
    leaks.seen["flower"] += 1
    for record_name, record in content.array_records.items():
        for name, array in record.items():
            leaks.tensor(f"{where} {record_name}", name, tuple(array.shape))
    for record_name, record in [*content.config_records.items(), *content.metric_records.items()]:
        for text in _strings({record_name: dict(record)}):
            leaks.text(f"{where} {record_name}", text)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "node"), [("fedavg", "partition"), ("fedmix", "site"), ("fedbcs", "site")])
def test_flower_messages_carry_no_data(tmp_path: Path, name: str, node: str, spy: list[Leaks],
                                       data_root: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The Flower ServerApp and ClientApps driven in this process (as the simulation drives them):
    the fedseg messages and Flower's records in both directions. FedMix sends a second network in
    extras; ``site`` nodes are configured as in a deployment (site name and data root)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime" / "flower"))
    from flower_testlib import DirectGrid, task_identity

    from fedseg.runtime.common import config_text
    from fedseg.runtime.flower.client_app import clear_cache, make_client_app
    from fedseg.runtime.flower.keys import RunKey
    from fedseg.runtime.flower.server_app import run_server

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr_home"))
    root, ids = data_root
    leaks = Leaks(ids, root, ALGORITHMS.get(name))
    spy.append(leaks)
    cfg = config_from_dict({**run_config(root, name), "engine": "flower-sim"})
    run_dir = tmp_path / "run"
    states = run_dir / "client_states"
    settings = {RunKey.CONFIG.value: config_text(cfg), RunKey.RUN_DIR.value: str(run_dir)}
    nodes: list[dict[str, Any]] = (
        [{"partition-id": i} for i in range(len(SITES))] if node == "partition"
        else [{"site": s, "data-root": str(root)} for s in SITES]
    )
    clear_cache()
    with task_identity():
        grid = DirectGrid(make_client_app({**settings, RunKey.STATE_DIR.value: str(states)}), nodes)
        push = grid.push_messages

        def spy_push(messages: Any) -> Any:
            messages = list(messages)
            for m in messages:
                _flower_records(leaks, "server->client", m.content)
            out = push(messages)
            for reply in grid.replies.values():
                if reply.has_content():
                    _flower_records(leaks, "client->server", reply.content)
            return out

        monkeypatch.setattr(grid, "push_messages", spy_push)
        run_server(grid, settings, engine="flower-sim", expected_nodes=len(SITES), write_report=False,
                   state_dir=states)
    clear_cache()
    assert leaks.seen["update"] >= 2 and leaks.seen["flower"] >= 4, leaks.seen
    assert not leaks.found, "\n".join(leaks.found)
