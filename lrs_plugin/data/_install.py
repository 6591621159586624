"""The rules every data module follows for an installed dataset root: its completion marker, its lock, how it is found.

* **Marker.** ``<root>/.<dataset>_complete.json`` (:func:`marker_name`) is written last, atomically (a temporary file,
  then a rename; :func:`write_marker`). A root is complete for a revision when the marker is a JSON object whose
  ``"revision"`` is that revision (:func:`marker_revision`); its other keys are the dataset's own record.
* **Lock.** An install holds one lock file inside the root from start to end (:func:`install_lock`, over
  :func:`lrs_plugin.data._lock.exclusive_lock`); a second install of the same root says it waits, waits, and then
  reads the marker again (the first may have finished the job).
* **Finding a root.** The root given, else the dataset's environment variable (:func:`requested_root`), else the
  default root (:func:`lrs_plugin.data._paths.default_dataset_root`) when its marker is there.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lrs_plugin.data._lock import exclusive_lock

__all__ = ["install_lock", "marker_name", "marker_revision", "requested_root", "say", "write_marker"]


def marker_name(dataset: str) -> str:
    """The completion marker's file name for ``dataset`` (``"lrs_vqa"`` -> ``.lrs_vqa_complete.json``)."""
    return f".{dataset}_complete.json"


def marker_revision(root: Path, name: str) -> str | None:
    """The revision recorded by the marker ``root / name``, or ``None`` (no marker, unreadable, not an object)."""
    try:
        marker = json.loads((root / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker.get("revision") if isinstance(marker, dict) else None


def write_marker(root: Path, name: str, marker: Mapping[str, Any]) -> None:
    """Write the marker ``root / name`` atomically (indented JSON, sorted keys); call it last."""
    path = root / name
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@contextmanager
def install_lock(root: Path, lock_name: str, say: Callable[[str], None] | None = None) -> Iterator[int | None]:
    """Create ``root`` and hold its lock file ``root / lock_name`` for the block.

    Args:
        root: The dataset root.
        lock_name: The dataset's lock file name (kept on disk, see :mod:`lrs_plugin.data._lock`).
        say: Told once, before waiting, that another install of ``root`` holds the lock (names the lock file).

    Yields:
        The locked descriptor on POSIX (pass it to a child to extend the lock to its lifetime), else ``None``.
    """
    root.mkdir(parents=True, exist_ok=True)
    path = root / lock_name

    def waiting() -> None:
        if say is not None:
            say(f"waiting for another fetch of {root} to finish (lock {path})")

    with exclusive_lock(path, on_wait=waiting) as fd:
        yield fd


def requested_root(root: str | Path | None, env: str) -> tuple[str | Path | None, str]:
    """The root asked for and where it came from: ``(root, "the given root")``, else ``($env or None, "$env")``."""
    if root is not None:
        return root, "the given root"
    return os.environ.get(env) or None, f"${env}"


def say(dataset: str, message: str) -> None:
    """One progress line on stderr, prefixed with ``[dataset]``."""
    print(f"[{dataset}] {message}", file=sys.stderr, flush=True)
