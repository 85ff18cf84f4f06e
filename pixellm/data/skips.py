"""Records that could not be used: never a crash, never silent.

A training or evaluation run skips a bad record (a line that does not parse, a mask that does not
decode, an unreadable image, a question that writes a codebook token) and goes on. Each skipped
record is written once to `<run>/skipped.jsonl` as {"stage", "source", "file", "where", "reason"}
(stage: "load" when the annotation file was read, "train"/"eval" when the record was used), and
the log gives how many records and skip events there were.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .errors import DataError, Problem

log = logging.getLogger("pixellm.data")
SKIPPED_FILE = "skipped.jsonl"


def skip_entry(problem: Problem | DataError | str, *, source: str, stage: str, question_id: str = "") -> dict:
    """One skipped.jsonl object from a Problem, a DataError or a bare reason."""
    if isinstance(problem, DataError):
        problem = problem.problem or str(problem)
    if isinstance(problem, str):
        problem = Problem("", f"question {question_id}" if question_id else "", problem)
    return {"stage": stage, "source": source, "file": problem.file, "where": problem.where,
            "reason": problem.reason}


class SkipLog:
    """Appends each skipped record once to `path` (None: keep them in memory only, until
    `write_to`) and counts skip events (a bad training record is skipped every time the sampler
    draws it)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.seen: set[tuple] = set()
        self.entries: list[dict] = []
        self.events = 0

    def write_to(self, path: Path) -> None:
        """From now on append to `path`, starting with the records skipped so far."""
        self.path = path
        self._append(self.entries)

    def _append(self, entries: list[dict]) -> None:
        if entries and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.writelines(json.dumps(e) + "\n" for e in entries)

    def add(self, entries: list[dict]) -> int:
        """Record skip events; returns how many were new records."""
        self.events += len(entries)
        new = []
        for e in entries:
            key = (e["source"], e["file"], e["where"], e["reason"])
            if key not in self.seen:
                self.seen.add(key)
                new.append(e)
        self.entries += new
        self._append(new)
        return len(new)

    def summary(self) -> str:
        where = f" (each listed with its reason in {self.path})" if self.path is not None else ""
        return f"{len(self.seen)} unusable records skipped, {self.events} skip events{where}"
