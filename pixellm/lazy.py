"""Lazy package exports: a name is imported from its module on first use, so importing a
package (and so building the `pixellm` command line) loads no heavy library."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


def lazy_exports(package: str, namespace: dict, exports: dict[str, list[str]]) -> tuple[list[str], Callable]:
    """(`__all__`, `__getattr__`) for `package` whose `namespace` is its globals(): `exports`
    maps a submodule (relative, dotted) to the names it provides."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f".{where[name]}", package), name)
        namespace[name] = value  # later lookups skip this function
        return value

    return sorted(where), __getattr__
