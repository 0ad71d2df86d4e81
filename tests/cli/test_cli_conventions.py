"""CLI habits users expect: --version, -h, shell completion, fixed choices, exit codes 2 (usage) and 1 (data/run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from fake_datasets import write_png_case
from fedseg import __version__
from fedseg.cli.main import FAILED, USAGE, app

runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def test_version_names_fedseg_and_the_packages_a_federation_must_share() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    line = result.output.strip()
    assert line.startswith(f"fedseg {__version__} (torch ") and "MONAI" in line and "flwr" in line


@pytest.mark.parametrize("args", [["-h"], ["--help"], ["run", "-h"], ["eval", "-h"], ["flower", "-h"],
                                  ["flower", "certs", "-h"], ["flower", "renew-certs", "-h"], ["data", "check", "-h"]])
def test_short_and_long_help_everywhere(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "Usage:" in result.output, result.output


def test_help_documents_the_exit_codes_and_completion() -> None:
    text = _flat(runner.invoke(app, ["-h"]).output)
    assert "Exit codes: 0 success; 2 usage error" in text and "1 data or run error" in text
    assert "--install-completion" in text and (USAGE, FAILED) == (2, 1)


@pytest.mark.parametrize(("words", "cword", "expected"), [
    ("fedseg run x.yaml --engine ", 4, ["inprocess", "flower-sim"]),
    ("fedseg eval runs/x --split ", 4, ["train", "val", "test"]),
    ("fedseg lo", 1, ["loso"]),
])
def test_shell_completion_offers_commands_and_choices(words: str, cword: int, expected: list[str]) -> None:
    env = {"_FEDSEG_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    result = runner.invoke(app, [], prog_name="fedseg", env=env)
    assert result.exit_code == 0 and result.output.split() == expected


@pytest.mark.parametrize(("args", "message"), [
    (["run", "cfg.yaml", "--engine", "ray"], "'ray': allowed inprocess, flower-sim"),
    (["eval", "runs/x", "--split", "validation"], "'validation': allowed train, val, test"),
    (["run", "cfg.yaml", "--no-such-option"], "No such option"),
    (["run"], "Missing argument"),
    (["frobnicate"], "No such command"),
])
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == USAGE and message in _flat(result.output), result.output


def _cfg(tmp_path: Path, cfg: dict[str, object]) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_a_bad_config_is_a_usage_error_and_bad_data_a_data_error(tmp_path: Path) -> None:
    bad_key = runner.invoke(app, ["run", str(_cfg(tmp_path, tiny_config())), "--set", "train.nope=1"])
    assert bad_key.exit_code == USAGE and "train.nope" in _flat(bad_key.output)
    missing = runner.invoke(app, ["eval", str(tmp_path), "--data", str(tmp_path / "nowhere")])
    assert missing.exit_code == USAGE and "no such file or folder" in _flat(missing.output)
    root = tmp_path / "data"
    for site in ("A", "B"):
        for i in range(3):
            write_png_case(root / site, f"c{i}", seed=i)
    write_png_case(root / "B", "wrongsize", mask_size=(10, 10))
    cfg = {**tiny_config(rounds=1), "data": {"source": "folder", "root": str(root), "image_size": [8, 8]}}
    result = runner.invoke(app, ["run", str(_cfg(tmp_path, cfg)), "--out", str(tmp_path / "run")])
    assert result.exit_code == FAILED and "wrongsize" in _flat(result.output), result.output
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
