"""The only place lrs-plugin talks to the Hugging Face Hub.

Every Hub call goes through the two functions below so that tests can replace them (``monkeypatch.setattr``) with
local copies of generated fixtures; the production code path above them stays exactly the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["RemoteFile", "snapshot_download", "list_remote_files"]


@dataclass(frozen=True)
class RemoteFile:
    """One file of a Hub repository at a revision.

    Attributes:
        path: Path inside the repository (``"LRS_VQA.7z.001"``).
        size: Size in bytes, or ``None`` when the Hub did not say.
        sha256: Hex sha256 of the content (from the LFS pointer), or ``None`` when unknown.
    """

    path: str
    size: int | None = None
    sha256: str | None = None


def snapshot_download(
    repo_id: str,
    *,
    revision: str,
    local_dir: Path,
    allow_patterns: list[str] | None = None,
    repo_type: str = "dataset",
) -> Path:
    """Download (or resume) the files of ``repo_id`` matching ``allow_patterns`` into ``local_dir``.

    Thin wrapper over :func:`huggingface_hub.snapshot_download` with real files (no symlinks into the HF cache).

    Returns:
        The folder holding the downloaded files (``local_dir``).
    """
    import huggingface_hub

    path = huggingface_hub.snapshot_download(
        repo_id=repo_id,
        repo_type=repo_type,
        revision=revision,
        local_dir=str(local_dir),
        allow_patterns=allow_patterns,
    )
    return Path(path)


def list_remote_files(repo_id: str, *, revision: str, repo_type: str = "dataset") -> tuple[str, list[RemoteFile]]:
    """List the files of ``repo_id`` at ``revision`` with their sizes and LFS sha256 where the Hub knows them.

    Returns:
        ``(resolved_commit_sha, files)``.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    info = api.repo_info(repo_id, repo_type=repo_type, revision=revision, files_metadata=True)
    files = []
    for sibling in info.siblings or []:
        lfs = getattr(sibling, "lfs", None)
        sha = getattr(lfs, "sha256", None) if lfs is not None else None
        files.append(RemoteFile(path=sibling.rfilename, size=getattr(sibling, "size", None), sha256=sha))
    return str(info.sha), files
