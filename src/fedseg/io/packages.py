"""Optional packages and the versions a run runs with.

fedseg's base install is what a hospital SuperNode needs; two extras add what only some machines
use: ``[report]`` (matplotlib: the report's plots, prediction overlays) and ``[sim]`` (Ray, through
``flwr[simulation]``: ``--engine flower-sim``). Code that needs one imports it with :func:`require`
inside the function that uses it, so a missing extra is a one-line error naming the extra, never
an import failure of the package. :func:`package_versions` is what ``run_info.json`` records and
what a site reports to the server in the Flower version handshake.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
from importlib import metadata
from types import ModuleType

from fedseg import __version__

__all__ = ["MissingExtraError", "require", "check_extra", "package_versions", "VERSIONED", "EXTRAS"]

EXTRAS: dict[str, str] = {"matplotlib": "report", "ray": "sim"}
"""Optional module -> the fedseg extra that installs it."""

VERSIONED: tuple[str, ...] = ("fedseg", "torch", "monai", "flwr")
"""The distributions whose versions a run records and the Flower handshake compares."""


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def require(module: str, *, what: str) -> ModuleType:
    """Import an optional module, or raise an error naming the extra that installs it.

    Args:
        module: a key of :data:`EXTRAS` (``matplotlib`` or ``ray``).
        what: what needs it, for the message (e.g. ``"the report's plots"``).

    Raises:
        MissingExtraError: the module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(_message(module, what)) from exc


def check_extra(module: str, *, what: str) -> None:
    """Like :func:`require`, without importing the module (Ray takes seconds to import).

    Raises:
        MissingExtraError: the module is not installed.
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or sys.modules[module] set to None
        found = False
    if not found:
        raise MissingExtraError(_message(module, what))


def _message(module: str, what: str) -> str:
    extra = EXTRAS[module]
    return (f"{what} needs {module!r}, which is not installed: install fedseg with the [{extra}] extra "
            f"(pip install 'fedseg[{extra}]', or -e '.[{extra}]' from a checkout); docs/install.md")


def package_versions() -> dict[str, str]:
    """The installed versions of :data:`VERSIONED` (``"not installed"`` where one is missing) and Python's."""
    out: dict[str, str] = {"fedseg": __version__}  # the source that runs, editable install or not
    for name in VERSIONED[1:]:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out
