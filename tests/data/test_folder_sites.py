"""Nothing under a data root is skipped silently: folders that are not sites, wrongly cased
``Images/``, symlink loops and nested folders are reported by ``fedseg data check`` and refuse (or
warn in) a run before any training."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from fake_datasets import write_png_case
from fedseg.cli.main import app
from fedseg.config import ConfigError, DataConfig, config_from_dict
from fedseg.data.base import DataError
from fedseg.data.folder import load_folder_federation
from fedseg.data.layout import index_dataset
from fedseg.data.scan import scan_root

runner = CliRunner()


def _root(tmp_path: Path) -> Path:
    """Site A (valid), B (images in Images/), C (no images/ at all), a README and a hidden folder."""
    root = tmp_path / "root"
    for site in ("A", "B"):
        for i in range(6):
            write_png_case(root / site, f"c{i}", seed=i)
    (root / "B" / "images").rename(root / "B" / "Images")
    (root / "C" / "scans").mkdir(parents=True)
    (root / "D").mkdir()  # empty: a warning
    (root / ".cache").mkdir()
    (root / "README.txt").write_text("x")
    return root


def _problems(root: Path, **kw: object) -> dict[str, tuple[str, str]]:
    _, _, problems = index_dataset(DataConfig(source="folder", root=root, **kw))  # type: ignore[arg-type]
    return {Path(p.path).name: (p.severity, p.message) for p in problems}


def test_folders_that_are_not_sites_are_errors_when_sites_are_discovered(tmp_path: Path) -> None:
    root = _root(tmp_path)
    sites, problems = scan_root(root)
    assert sites == ["A"]
    found = {Path(p.path).name: (p.severity, p.message) for p in problems}
    assert set(found) == {"B", "C", "D"}
    assert found["D"] == ("warning", "empty folder: not a site, ignored")
    assert found["B"][0] == "error" and "'Images/'" in found["B"][1] and "lower case" in found["B"][1]
    assert found["C"] == ("error", "not a site: no images/ folder (a site is <site>/images/ with <site>/masks/)")
    with pytest.raises(DataError) as info:
        load_folder_federation(DataConfig(source="folder", root=root), seed=0)
    assert f"{root / 'B'}: not a site" in str(info.value) and f"{root / 'C'}: not a site" in str(info.value)


def test_listed_sites_make_the_other_folders_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _root(tmp_path)
    found = _problems(root, sites=["A"])
    assert {k: v[0] for k, v in found.items()} == {"B": "warning", "C": "warning", "D": "warning"}
    assert found["B"][1].endswith("not in data.sites, so ignored") and found["C"][1].endswith("so ignored")
    with caplog.at_level(logging.WARNING, logger="fedseg.data.folder"):
        data = load_folder_federation(DataConfig(source="folder", root=root, sites=["A"]), seed=0)
    assert [s.name for s in data.sites] == ["A"]
    assert f"{root / 'B'}: not a site" in caplog.text
    # a listed site with Images/ is an error that says how to fix it
    found = _problems(root, sites=["A", "B"])
    assert found["B"] == ("error", "no images/ folder (found 'Images/': the name must be lower case)")


def test_symlink_loops_and_nested_folders_are_warnings_naming_the_path(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for i in range(6):
        write_png_case(root / "A", f"c{i}", seed=i)
    (root / "loop").symlink_to(root / "loop")
    (root / "gone").symlink_to(root / "missing")
    (root / "A" / "images" / "self.png").symlink_to(root / "A" / "images" / "self.png")
    (root / "A" / "images" / "more").mkdir()
    found = _problems(root)
    assert found["loop"] == ("warning", "symlink loop: skipped")
    assert found["gone"][0] == "warning" and found["gone"][1].startswith("broken symlink")
    assert found["self.png"] == ("warning", "symlink loop: skipped")
    assert found["images"] == ("warning", "subfolder(s) ignored (cases must be files directly in images/): more")
    assert [s.name for s in load_folder_federation(DataConfig(source="folder", root=root), seed=0).sites] == ["A"]


def test_a_root_that_is_itself_a_site_folder_says_so(tmp_path: Path) -> None:
    for i in range(3):
        write_png_case(tmp_path / "S", f"c{i}", seed=i)
    _, _, problems = index_dataset(DataConfig(source="folder", root=tmp_path / "S"))
    assert any("is a site folder itself" in p.message and "data.sites: [S]" in p.message for p in problems)


def test_data_check_reports_them_and_exits_1(tmp_path: Path) -> None:
    root = _root(tmp_path)
    result = runner.invoke(app, ["data", "check", str(root)])
    flat = re.sub(r"[\s│┃|]+", " ", result.output)
    assert result.exit_code == 1, result.output
    assert "no errors" not in result.output and "2 error(s), 1 warning(s)" in result.output
    assert "'Images/'" in flat and "no images/ folder" in flat


def test_run_refuses_before_training(tmp_path: Path) -> None:
    root = _root(tmp_path)
    cfg = tiny_config(rounds=1, data={"source": "folder", "root": str(root)})
    cfg["data"].pop("synthetic")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output  # a data error (fedseg -h: exit codes)
    assert "not a site" in result.output and not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("sites", [[], ["A", "A"], ["../A"], ["a/b"], [".."], [" "]])
def test_site_names_are_plain_distinct_folder_names(sites: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"data\.sites"):
        config_from_dict({"data": {"source": "folder", "root": "/r", "sites": sites}})


def test_eval_on_a_data_root_refuses_folders_that_are_not_sites(tmp_path: Path) -> None:
    from fedseg.runtime.inference import EvalError, evaluate_run
    from fedseg.runtime.sim import run_inprocess

    run_inprocess(config_from_dict(tiny_config(rounds=1)), tmp_path / "run", write_report=False)
    with pytest.raises(EvalError, match=r"--data .*root: .*B: not a site: its images are in 'Images/'"):
        evaluate_run(tmp_path / "run", data=_root(tmp_path))
