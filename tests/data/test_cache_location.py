"""The preprocessed-case cache (patient-derived arrays) defaults to the run's own folder, else the
user's cache folder, never the current directory (issue 16 item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from fake_datasets import write_png_site
from fedseg.config import config_from_dict
from fedseg.data.cache import RUN_CACHE, default_cache_dir, with_run_cache
from fedseg.runtime.sim import run_inprocess


def test_default_is_the_user_cache_never_the_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FEDSEG_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "fedseg"
    monkeypatch.setenv("FEDSEG_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"


def test_a_run_caches_under_its_own_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FEDSEG_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    for site in ("a", "b"):
        write_png_site(tmp_path / "data" / site, 4)
    raw = tiny_config("fedavg", rounds=1)
    raw["data"] = {"source": "folder", "root": str(tmp_path / "data"), "image_size": [16, 16],
                   "split": {"train": 0.5, "val": 0.25, "test": 0.25}}
    cfg = config_from_dict(raw)
    run_inprocess(cfg, tmp_path / "run", write_report=False)
    assert any((tmp_path / "run" / RUN_CACHE).rglob("*.npy"))
    assert not (tmp_path / ".fedseg_cache").exists() and not (tmp_path / "xdg").exists()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["cache_dir"] is None  # not saved
    # an explicit data.cache_dir (or $FEDSEG_CACHE_DIR) is kept
    given = cfg.data.model_copy(update={"cache_dir": tmp_path / "shared"})
    assert with_run_cache(given, tmp_path / "run").cache_dir == tmp_path / "shared"
    monkeypatch.setenv("FEDSEG_CACHE_DIR", str(tmp_path / "env"))
    assert with_run_cache(cfg.data, tmp_path / "run").cache_dir is None
