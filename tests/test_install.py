"""Installing fedseg: the Makefile's torch source, the constraints file, and the extras a hospital
site does without (docs/install.md)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "fedseg"
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0"


def _dry_run(env: dict[str, str]) -> str:
    """``make -n -B demo`` (every step printed, nothing run) with ``env`` as pip's configuration."""
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    done = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), "demo", f"PYTHON={sys.executable}"],
                          env={**clean, **env}, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def _torch_line(out: str) -> str:
    lines = [line for line in out.splitlines() if "torch==" in line]
    assert len(lines) == 1, out
    return lines[0]


@pytest.mark.slow
def test_without_a_local_wheel_source_torch_comes_from_the_cpu_index() -> None:
    out = _dry_run({"PIP_CONFIG_FILE": os.devnull})  # no pip.conf, no PIP_FIND_LINKS: a fresh machine
    assert _torch_line(out).endswith(CPU_INDEX), out
    assert "-c constraints.txt" in out and '-e ".[dev]"' in out


@pytest.mark.slow
def test_a_configured_local_wheel_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    out = _dry_run({"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": str(tmp_path)})
    assert _torch_line(out).endswith(f"--find-links {tmp_path} torch==2.13.0"), out
    conf = tmp_path / "pip.conf"  # the same folder named in a pip.conf (this CI machine's way)
    conf.write_text(f"[global]\nfind-links = file://{tmp_path}\n")
    user = {"PIP_CONFIG_FILE": str(conf), "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}  # no ~/.config/pip
    assert _torch_line(_dry_run(user)).endswith(f"--find-links {tmp_path} torch==2.13.0")
    other = tmp_path / "other"  # a wheel folder without this torch: the CPU index
    other.mkdir()
    assert _torch_line(_dry_run({"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": str(other)})).endswith(CPU_INDEX)


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not a name==version pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_constraints_pin_the_installed_versions() -> None:
    pins = _pins()
    assert "fedseg" not in pins
    for name in ("torch", "monai", "flwr", "numpy", "pydantic", "typer", "matplotlib", "ray"):
        assert pins[name] == metadata.version(name).split("+")[0], name
    assert "+" not in pins["torch"]  # any build (CPU or CUDA) of the pinned version
    assert pins["flwr"].startswith("1.42.")


def test_base_dependencies_leave_ray_and_matplotlib_to_extras() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    assert "matplotlib" not in base and "ray" not in base and "simulation" not in base
    assert "flwr>=1.42,<1.43" in project["dependencies"]
    extras = project["optional-dependencies"]
    assert extras["report"] == ["matplotlib>=3.8"] and extras["sim"] == ["flwr[simulation]>=1.42,<1.43"]
    assert "fedseg[sim,report,export,tracking]" in extras["dev"]
    # flwr itself brings Ray only with its [simulation] extra
    ray = [r for r in metadata.requires("flwr") or [] if r.startswith("ray")]
    assert ray and all("extra ==" in r for r in ray)


def _top_level_imports(path: Path) -> list[str]:
    """Modules imported at module level (not inside a function or ``if TYPE_CHECKING``)."""
    found = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def test_matplotlib_and_ray_are_imported_lazily_everywhere() -> None:
    eager = [f"{p.relative_to(SRC)}: {m}" for p in sorted(SRC.rglob("*.py")) for m in _top_level_imports(p)
             if m.split(".")[0] in ("matplotlib", "ray")]
    assert not eager


BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("matplotlib", "ray"):
            raise ImportError(f"No module named {name!r} (blocked)")
sys.meta_path.insert(0, Block())
"""


@pytest.mark.slow
def test_a_site_runs_without_the_extras_and_a_missing_extra_is_named() -> None:
    code = BLOCK + """
import fedseg.runtime.flower.client_app, fedseg.runtime.flower.server_app, fedseg.cli.main
assert not [m for m in sys.modules if m.split(".")[0] in ("matplotlib", "ray")]
from fedseg.io.packages import MissingExtraError, check_extra
from fedseg.report.plots import _mpl
for call, extra in ((_mpl, "[report]"), (lambda: check_extra("ray", what="x"), "[sim]")):
    try:
        call()
    except MissingExtraError as exc:
        assert f"pip install 'fedseg{extra}'" in str(exc), exc
    else:
        raise SystemExit("no error")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_the_client_side_imports_no_ray_even_when_installed() -> None:
    code = ("import sys, fedseg.runtime.flower.client_app; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'matplotlib'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    # MONAI itself imports matplotlib when it is installed (monai.utils.jupyter_utils); fedseg never needs it
    assert "ray" not in done.stdout, done.stdout
