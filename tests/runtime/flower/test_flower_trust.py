"""A site's check of what it runs (fedseg.runtime.flower.trust), on real FABs built by Flower's own
builder: fedseg's signed app passes; a foreign app, a fedseg-looking app carrying code, an unsigned,
re-signed or altered configuration are refused -- and the worker refuses before installing."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from flwr.cli.build import build_fab_from_disk

from conftest import tiny_config
from flower_testlib import write_foreign_app
from fedseg.config import config_from_dict
from fedseg.runtime.flower.certs import make_app_signing_key
from fedseg.runtime.flower.keys import RunKey
from fedseg.runtime.flower.project import write_app
from fedseg.runtime.flower.trust import AppRefused, check_fab, check_signature, load_trusted_keys
from fedseg.runtime.flower.worker import _check_app


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return make_app_signing_key(tmp_path / "keys")


def _fedseg_app(tmp_path: Path, sign_key: Path | None, name: str = "app") -> tuple[bytes, dict[str, object]]:
    """The FAB ``flwr run`` would send, and the run config a site receives."""
    path = write_app(tmp_path / name, config_from_dict(tiny_config("fedavg")), tmp_path / "run", sign_key=sign_key)
    import tomllib

    run_config = tomllib.loads(path.read_text())["tool"]["flwr"]["app"]["config"]
    return build_fab_from_disk(path.parent), run_config


def test_the_operators_signed_fedseg_app_is_accepted(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    fab, run_config = _fedseg_app(tmp_path, keys[0])
    assert check_fab(fab)["tool"]["flwr"]["app"]["publisher"] == "fedseg"
    check_signature(run_config, load_trusted_keys([keys[1]]))


def test_a_foreign_app_is_refused_naming_its_code(tmp_path: Path) -> None:
    fab = build_fab_from_disk(write_foreign_app(tmp_path / "mole"))
    with pytest.raises(AppRefused, match="mole_app.py"):
        check_fab(fab)


def test_a_fedseg_named_app_with_code_or_other_components_is_refused(tmp_path: Path) -> None:
    fab, _ = _fedseg_app(tmp_path, None)
    # a module that would shadow the installed fedseg when the app's folder is put on sys.path
    shadow = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(fab)) as src, zipfile.ZipFile(shadow, "w") as dst:
        for item in src.namelist():
            dst.writestr(item, src.read(item))
        dst.writestr("fedseg/runtime/flower/client_app.py", "app = None\n")
    with pytest.raises(AppRefused, match="fedseg/runtime/flower/client_app.py"):
        check_fab(shadow.getvalue())
    # fedseg's publisher and name, but its own components
    fab = build_fab_from_disk(write_foreign_app(tmp_path / "fake", publisher="fedseg", name="fedseg-app"))
    with pytest.raises(AppRefused):
        check_fab(fab)
    with pytest.raises(AppRefused, match="not a readable Flower app"):
        check_fab(b"not a zip")


def test_unsigned_resigned_or_altered_configurations_are_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    trusted = load_trusted_keys([keys[1]])
    _, unsigned = _fedseg_app(tmp_path, None, "unsigned")
    with pytest.raises(AppRefused, match="not signed"):
        check_signature(unsigned, trusted)
    other, _ = make_app_signing_key(tmp_path / "mole")
    _, foreign = _fedseg_app(tmp_path, other, "foreign")
    with pytest.raises(AppRefused, match="not valid for any"):
        check_signature(foreign, trusted)
    _, signed = _fedseg_app(tmp_path, keys[0], "signed")
    altered = {**signed, RunKey.CONFIG.value: str(signed[RunKey.CONFIG.value]).replace("rounds: 2", "rounds: 3")}
    assert altered != signed
    with pytest.raises(AppRefused, match="not valid for any"):
        check_signature(altered, trusted)
    # another run-dir at submission (flwr run --run-config) keeps the signature valid
    check_signature({**signed, RunKey.RUN_DIR.value: "/elsewhere"}, trusted)


def test_the_worker_checks_before_installing(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    fab = build_fab_from_disk(write_foreign_app(tmp_path / "mole"))
    run = SimpleNamespace(fab_id="mole/mole-app", fab_version="1.0.0")
    with pytest.raises(AppRefused):
        _check_app(run, SimpleNamespace(content=fab, hash_str="0" * 64), {}, ())
    good, run_config = _fedseg_app(tmp_path, keys[0])
    _check_app(run, SimpleNamespace(content=good, hash_str="1" * 64), run_config, load_trusted_keys([keys[1]]))
    with pytest.raises(AppRefused, match="not signed"):
        _check_app(run, SimpleNamespace(content=good, hash_str="1" * 64), {}, load_trusted_keys([keys[1]]))


def test_trusted_key_files_are_checked(tmp_path: Path) -> None:
    (tmp_path / "empty.pub").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no key"):
        load_trusted_keys([tmp_path / "empty.pub"])
    with pytest.raises(ValueError, match="missing.pub"):
        load_trusted_keys([tmp_path / "missing.pub"])
