"""``fedseg run`` and ``fedseg flower app`` refuse every config mistake before any data is read:
one line naming the key, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from fedseg.cli.main import app

runner = CliRunner()

MISTAKES = [
    (["codec.up=[{name: topkk}]"], "codec.up[0].name: got 'topkk'"),
    (["codec.up=[{name: int8}, {name: topk}]"], "codec.up: the sparsifier must come first in a codec chain (e.g. [topk, int8])"),
    (["codec.down=[{name: topk, ratio: 0.1}]"], "codec.down got ['topk']"),
    (["seed=-1"], "'seed': Input should be greater than or equal to 0"),
    (["federation.rounds=abc"], "'federation.rounds': Input should be a valid integer"),
    (["foo"], "--set 'foo': expected key=value"),
    (["federation.roundz=3"], "Did you mean 'rounds'?"),
    (["data={a"], "--set data={a: the value is not valid YAML"),
    (["algorithm.name=fedproxx"], "Did you mean 'fedprox'?"),
]


def _cfg(tmp_path: Path) -> Path:
    # data that does not exist: a run that got as far as loading data would fail on it instead
    cfg = tiny_config(data={"source": "folder", "root": str(tmp_path / "no_such_root")})
    cfg["data"].pop("synthetic")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _one_line_error(output: str, expected: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines == [f"error: {lines[0].removeprefix('error: ')}"], output
    assert expected in lines[0] and "Traceback" not in output and "no_such_root" not in output, output


@pytest.mark.parametrize(("sets", "expected"), MISTAKES)
def test_run_refuses_config_mistakes_before_the_data(tmp_path: Path, sets: list[str], expected: str) -> None:
    args = [x for s in sets for x in ("--set", s)]
    result = runner.invoke(app, ["run", str(_cfg(tmp_path)), *args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    _one_line_error(result.output, expected)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("sets", "expected"), MISTAKES)
def test_flower_app_refuses_the_same_mistakes(tmp_path: Path, sets: list[str], expected: str) -> None:
    args = [x for s in sets for x in ("--set", s)]
    result = runner.invoke(app, ["flower", "app", str(tmp_path / "app"), str(_cfg(tmp_path)), "--run-dir",
                                 str(tmp_path / "run"), *args])
    assert result.exit_code == 2, result.output
    _one_line_error(result.output, expected)
    assert not (tmp_path / "app").exists()


def test_run_names_missing_files_before_reading_any_case(tmp_path: Path) -> None:
    sets = ["--set", f"model.init_checkpoint={tmp_path / 'init.pt'}", "--set", f"data.split_file={tmp_path / 's.json'}"]
    result = runner.invoke(app, ["run", str(_cfg(tmp_path)), *sets, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    _one_line_error(result.output.replace(str(tmp_path / "no_such_root"), "ROOT"), "model.init_checkpoint: no such file")
    assert "data.split_file: no such file" in result.output and "data.root: no such folder: ROOT" in result.output.replace(
        str(tmp_path / "no_such_root"), "ROOT")
