"""What the entry points (train.py, evaluate.py) do with a user's mistake: one `error:` line on
stderr and an exit status, never a traceback. Exit 2 for configuration errors (a key, a value,
a path in the config or on the command line), 1 for data errors (a file that cannot be used)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

from .config import ConfigError
from .data.errors import DataError

T = TypeVar("T")
CONFIG_ERROR_EXIT = 2
DATA_ERROR_EXIT = 1


def user_errors_exit(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap an entry point: ConfigError -> exit 2, DataError -> exit 1, each as `error: ...`."""
    @functools.wraps(fn)
    def run(*args, **kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(CONFIG_ERROR_EXIT) from None
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(DATA_ERROR_EXIT) from None
    return run
