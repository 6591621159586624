"""The sub-commands of ``lrs-plugin``, one module per group; :mod:`lrs_plugin.cli` is the dispatcher.

Each group module has ``add_parsers(sub)`` (its argparse sub-commands) and one ``run_<command>(args) -> int`` per
command. Imports stay inside the handlers, so building the parser loads no model code.
"""

from __future__ import annotations

from lrs_plugin.errors import ConfigError

__all__ = ["BENCHMARKS", "int_list"]

BENCHMARKS = ("lrs_vqa", "mmerealworld_rs")
"""Benchmarks ``fetch`` and ``score`` take."""


def int_list(value: str, name: str) -> tuple[int, ...]:
    """Comma-separated integers (brackets and spaces allowed), e.g. ``2,6,10,14``; ``name`` is the flag, for errors."""
    try:
        return tuple(int(v) for v in value.replace(" ", "").strip("[]()").split(",") if v)
    except ValueError:
        raise ConfigError(f"{name}={value!r} must be comma-separated integers, e.g. 2,6,10,14") from None
