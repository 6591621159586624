"""Where lrs-plugin keeps fetched data by default.

Resolution order for the cache home: the ``LRS_PLUGIN_HOME`` environment variable, then
``$XDG_CACHE_HOME/lrs_plugin``, then ``~/.cache/lrs_plugin``. Each dataset lives in its own sub-folder
(``lrs_vqa/``, ``mmerealworld_rs/``). Nothing here creates folders: callers do, when they write.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_home", "default_dataset_root"]


def cache_home() -> Path:
    """Return the root folder of lrs-plugin's data cache (not created)."""
    env = os.environ.get("LRS_PLUGIN_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lrs_plugin"


def default_dataset_root(name: str) -> Path:
    """Return the default folder of dataset ``name`` inside :func:`cache_home` (not created)."""
    return cache_home() / name
