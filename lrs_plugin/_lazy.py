"""Lazy re-exports for the subpackages: ``lrs_plugin.scoring.summarize_lrs`` imports its module on first use only.

Each subpackage's ``__init__`` names, for every public name, the submodule that defines it; nothing is imported until
a name is looked up, so ``import lrs_plugin.scoring`` (and ``import lrs_plugin``) stays cheap and free of cycles.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` that resolve ``exports`` (``name -> submodule``) on first use.

    Args:
        package: The package's dotted name (its ``__name__``).
        exports: Public name -> name of the submodule of ``package`` that defines it.

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package's namespace.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(_submodules(package)))

    return __getattr__, __dir__


def _submodules(package: str) -> list[str]:
    import pkgutil

    return [m.name for m in pkgutil.iter_modules(importlib.import_module(package).__path__)]
