from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config
from fedseg.cli.main import app
from fedseg.config import config_from_dict
from fedseg.io.safe import load_checkpoint
from fedseg.runtime.export import ExportError, example_input, export_run, file_sha256
from fedseg.runtime.sim import run_inprocess
from fedseg.runtime.trained import open_run

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "fedavg2d"
    run_inprocess(config_from_dict(tiny_config("fedavg", dims=2, rounds=1)), path, write_report=False)
    return path


def _reference(run: Path, x: torch.Tensor, client: str | None = None) -> np.ndarray:
    trained = open_run(run)
    trained.load(None, client=client)
    with torch.no_grad():
        out: np.ndarray = trained.model(x).numpy()
    return out


def test_torchscript_export_reproduces_the_runs_logits(run_2d: Path, tmp_path: Path) -> None:
    done = export_run(run_2d, "torchscript", out=tmp_path)
    x = torch.randn(2, 1, 24, 32, generator=torch.Generator().manual_seed(1))
    scripted = torch.jit.load(str(done.model_path))
    with torch.no_grad():
        got = scripted(x).numpy()
    assert np.abs(got - _reference(run_2d, x)).max() < 1e-4


def test_onnx_export_reproduces_the_runs_logits_in_onnxruntime_at_another_size(run_2d: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    done = export_run(run_2d, "onnx", out=tmp_path)
    x = torch.randn(3, 1, 32, 16, generator=torch.Generator().manual_seed(2))  # dynamic batch and spatial axes
    session = ort.InferenceSession(str(done.model_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    assert got.shape == (3, 2, 32, 16)
    assert np.abs(got - _reference(run_2d, x)).max() < 1e-4


def test_safetensors_export_holds_the_personal_models_state_dict(run_2d: Path, tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    done = export_run(run_2d, "safetensors", out=tmp_path, client="site1")
    trained = open_run(run_2d)
    trained.load(None, client="site1")
    state = load_file(str(done.model_path))
    expected = trained.model.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k].cpu()) for k in state)
    assert done.card["client"] == "site1" and done.card["model_kind"] == "personal"


def test_model_card_names_data_metrics_preprocessing_shapes_and_hashes(run_2d: Path, tmp_path: Path) -> None:
    done = export_run(run_2d, "torchscript", out=tmp_path)
    card = json.loads(done.card_json.read_text())
    assert card["sha256"] == file_sha256(done.model_path)
    assert card["checkpoint"]["sha256"] == file_sha256(Path(card["checkpoint"]["path"]))
    assert card["input"]["channels"] == 1 and card["output"]["classes"] == 2 and card["input"]["spatial_dims"] == 2
    assert card["input"]["size_divisor"] == [2, 2]
    assert card["data"]["sites"] == ["site0", "site1"] and card["preprocessing"]["normalize"]
    summary = json.loads((run_2d / "summary.json").read_text())
    assert card["metrics"]["per_site"] == summary["test"][card["metrics"]["model"]]
    assert card["versions"]["torch"] == torch.__version__ and card["intended_use"]
    text = done.card_md.read_text()
    assert "Intended use" in text and card["sha256"] in text and "site1" in text


def test_example_input_has_the_runs_channels_and_grid(run_2d: Path) -> None:
    assert tuple(example_input(open_run(run_2d)).shape) == (1, 1, 16, 16)


def test_unknown_format_is_refused_with_the_allowed_ones(run_2d: Path) -> None:
    with pytest.raises(ExportError, match="allowed: safetensors, torchscript, onnx"):
        export_run(run_2d, "pickle")


def test_export_command_writes_model_and_card(run_2d: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(run_2d), "--format", "torchscript", "--out", str(tmp_path / "x")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x" / "model.ts").is_file() and (tmp_path / "x" / "MODEL_CARD.md").is_file()
    bad = CliRunner().invoke(app, ["export", str(run_2d), "--format", "torchscript", "--client", "nope"])
    assert bad.exit_code == 2


def test_run_checkpoints_load_with_weights_only(run_2d: Path) -> None:
    assert load_checkpoint(run_2d / "checkpoints" / "last.pt")["round"] == 1


def test_every_torch_load_in_src_goes_through_weights_only() -> None:
    """Each ``torch.load(`` call in src/ passes weights_only=True (fedseg.io.safe.load_checkpoint is the one)."""
    calls = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"(?<![\w.])torch\.load\(", text):
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            calls.append((path.relative_to(SRC), text[match.start(): end + 1]))
    assert calls, "the grep found no torch.load call at all: the pattern is broken"
    unsafe = [f"{p}: {c}" for p, c in calls if "weights_only=True" not in c]
    assert not unsafe, unsafe
