"""Plumbing of :func:`lrs_plugin.data.lrs_vqa.fetch`: the volumes from the Hub or a local folder, the install steps.

Each step runs with the fetch lock held: list (and download) the volumes with their expected sizes and hashes, remove
the partial folders of dead fetches, move the extracted tree into place, write the completion marker.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from lrs_plugin.data import _hub, archive
from lrs_plugin.data._install import marker_revision, say, write_marker
from lrs_plugin.data.lrs_vqa import (
    _DATASET_NAME,
    ARCHIVE_BASE,
    LRS_VQA_REVISION,
    MARKER_NAME,
    NUM_PARTS,
    QUESTION_FILE,
    REPO_ID,
)
from lrs_plugin.errors import DatasetIntegrityError, DatasetNotFoundError

__all__ = [
    "fetch_volumes",
    "install_tree",
    "marker_revision_of",
    "remove_stale_partials",
    "say_if",
    "write_complete_marker",
]


def fetch_volumes(
    root: Path, revision: str, parts_dir: str | Path | None, progress: bool
) -> tuple[list[Path], str | None, dict[str, tuple[int | None, str | None]] | None]:
    """Return ``(volumes, resolved sha, expected sizes/hashes)``, downloading from the Hub unless ``parts_dir``."""
    if parts_dir is not None:
        volumes, expected = archive.find_local_volumes(parts_dir, ARCHIVE_BASE)
        return volumes, None, expected
    sha, files = _hub.list_remote_files(REPO_ID, revision=revision)
    expected = {f.path: (f.size, f.sha256) for f in files if _is_volume_name(f.path)}
    if not expected:
        raise DatasetNotFoundError(
            f"{REPO_ID} at revision {revision!r} ({sha}) lists no {ARCHIVE_BASE}.NNN volumes; "
            f"check the revision (default {LRS_VQA_REVISION!r})"
        )
    if len(expected) != NUM_PARTS:
        say_if(True, f"note: {REPO_ID}@{sha} lists {len(expected)} volumes (the release has {NUM_PARTS})")
    parts = root / "parts"
    say_if(progress, f"downloading {len(expected)} volumes of {REPO_ID}@{sha} into {parts}")
    _hub.snapshot_download(REPO_ID, revision=sha, local_dir=parts, allow_patterns=[f"{ARCHIVE_BASE}.*"])
    listing = f"as listed by {REPO_ID}@{sha}"
    return archive.find_volumes(parts, ARCHIVE_BASE, expected_count=len(expected), source=listing), sha, expected


def _is_volume_name(name: str) -> bool:
    prefix = ARCHIVE_BASE + "."
    return name.startswith(prefix) and len(name) == len(prefix) + 3 and name[len(prefix) :].isdigit()


def remove_stale_partials(root: Path) -> None:
    """Remove the ``.extract-partial-*`` folders of dead fetches. Call with the fetch lock held."""
    for stale in root.glob(archive.PARTIAL_PREFIX + "*"):
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()


def install_tree(tmp: Path, root: Path) -> None:
    """Move ``tmp/LRS_VQA`` to ``root/LRS_VQA`` (the old tree goes into ``tmp``, which is then removed)."""
    try:
        if not (tmp / QUESTION_FILE).is_file():
            found = sorted(p.name for p in tmp.iterdir())
            raise DatasetIntegrityError(
                f"the archive holds no {QUESTION_FILE} (top level: {', '.join(found) or 'nothing'})"
            )
        target = root / "LRS_VQA"
        if target.exists():
            os.replace(target, tmp / "LRS_VQA.old")
        os.replace(tmp / "LRS_VQA", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def marker_revision_of(root: Path) -> str | None:
    """The requested revision recorded by a completion marker, or ``None`` when ``root`` is not complete."""
    if not (root / QUESTION_FILE).is_file():
        return None
    return marker_revision(root, MARKER_NAME)


def write_complete_marker(
    root: Path,
    revision: str,
    sha: str | None,
    volumes: Sequence[Path],
    expected: dict[str, tuple[int | None, str | None]] | None,
    extractor: str,
) -> None:
    from lrs_plugin import __version__

    parts = [
        {"name": v.name, "size": v.stat().st_size, "sha256": (expected or {}).get(v.name, (None, None))[1]}
        for v in volumes
    ]
    marker = {
        "repo": REPO_ID,
        "revision": revision,
        "sha": sha,
        "parts": parts,
        "extractor": extractor,
        "completed_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "plugin_version": __version__,
    }
    write_marker(root, MARKER_NAME, marker)


def say_if(enabled: bool, message: str) -> None:
    if enabled:
        say(_DATASET_NAME, message)
