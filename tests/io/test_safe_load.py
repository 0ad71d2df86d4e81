"""A crafted checkpoint whose unpickling would run code (``os.system`` through ``__reduce__``,
writing a marker file) is refused by every path that reads a ``.pt`` file, and the marker never
appears; messages on the wire and in Flower records are never unpickled."""

from __future__ import annotations

import io
import os
import pickle
import re
import shutil
from collections import OrderedDict
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from fedseg.cli.main import app
from fedseg.config import config_from_dict
from fedseg.engine import wire
from fedseg.engine.state_store import ClientStateStore
from fedseg.io.safe import CheckpointError, UnsafeCheckpointError, load_checkpoint, plain_state, save_checkpoint
from fedseg.runtime.common import RunError
from fedseg.runtime.sim import run_inprocess
from fedseg.runtime.trained import EvalError, open_run
from fedseg.types import ClientUpdate


class _Payload:
    """Unpickling this calls ``os.system('touch <marker>')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _evil(path: Path, marker: Path, *, like: Any = None) -> Path:
    """Write a checkpoint shaped like ``like`` (a real checkpoint or state) carrying the payload."""
    obj = dict(like) if isinstance(like, dict) else {"round": 1, "global_params": {"w": torch.zeros(2)}}
    obj["server_state"] = {"note": _Payload(marker)}
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-round FedBN run with spilled client states (files in client_states/) and best.pt."""
    root = tmp_path_factory.mktemp("safe")
    cfg = tiny_config("fedbn", rounds=1)
    cfg["federation"]["state_spill_mb"] = 0
    run_inprocess(config_from_dict(cfg), root / "run", write_report=False)
    return root / "run"


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "unpickling ran the payload"


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def test_the_payload_would_run_code_without_weights_only(tmp_path: Path) -> None:
    """The control: the crafted file is really dangerous, so refusing it means something."""
    flag = tmp_path / "ran"
    torch.load(_evil(tmp_path / "evil.pt", flag), weights_only=False)
    assert flag.exists()


def test_load_checkpoint_refuses_the_payload_and_names_the_file(tmp_path: Path, marker: Path) -> None:
    path = _evil(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"--resume: .*evil\.pt: refused by torch.load\(weights_only=True\)"
                                                     r".*GLOBAL posix.system"):
        load_checkpoint(path, what="--resume")
    with pytest.raises(UnsafeCheckpointError, match=r"upload\.pt: refused"):
        load_checkpoint(path.read_bytes(), source="upload.pt")


def test_load_checkpoint_names_missing_and_torn_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nowhere\.pt: no such file"):
        load_checkpoint(tmp_path / "nowhere.pt")
    good = tmp_path / "good.pt"
    save_checkpoint({"round": 3, "w": torch.ones(4)}, good)
    torn = tmp_path / "torn.pt"
    torn.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match=r"torn\.pt: not a readable torch checkpoint") as caught:
        load_checkpoint(torn)
    assert not isinstance(caught.value, UnsafeCheckpointError)
    assert torch.equal(load_checkpoint(good)["w"], torch.ones(4))


class _Key(StrEnum):
    BEST = "best_val"


def test_save_checkpoint_writes_only_what_weights_only_loads(tmp_path: Path) -> None:
    state = {_Key.BEST: {"round": np.int64(2), "dice": np.float64(0.5)}, "opt": OrderedDict(step=torch.tensor(3.0)),
             "betas": (0.9, 0.999), "ids": {1, 2}, "none": None, "size": torch.Size([2, 3]), "dtype": torch.float16}
    save_checkpoint(state, tmp_path / "s.pt")
    back = load_checkpoint(tmp_path / "s.pt")
    assert back["best_val"] == {"round": 2, "dice": 0.5} and type(back["best_val"]["round"]) is int
    assert type(next(iter(back))) is str and back["betas"] == (0.9, 0.999) and back["ids"] == {1, 2}
    assert isinstance(back["opt"], OrderedDict) and back["size"] == torch.Size([2, 3])
    for bad, where in (({"bank": np.zeros(3)}, r"s2\.pt\['bank'\].*numpy.ndarray.*torch.from_numpy"),
                       ({"a": [1, np.float32(1)]}, r"\['a'\]\[1\].*numpy.float32"),
                       ({"f": _Payload(tmp_path / "x")}, r"\['f'\].*_Payload")):
        with pytest.raises(CheckpointError, match=where):
            save_checkpoint(bad, tmp_path / "s2.pt")
        assert not (tmp_path / "s2.pt").exists()  # refused before anything is written
    assert plain_state({"k": (np.bool_(True),)}) == {"k": (True,)}


