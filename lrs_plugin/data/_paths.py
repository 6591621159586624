"""Where lrs-plugin keeps fetched data by default.

Resolution order for the cache home: the ``LRS_PLUGIN_HOME`` environment variable, then
``$XDG_CACHE_HOME/lrs_plugin``, then ``~/.cache/lrs_plugin``. Each dataset lives in its own sub-folder
(``lrs_vqa/``, ``mmerealworld_rs/``). Nothing here creates folders: callers do, when they write.

It also holds the one rule for image paths read from a dataset's rows (:func:`require_inside_root`): every data
module that joins a row's ``image`` to its root checks it here, so the rule is written once.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from lrs_plugin.errors import DatasetSchemaError

__all__ = ["cache_home", "default_dataset_root", "outside_root_reason", "require_inside_root"]


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


def outside_root_reason(value: str) -> str | None:
    r"""Say why a row's relative path could leave (or does not name anything inside) the dataset root.

    The check is lexical: the path is judged as written, the disk is not consulted. Refused are the empty path, a
    NUL character, an absolute path (``/etc/passwd``, ``C:\x``, ``\\server\share``) and any ``..``
    component, with ``/`` and ``\`` both read as separators (``a/../b`` is refused too: with ``a`` a symlink, the
    OS would resolve ``..`` from the link's target). Symlinks inside the root that point elsewhere are followed,
    not refused: linking images stored on another disk into the root is a legitimate layout, and who can write
    links into the root can also replace the files themselves.

    Args:
        value: The path as written in the row.

    Returns:
        ``None`` when the path stays inside the root, else the reason in a few words.
    """
    if not value.strip():
        return "it is empty"
    if "\x00" in value:
        return "it contains a NUL character"
    posix, windows = PurePosixPath(value), PureWindowsPath(value)
    if windows.drive:
        return f"it starts with the drive or share {windows.drive!r}"
    if posix.is_absolute() or windows.root:
        return "it is absolute"
    if ".." in posix.parts or ".." in windows.parts:
        return "it climbs out with '..'"
    return None


def require_inside_root(value: str, *, where: str, field: str = "image") -> str:
    """Return ``value`` unchanged when :func:`outside_root_reason` accepts it, else raise.

    Args:
        value: The path as written in the row.
        where: The file and line of the row, for the message (``"q.jsonl, line 3"``).
        field: The row's field holding the path.

    Raises:
        DatasetSchemaError: The path is empty, absolute or climbs out with ``..``; names ``where``, the field, the
            value and what is valid.
    """
    reason = outside_root_reason(value)
    if reason is not None:
        raise DatasetSchemaError(
            f"{where}: field {field!r} must be a relative path inside the dataset root, got {value!r} ({reason})"
        )
    return value
