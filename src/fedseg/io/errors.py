"""The data-problem vocabulary shared by :mod:`fedseg.io` and :mod:`fedseg.data`.

It lives at the bottom of the dependency graph (next to :mod:`fedseg.config`), so that the
file readers and the dataset layer raise the same exception; ``fedseg.data.base`` re-exports
:class:`DataError` for existing imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["DataError", "Problem", "format_problems"]


@dataclass(frozen=True)
class Problem:
    """One problem of a dataset, tied to the file or folder it was found in.

    Attributes:
        path: the file or folder (as given, not resolved), or a config key such as ``data.sites``.
        message: what is wrong, with the values found and what is allowed.
        site: the site the path belongs to ("" when none).
        severity: ``error`` (a run refuses to start) or ``warning`` (reported, not fatal).
    """

    path: str
    message: str
    site: str = ""
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def format_problems(problems: Sequence[Problem], header: str = "") -> str:
    """``header`` + ``N problem(s):`` + one ``  - path: message`` line per problem."""
    head = f"{header}: " if header else ""
    lines = "\n  - ".join(str(p) for p in problems)
    return f"{head}{len(problems)} problem(s):\n  - {lines}"


class DataError(ValueError):
    """A dataset problem; the message names the file or site and the problem.

    Attributes:
        problems: every problem found, when the error gathers several (``fedseg data check`` and
            the pre-training validation list them all at once). Empty for a single-message error.
    """

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems: list[Problem] = list(problems)

    @classmethod
    def at(cls, path: object, message: str) -> DataError:
        """An error about one file: message ``"<path>: <message>"``, one :class:`Problem`."""
        problem = Problem(str(path), message)
        return cls(str(problem), [problem])

    @classmethod
    def from_problems(cls, problems: Sequence[Problem], header: str = "") -> DataError:
        """One error listing every problem (its message has one line per problem)."""
        return cls(format_problems(problems, header), problems)
