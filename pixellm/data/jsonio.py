"""Reading annotation JSON with errors that name the file and position (one home for it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import DataError, Problem


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; DataError with line/column on bad syntax, or why it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(Problem(str(path), f"line {e.lineno} column {e.colno}", f"invalid JSON: {e.msg}")) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(Problem(str(path), "-", f"cannot read: {e}")) from None


def read_json_list(path: str | Path) -> list:
    """A JSON file that must hold a list of records."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(Problem(str(path), "-", f"expected a JSON list of records, got {type(data).__name__}"))
    return data
