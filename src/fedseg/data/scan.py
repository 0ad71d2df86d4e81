"""The folders directly under a data root: which are sites, and a problem for every other one.

Nothing under a data root is skipped silently: a folder that is not a site (no ``images/``, or
``Images/`` in the wrong case) is an error when the sites are discovered and a warning when
``data.sites`` lists them; a symlink that cannot be followed is a warning naming it. Names only
are looked at (nothing is decoded).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

from fedseg.io import Problem

__all__ = ["scan_root", "broken_link", "case_variant"]


def broken_link(path: Path) -> str | None:
    """Why the symlink ``path`` cannot be followed (a loop, or a missing target); None when it can."""
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 raises this for a loop
        return "symlink loop"
    except OSError as exc:
        return "symlink loop" if exc.errno == errno.ELOOP else f"broken symlink ({exc.strerror or exc})"
    return None


def case_variant(folder: Path, name: str) -> str | None:
    """A subfolder of ``folder`` whose name is ``name`` in other letter case (``Images``), if any."""
    try:
        return next((p.name for p in sorted(folder.iterdir()) if p.name.lower() == name and p.name != name
                     and p.is_dir()), None)
    except OSError:
        return None


def _not_a_site(folder: Path) -> str:
    """Why ``folder`` (a subfolder of the data root) is not a site, and the fix."""
    variant = case_variant(folder, "images")
    if variant is not None:
        return (f"not a site: its images are in '{variant}/', but the folder must be named 'images/' (lower case); "
                f"rename it (and masks/ likewise)")
    return "not a site: no images/ folder (a site is <site>/images/ with <site>/masks/)"


def _empty(folder: Path) -> bool:
    try:
        return next(folder.iterdir(), None) is None
    except OSError:
        return False


def scan_root(root: Path, listed: Sequence[str] | None = None) -> tuple[list[str], list[Problem]]:
    """The site folders of a data root, and a problem for every other folder in it.

    A site is a subfolder with an ``images/`` folder. Hidden entries (``.name``) and plain files
    (licences, READMEs) are ignored, an empty folder is a warning. Every other subfolder is
    reported, never silently skipped: a folder without ``images/`` (with the fix when it has ``Images/``) is an **error** when the
    sites are discovered (``listed`` None), since the run would otherwise train without it, and a
    **warning** when ``data.sites`` lists the sites to use and the folder is not among them. A
    symlink that cannot be followed (a loop, a missing target) is a warning naming it.

    Args:
        root: the data root.
        listed: ``data.sites`` (None: every site under ``root`` is used).

    Returns:
        The site folder names, sorted, and the problems found.
    """
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:
        return [], [Problem(f"data.root {root}", f"cannot list the folder ({exc.strerror or exc})")]
    chosen = set(listed) if listed is not None else None
    sites: list[str] = []
    problems: list[Problem] = []
    for path in entries:
        if path.name.startswith("."):
            continue
        broken = broken_link(path)
        if broken is not None:
            problems.append(Problem(str(path), f"{broken}: skipped", path.name, "warning"))
            continue
        if not path.is_dir():
            continue
        if (path / "images").is_dir():
            sites.append(path.name)
        elif _empty(path):  # holds no data, so nothing is lost by skipping it
            problems.append(Problem(str(path), "empty folder: not a site, ignored", path.name, "warning"))
        elif chosen is None:
            problems.append(Problem(str(path), _not_a_site(path), path.name))
        elif path.name not in chosen:
            problems.append(Problem(str(path), f"{_not_a_site(path)}; not in data.sites, so ignored", path.name,
                                    "warning"))
    if chosen is None and {"images", "masks"} & {p.name for p in entries}:
        problems.append(Problem(f"data.root {root}", "is a site folder itself (it holds images/): set data.root to "
                                                     f"its parent and data.sites: [{root.name}]"))
    return sites, problems
