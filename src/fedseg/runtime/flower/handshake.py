"""The version handshake: each site reports its fedseg, torch, MONAI and flwr versions in its hello
reply, and the ServerApp refuses a federation whose sites run other versions than the server.

``flower.version_policy`` (docs/deployment.md, "Versions"):

* ``minor`` (default): fedseg and flwr identical, torch and MONAI the same major.minor (a patch
  release changes no numerics fedseg relies on; another minor release may change kernels and
  defaults, so two sites would train different models from one broadcast);
* ``exact``: all four identical;
* ``off``: never refuse (the versions are still recorded in ``run_info.json``).

A build label is ignored everywhere (``2.13.0+cpu`` equals ``2.13.0+cu126``): CPU and GPU sites
legitimately mix. A site that reports no versions (an older fedseg) reads as ``unknown``.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedseg.io.packages import VERSIONED
from fedseg.runtime.flower.executor import FlowerRunError

__all__ = ["VersionMismatchError", "check_versions", "POLICIES", "UNKNOWN"]

POLICIES = ("exact", "minor", "off")
UNKNOWN = "unknown"
_MINOR_ONLY = ("torch", "monai")
"""Compared by major.minor under the ``minor`` policy; the others always exactly."""


class VersionMismatchError(FlowerRunError):
    """A site runs other package versions than the server allows (``flower.version_policy``)."""


def _base(version: str) -> str:
    return version.split("+", 1)[0]


def _differs(name: str, site: str, server: str, policy: str) -> bool:
    if policy == "minor" and name in _MINOR_ONLY:
        return _base(site).split(".")[:2] != _base(server).split(".")[:2]
    return _base(site) != _base(server)


def _describe(versions: Mapping[str, str]) -> str:
    return ", ".join(f"{name} {versions.get(name, UNKNOWN)}" for name in VERSIONED)


def check_versions(sites: Mapping[str, Mapping[str, str]], server: Mapping[str, str], policy: str) -> None:
    """Refuse sites whose versions differ from the server's under ``policy``.

    Args:
        sites: site name -> the versions its hello reply reported (``{}``: none reported).
        server: the ServerApp's versions (:func:`fedseg.io.packages.package_versions`).
        policy: ``exact``, ``minor`` or ``off``.

    Raises:
        VersionMismatchError: naming every refused site, its versions, the server's and the policy.
        ValueError: an unknown policy.
    """
    if policy not in POLICIES:
        raise ValueError(f"flower.version_policy {policy!r}: allowed {', '.join(POLICIES)}")
    if policy == "off":
        return
    bad = []
    for site, versions in sorted(sites.items()):
        names = [n for n in VERSIONED if _differs(n, versions.get(n, UNKNOWN), server.get(n, UNKNOWN), policy)]
        if names:
            bad.append(f"- site {site!r} runs {_describe(versions)} (differs: {', '.join(names)})")
    if bad:
        rule = ("fedseg and flwr identical, torch and MONAI the same major.minor" if policy == "minor"
                else "every version identical")
        raise VersionMismatchError(
            f"{len(bad)} site(s) run other versions than the server ({_describe(server)}), so no training "
            f"started (flower.version_policy {policy}: {rule}):\n" + "\n".join(bad)
            + "\nInstall the same versions on every machine (pip install -c constraints.txt, or the same site "
            "image; docs/install.md), or set flower.version_policy: off to accept them"
        )