def test_model_init_checkpoint_refuses_the_payload(tmp_path: Path, marker: Path) -> None:
    path = _evil(tmp_path / "init.pt", marker)
    cfg = tiny_config(rounds=1, model={"init_checkpoint": str(path)})
    with pytest.raises(RunError, match=r"init\.pt: refused by torch.load\(weights_only=True\)"):
        run_inprocess(config_from_dict(cfg), tmp_path / "r", write_report=False)


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_resume_refuses_a_tampered_checkpoint(run_copy: Path, marker: Path, name: str) -> None:
    target = run_copy / "checkpoints" / name
    _evil(target, marker, like=load_checkpoint(target))
    cfg = config_from_dict(yaml.safe_load((run_copy / "config.yaml").read_text()))
    with pytest.raises(RunError, match=rf"--resume: .*{re.escape(name)}: refused by torch.load"):
        run_inprocess(cfg, run_copy, resume=True, write_report=False)


def test_resume_and_eval_refuse_a_tampered_client_state(run_copy: Path, marker: Path) -> None:
    state_file = sorted((run_copy / "client_states").glob("*.pt"))[0]
    _evil(state_file, marker, like=load_checkpoint(state_file))
    cfg = config_from_dict(yaml.safe_load((run_copy / "config.yaml").read_text()))
    with pytest.raises(RunError, match=rf"the state of client 'site0': .*{state_file.name}: refused"):
        run_inprocess(cfg, run_copy, resume=True, write_report=False)
    with pytest.raises(EvalError, match=rf"{state_file.name}: refused"):
        open_run(run_copy)
    store = ClientStateStore(run_copy / "client_states", 0)
    store.restore(load_checkpoint(run_copy / "checkpoints" / "last.pt")["client_states"])
    with pytest.raises(UnsafeCheckpointError):
        store.load(state_file.name.split(".")[0])


def test_a_checkpoint_cannot_point_a_state_outside_its_folder(tmp_path: Path) -> None:
    store = ClientStateStore(tmp_path / "client_states", 0)
    with pytest.raises(CheckpointError, match=r"client 'site0'.*'\.\./\.\./etc/passwd'"):
        store.restore({"memory": {}, "disk": {"site0": "../../etc/passwd"}})


@pytest.mark.parametrize("command", ["eval", "predict"])
@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_eval_and_predict_refuse_a_tampered_checkpoint(run_copy: Path, marker: Path, command: str, name: str,
                                                       tmp_path: Path) -> None:
    target = run_copy / "checkpoints" / name
    _evil(target, marker, like=load_checkpoint(target))
    checkpoint = name.removesuffix(".pt")
    args = [str(run_copy), "--checkpoint", checkpoint]
    if command == "predict":
        args = [str(run_copy), str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--checkpoint", checkpoint]
    result = CliRunner().invoke(app, [command, *args])
    assert result.exit_code == 2, result.output
    assert "refused by torch.load(weights_only=True)" in " ".join(result.output.split())


def test_flower_paths_refuse_the_payload(run_copy: Path, marker: Path) -> None:
    from flwr.app import Context, RecordDict

    from fedseg.engine.rundir import RunDir
    from fedseg.runtime.flower import client_app
    from fedseg.runtime.flower.keys import Field
    from fedseg.runtime.flower.server_app import check_resumable

    state_file = sorted((run_copy / "client_states").glob("*.pt"))[0]
    _evil(state_file, marker)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(UnsafeCheckpointError, match=rf"client state: .*{state_file.name}: refused"):
        client_app._load_state(context, {Field.STATE_FILE.value: state_file.name}, run_copy / "client_states")
    _evil(run_copy / "checkpoints" / "last.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"last\.pt: refused"):
        check_resumable(RunDir(run_copy))


def _no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a message was unpickled")

    for module, name in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)


def test_the_wire_format_never_unpickles(monkeypatch: pytest.MonkeyPatch, marker: Path) -> None:
    data = wire.encode(ClientUpdate("site0", {"w": torch.arange(4.0)}, 3, {"e": torch.ones(2)}, {"loss": 0.5}))
    _no_unpickling(monkeypatch)
    update = wire.decode(data)
    assert isinstance(update, ClientUpdate) and torch.equal(update.params["w"], torch.arange(4.0))
    # a header naming a torch attribute that is no dtype is refused, not looked up and called
    forged = data.replace(b'"float32"', b'"load"   ', 1)
    with pytest.raises(ValueError, match=r"not a fedseg message: tensor 'w' has dtype 'load'"):
        wire.decode(forged)
    pickled = pickle.dumps(_Payload(marker))  # a pickle where a message should be
    with pytest.raises(ValueError, match="bad magic"):
        wire.decode(pickled)


def test_flower_records_never_unpickle(monkeypatch: pytest.MonkeyPatch, marker: Path) -> None:
    from flwr.app import Array, ArrayRecord

    from fedseg.runtime.flower.records import record_to_tensors, tensors_to_record

    record = tensors_to_record({"w": torch.arange(3.0)})
    # an object array (its elements pickled in the .npy) where a tensor should be
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    forged = Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=buffer.getvalue())
    _no_unpickling(monkeypatch)
    assert torch.equal(record_to_tensors(record)["w"], torch.arange(3.0))
    with pytest.raises(ValueError, match="allow_pickle"):
        record_to_tensors(ArrayRecord({"w": forged}))
