"""Loading REFER `refs(<split_by>).p` pickles without executing anything.

A pickle can name any importable callable (a "global") and make the loader call it, so a plain
`pickle.load` on a downloaded file runs arbitrary code. The REFER refs files hold only plain
containers and scalars (list, dict, tuple, str, int, float, bool, None), which pickle encodes
with opcodes that need no global. The unpickler below therefore refuses every global.

Note: Python 3 pickles `bytes`, `set` and `frozenset` at protocol 2 through globals
(`_codecs.encode`, `builtins.set`), so such files are refused too; the REFER files contain none.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from .errors import DataError, Problem


class _RefusingUnpickler(pickle.Unpickler):
    """An Unpickler whose every global lookup (GLOBAL, STACK_GLOBAL, INST, EXT*) is refused."""

    def __init__(self, file: io.BufferedIOBase, path: str) -> None:
        # Python 2 `str` (BINSTRING) arrives as bytes; decode it as UTF-8 text.
        super().__init__(file, encoding="utf-8", errors="strict")
        self._path = path

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        raise DataError(
            Problem(self._path, "pickle", f"refused global {module}.{name}: only plain containers and scalars are allowed")
        )

    def persistent_load(self, pid):  # noqa: D401 - pickle API
        raise DataError(Problem(self._path, "pickle", "refused persistent id: only plain containers and scalars are allowed"))


def load_refs_pickle(path: str | Path) -> list:
    """Read a REFER refs pickle. Returns the list of ref dicts (plain Python objects only).

    Raises DataError naming the file when it cannot be read, is not a pickle, is truncated,
    names any global (e.g. `posix.system`), or does not hold a list.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(Problem(str(path), "-", f"cannot read: {e.strerror or e}")) from None
    try:
        obj = _RefusingUnpickler(io.BytesIO(data), str(path)).load()
    except DataError:
        raise
    except RecursionError:
        raise DataError(Problem(str(path), "pickle", "nesting too deep")) from None
    except Exception as e:  # UnpicklingError, EOFError, ValueError, UnicodeDecodeError, ...
        reason = "truncated pickle" if isinstance(e, EOFError) else f"not a readable pickle ({type(e).__name__}: {e})"
        raise DataError(Problem(str(path), "pickle", reason)) from None
    if not isinstance(obj, list):
        raise DataError(Problem(str(path), "pickle", f"expected a list of refs, got {type(obj).__name__}"))
    return obj
