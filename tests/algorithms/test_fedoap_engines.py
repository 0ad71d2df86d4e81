"""FedOAP on every path: ``fedseg eval --client`` / ``fedseg predict --client`` attend to the
stored key/value banks, and Flower (in-memory grid) gives what the in-process engine gives."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from conftest import tiny_config
from fedseg.algorithms.fedoap import FedOAP, OAPKey, read_banks
from fedseg.cli.main import app
from fedseg.config import config_from_dict
from fedseg.engine.rundir import read_metrics
from fedseg.models.fedoap_unet import FedOAPUNet
from fedseg.records import Field, Kind, ModelKind, Split
from fedseg.runtime.inference import evaluate_run, predict_file
from fedseg.runtime.sim import run_inprocess
from fedseg.runtime.trained import open_run
from fedseg.types import ClientState


def _cfg(rounds: int = 2) -> dict[str, Any]:
    return tiny_config({"name": "fedoap", "finetune_epochs": 1, "train_pbl_weight": 0.5}, rounds=rounds,
                       train={"optimizer_state": "persist"})


def _personal_test(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {r[Field.SITE]: r for r in read_metrics(run_dir / "metrics.jsonl")
            if r.get(Field.KIND) == Kind.EVAL and r.get(Field.SPLIT) == Split.TEST
            and r.get(Field.MODEL) == ModelKind.PERSONAL}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("oap") / "run"
    run_inprocess(config_from_dict(_cfg()), out, write_report=False)
    return out


def test_fedseg_eval_client_attends_to_the_other_clients_banks(run_dir: Path) -> None:
    trained = open_run(run_dir)
    banks = read_banks(trained.checkpoint["server_state"][OAPKey.SERVER_STATE.value])
    assert set(banks) == {"site0", "site1"}
    trained.load(client="site0")
    model = trained.model
    assert isinstance(model, FedOAPUNet) and model.dca is not None
    assert model.dca.bank_key is not None and torch.equal(model.dca.bank_key, banks["site1"][0])
    assert model.dca.bank_value is not None and torch.equal(model.dca.bank_value, banks["site1"][1])
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        with_bank = model(x)
        model.set_bank(None, None)
        assert not torch.equal(model(x), with_bank)  # the bank changes the prediction
    rows = {r[Field.SITE]: r for r in evaluate_run(run_dir, client="site0")}  # fedseg eval --client site0
    in_run = _personal_test(run_dir)["site0"]
    assert rows["site0"][Field.MODEL] == ModelKind.PERSONAL
    for key in ("dice", "iou", "hd95", "precision", "recall", "n"):
        assert rows["site0"][key] == in_run[key], key
    out = CliRunner().invoke(app, ["eval", str(run_dir), "--client", "site1"])
    assert out.exit_code == 0, out.output


def test_fedseg_predict_client_and_a_new_site_get_banks(run_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Any, int | None]] = []
    original = FedOAP.prepare_eval_model

    def spy(self: FedOAP, model: nn.Module, extras: Any, state: ClientState) -> None:
        original(self, model, extras, state)
        bank = model.dca.bank_key if isinstance(model, FedOAPUNet) and model.dca is not None else None
        seen.append((state.get(OAPKey.CLIENT.value), None if bank is None else int(bank.shape[0])))

    monkeypatch.setattr(FedOAP, "prepare_eval_model", spy)
    image = np.random.default_rng(0).integers(0, 255, size=(16, 16)).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    predict_file(run_dir, [tmp_path / "x.png"], tmp_path / "y.png", client="site1")  # fedseg predict --client
    predict_file(run_dir, [tmp_path / "x.png"], tmp_path / "z.png")  # new data: the unseen-site model
    assert seen == [("site1", 64), (None, 128)]  # the other client's bank; every client's bank


@pytest.mark.slow
def test_fedoap_runs_on_flower_exactly_as_inprocess(tmp_path: Path) -> None:
    """Banks travel up and down through Flower's records, the client id and local parts live in
    the ClientApps' state, fine-tuning runs there: same global model and personal test scores."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime" / "flower"))
    from flower_testlib import run_flower_sim

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inproc = run_inprocess(config_from_dict(_cfg()), tmp_path / "inproc", write_report=False)
        flower = run_flower_sim(config_from_dict({**_cfg(), "engine": "flower-sim"}), tmp_path / "flower")
    finally:
        torch.set_num_threads(threads)
    assert inproc.global_params.keys() == flower.global_params.keys()
    for key, value in inproc.global_params.items():
        assert torch.equal(flower.global_params[key], value), key
    a, b = _personal_test(tmp_path / "inproc"), _personal_test(tmp_path / "flower")
    assert set(a) == set(b) == {"site0", "site1"}
    for site in a:
        assert {k: a[site][k] for k in ("dice", "hd95")} == {k: b[site][k] for k in ("dice", "hd95")}, site
