"""One evaluation path: in-run evaluation, ``fedseg eval`` and ``fedseg predict`` score the same
model (judged-by per site, unseen for new sites, codec.down round trip, prepare_eval_model)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from conftest import tiny_config
from fedseg.algorithms import ALGORITHMS
from fedseg.algorithms.base import Algorithm, StateKey
from fedseg.cli.main import app
from fedseg.config import config_from_dict
from fedseg.data.build import build_federated_data
from fedseg.engine.rundir import read_metrics
from fedseg.records import Field, Kind, ModelKind, Selection, Split
from fedseg.runtime.inference import EvalError, evaluate_run, predict_file
from fedseg.runtime.sim import run_inprocess
from fedseg.types import Broadcast, ClientState, Params, ServerState


def _test_records(run_dir: Path, selection: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r[Field.SITE], r[Field.MODEL]): r for r in read_metrics(run_dir / "metrics.jsonl")
            if r[Field.KIND] == Kind.EVAL and r[Field.SPLIT] == Split.TEST and r[Field.SELECTION] == selection}


@pytest.mark.parametrize("name", ["fedavg", "fedbn"])
def test_in_run_and_fedseg_eval_figures_are_identical_with_codec_down(tmp_path: Path, name: str) -> None:
    cfg = tiny_config(name, rounds=3, codec={"down": [{"name": "int8"}]})
    run_dir = tmp_path / name
    run_inprocess(config_from_dict(cfg), run_dir, write_report=False)
    judged = ModelKind.PERSONAL if name == "fedbn" else ModelKind.GLOBAL
    for checkpoint, selection in (("best", Selection.BEST_VAL), ("last", Selection.LAST)):
        in_run = _test_records(run_dir, selection)
        rows = evaluate_run(run_dir, checkpoint=checkpoint)
        assert [r[Field.SITE] for r in rows] == ["site0", "site1"]
        for row in rows:
            assert row[Field.MODEL] == judged and row[Field.SELECTION] == selection
            record = in_run[(row[Field.SITE], judged)]
            assert row[Field.SELECTED_ROUND] == record[Field.SELECTED_ROUND]
            for key in ("dice", "iou", "hd95", "precision", "recall", "n"):
                assert row[key] == record[key], (checkpoint, row[Field.SITE], key)
    assert evaluate_run(run_dir) == evaluate_run(run_dir, checkpoint="best")  # the run's selection by default


def test_a_site_that_never_trained_gets_the_unseen_model_everywhere(tmp_path: Path) -> None:
    cfg = tiny_config("fedbn", rounds=2, sites=3, federation={"train_sites": ["site0", "site1"]})
    run_dir = tmp_path / "bn"
    result = run_inprocess(config_from_dict(cfg), run_dir, write_report=False)
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    states = ckpt["client_states"]["memory"]
    n = ckpt["num_examples"]
    assert set(n) == {"site0", "site1"}
    for key in states["site0"][StateKey.LOCAL_PARAMS]:  # sample-weighted mean of the norm layers
        a, b = states["site0"][StateKey.LOCAL_PARAMS][key], states["site1"][StateKey.LOCAL_PARAMS][key]
        if a.is_floating_point():
            want = (a.double() * n["site0"] + b.double() * n["site1"]) / (n["site0"] + n["site1"])
            torch.testing.assert_close(ckpt["unseen_params"][key], want.to(a.dtype), rtol=1e-6, atol=1e-7)
    body = [k for k in result.global_params if k not in states["site0"][StateKey.LOCAL_PARAMS]]
    assert all(torch.equal(ckpt["unseen_params"][k], result.global_params[k]) for k in body)
    in_run = _test_records(run_dir, Selection.BEST_VAL)
    assert (("site2", ModelKind.UNSEEN) in in_run) and ("site2", ModelKind.PERSONAL) not in in_run
    rows = {r[Field.SITE]: r for r in evaluate_run(run_dir)}
    assert [rows[s][Field.MODEL] for s in ("site0", "site1", "site2")] == ["personal", "personal", "unseen"]
    assert rows["site2"]["dice"] == in_run[("site2", ModelKind.UNSEEN)]["dice"]
    assert result.summary["test"]["unseen"].keys() == {"site2"}
    with pytest.raises(EvalError, match="never trained"):
        evaluate_run(run_dir, client="site2")


def test_local_only_unseen_model_is_the_best_validated_site(tmp_path: Path) -> None:
    cfg = tiny_config("local", rounds=2, sites=3, federation={"train_sites": ["site0", "site1"]})
    run_dir = tmp_path / "local"
    run_inprocess(config_from_dict(cfg), run_dir, write_report=False)
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    states = ckpt["client_states"]["memory"]
    best = max(("site0", "site1"), key=lambda s: states[s][StateKey.LAST_VAL]["dice"])
    want = {**ckpt["global_params"], **states[best][StateKey.LOCAL_PARAMS]}
    assert all(torch.equal(ckpt["unseen_params"][k], v) for k, v in want.items())
    rows = {r[Field.SITE]: r[Field.MODEL] for r in evaluate_run(run_dir, checkpoint="last")}
    assert rows == {"site0": "personal", "site1": "personal", "site2": "unseen"}
    for checkpoint, selection in (("best", Selection.BEST_VAL), ("last", Selection.LAST)):
        in_run = _test_records(run_dir, selection)
        for row in evaluate_run(run_dir, checkpoint=checkpoint):
            assert row["dice"] == in_run[(row[Field.SITE], row[Field.MODEL])]["dice"], (checkpoint, row)


@dataclass
class BankShift(Algorithm):
    """A toy method whose evaluated output depends on a server-sent extra: the server broadcasts a
    "bank" tensor, and ``prepare_eval_model`` adds it to the class-1 output bias (a large bank
    makes the model predict foreground everywhere). Training never sees it."""

    name: ClassVar[str] = "bank_shift"
    bank: float = 1000.0

    def init_server_state(self, params: Params) -> ServerState:
        return {"bank": torch.tensor([0.0, self.bank])}

    def broadcast(self, rnd: int, global_params: Params, server_state: ServerState) -> Broadcast:
        out = super().broadcast(rnd, global_params, server_state)
        out.extras = {"bank": server_state["bank"]}
        return out

    def prepare_eval_model(self, model: nn.Module, extras: Any, state: ClientState) -> None:
        bias = [p for n, p in model.named_parameters() if n.endswith("bias")][-1]
        with torch.no_grad():
            bias += extras["bank"].to(bias.device)


@pytest.fixture
def bank_run(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setitem(ALGORITHMS._items, BankShift.name, BankShift)
    run_dir = tmp_path_factory.mktemp("bank") / "run"
    run_inprocess(config_from_dict(tiny_config("bank_shift", rounds=1)), run_dir, write_report=False)
    return run_dir


def _all_foreground_dice(cfg: dict[str, Any], split: str) -> dict[str, float]:
    data = build_federated_data(config_from_dict(cfg).data, 0)
    out = {}
    for site in data.sites:
        masks = getattr(site, split).pixel_masks()[:, 0].double()
        per_case = 2 * masks.sum(dim=(1, 2)) / (masks.sum(dim=(1, 2)) + masks[0].numel())
        out[site.name] = float(per_case.mean())
    return out


def test_prepare_eval_model_gets_the_server_extras_on_every_path(bank_run: Path, tmp_path: Path) -> None:
    cfg = tiny_config("bank_shift", rounds=1)
    for split in ("val", "test"):  # in-run: every evaluated model predicts foreground everywhere
        want = _all_foreground_dice(cfg, split)
        got = {r[Field.SITE]: r[Field.DICE] for r in read_metrics(bank_run / "metrics.jsonl")
               if r.get(Field.SPLIT) == split and r.get(Field.MODEL) == ModelKind.GLOBAL}
        assert got == pytest.approx(want), split
    rows = evaluate_run(bank_run)  # fedseg eval
    assert {r[Field.SITE]: r[Field.DICE] for r in rows} == pytest.approx(_all_foreground_dice(cfg, "test"))
    image = np.random.default_rng(0).integers(0, 255, size=(16, 16)).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    result = predict_file(bank_run, [tmp_path / "x.png"], tmp_path / "y.png")  # fedseg predict
    assert result.voxels == {1: 16 * 16}


def test_fedseg_eval_command_names_the_model_and_checks_the_checkpoint(bank_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["eval", str(bank_run), "--checkpoint", "last"])
    assert out.exit_code == 0, out.output
    assert "global" in out.output and "last" in out.output
    bad = runner.invoke(app, ["eval", str(bank_run), "--checkpoint", "newest"])
    assert bad.exit_code == 2 and "best, last" in " ".join(bad.output.split())


def test_checkpoint_best_needs_a_best_val_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_inprocess(config_from_dict(tiny_config("fedavg", rounds=1, eval={"select": "last"})), run_dir,
                  write_report=False)
    with pytest.raises(EvalError, match="eval.select: last"):
        evaluate_run(run_dir, checkpoint="best")
    assert {r[Field.SELECTION] for r in evaluate_run(run_dir)} == {Selection.LAST}


def test_eval_on_a_new_site_folder_uses_the_unseen_model(tmp_path: Path) -> None:
    cfg = tiny_config("fedbn", rounds=1)
    run_dir = tmp_path / "bn"
    run_inprocess(config_from_dict(cfg), run_dir, write_report=False)
    site = tmp_path / "newsite"
    (site / "images").mkdir(parents=True)
    (site / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        mask = np.zeros((20, 20), dtype=np.uint8)
        mask[5:12, 6:14] = 1
        Image.fromarray(rng.integers(0, 255, size=(20, 20), dtype=np.uint8)).save(site / "images" / f"c{i}.png")
        Image.fromarray(mask).save(site / "masks" / f"c{i}.png")
    row, = evaluate_run(run_dir, data=site)
    assert row[Field.SITE] == "newsite" and row[Field.MODEL] == ModelKind.UNSEEN
    from fedseg.engine.evaluate import evaluate
    from fedseg.models import build_model
    from fedseg.runtime.inference import _sites_at

    run_cfg = config_from_dict(cfg)
    model = build_model(run_cfg.model, 2, 1, 2)
    model.load_state_dict(torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)["unseen_params"])
    info = {"in_channels": 1, "num_classes": 2, "spatial_dims": 2}
    want = evaluate(model, _sites_at(site, run_cfg, info)[0].test, num_classes=2, device=torch.device("cpu"))
    assert {k: row[k] for k in want} == want
