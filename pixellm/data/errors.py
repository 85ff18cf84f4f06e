"""Data problems: reported with file, record and reason, never as a bare traceback."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One bad record. `where` is a record index ("record 12"), a line ("line 7") or a key path.
    A warning is a record that is usable but probably not what was meant (an empty answer, an
    empty mask): reported, never skipped."""

    file: str
    where: str
    reason: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{'warning: ' if self.warning else ''}{self.file}: {self.where}: {self.reason}"


class DataError(ValueError):
    """A data file that cannot be used; the message names file, record and reason."""

    def __init__(self, problem: Problem | str) -> None:
        super().__init__(str(problem))
        self.problem = problem if isinstance(problem, Problem) else None
