"""Multi-volume 7z archives: find and check the volumes, read them as one stream, extract safely.

A 7z multi-volume archive (``NAME.7z.001``, ``.002``, ...) is one archive split byte-wise: only ``.001`` carries
the signature and the end header sits in the last volume. This module never lets a library guess the volume set
(``multivolumefile`` globs ``NAME.7z.*`` and splices a stray ``.001.incomplete`` into the stream): the volumes are
listed explicitly with :func:`find_volumes`, checked with :func:`verify_volumes` and then either handed to the
``7zz``/``7z``/``7za`` binary or read by py7zr through :class:`ConcatenatedReader`. Without a listing of the
volumes (a local parts folder), :func:`read_layout` derives their number and sizes from the start header of the
first volume, so a stray extra volume is named as such instead of failing a size check of the real last one.

:func:`extract` lists the member names first and refuses any that would land outside the target (absolute paths,
``..``, drive letters, links), then extracts into a fresh ``.extract-partial-*`` folder that the caller renames.
The 7-Zip binary runs tied to this process (:mod:`lrs_plugin.data._child`): it dies with it. The volume functions
live in :mod:`lrs_plugin.data._volumes` and are re-exported here.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from lrs_plugin.data._child import child_options, tied_popen
from lrs_plugin.data._volumes import (
    CHUNK,
    SIGNATURE,
    ConcatenatedReader,
    VolumeLayout,
    find_local_volumes,
    find_volumes,
    read_layout,
    sha256_file,
    verify_volumes,
)
from lrs_plugin.errors import ArchiveCorruptError, ArchivePartError, ConfigError, LrsPluginError, UnsafeArchiveError

__all__ = [
    "EXTRACTORS",
    "PARTIAL_PREFIX",
    "SIGNATURE",
    "ArchiveMember",
    "ConcatenatedReader",
    "VolumeLayout",
    "check_members",
    "extract",
    "find_local_volumes",
    "find_volumes",
    "list_members",
    "read_layout",
    "resolve_extractor",
    "sha256_file",
    "verify_volumes",
]

EXTRACTORS = ("auto", "7z", "py7zr")
"""Valid values of ``extractor``: ``auto`` uses a 7-Zip binary when one is on PATH, else py7zr."""

PARTIAL_PREFIX = ".extract-partial-"
"""Name prefix of the temporary extraction folders (left behind only by an interrupted run)."""

BINARY_NAMES = ("7zz", "7z", "7za")
"""7-Zip executables looked up on PATH, in this order."""

_PROGRESS_EVERY = 200


@dataclass(frozen=True)
class ArchiveMember:
    """One entry of an archive listing.

    Attributes:
        name: Path inside the archive, as stored.
        kind: ``"file"``, ``"dir"``, ``"symlink"``, ``"hardlink"`` or ``"other"`` (device, junction, ...).
    """

    name: str
    kind: str


# --------------------------------------------------------------------------------------------------------------
# Members


def check_members(members: Iterable[ArchiveMember], target: str | Path) -> None:
    """Refuse members that would be written outside ``target`` or that are links.

    Args:
        members: The archive listing.
        target: The folder the archive will be extracted into.

    Raises:
        UnsafeArchiveError: Naming the first offending member and why.
    """
    root = Path(target).resolve()
    for member in members:
        name = member.name
        if member.kind in ("symlink", "hardlink", "other"):
            raise UnsafeArchiveError(f"archive member {name!r} is a {member.kind}; only files and folders are allowed")
        if not name:
            raise UnsafeArchiveError("archive member with an empty name")
        if name.startswith(("/", "\\")):
            raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
        if re.match(r"^[A-Za-z]:", name):
            raise UnsafeArchiveError(f"archive member {name!r} starts with a drive letter")
        if ".." in re.split(r"[/\\]", name):
            raise UnsafeArchiveError(f"archive member {name!r} has a '..' component")
        resolved = (root / PurePosixPath(name.replace("\\", "/"))).resolve()
        if resolved != root and root not in resolved.parents:
            raise UnsafeArchiveError(f"archive member {name!r} resolves to {resolved}, outside {root}")


def resolve_extractor(extractor: str = "auto") -> tuple[str, str | None]:
    """Pick the extraction backend.

    Args:
        extractor: ``"auto"`` (a 7-Zip binary if one is on PATH, else py7zr), ``"7z"`` or ``"py7zr"``.

    Returns:
        ``("7z", path of the binary)`` or ``("py7zr", None)``.

    Raises:
        ConfigError: Unknown value, or ``"7z"`` requested but none of ``7zz``, ``7z``, ``7za`` is on PATH.
    """
    if extractor not in EXTRACTORS:
        raise ConfigError(f"unknown extractor {extractor!r}; valid: {', '.join(EXTRACTORS)}")
    if extractor in ("auto", "7z"):
        for name in BINARY_NAMES:
            found = shutil.which(name)
            if found:
                return "7z", found
        if extractor == "7z":
            raise ConfigError(
                f"extractor '7z' requested but none of {', '.join(BINARY_NAMES)} is on PATH; "
                "install 7-Zip (Debian/Ubuntu: apt-get install 7zip) or use extractor 'py7zr'"
            )
    return "py7zr", None


def list_members(volumes: Sequence[Path], extractor: str = "auto") -> list[ArchiveMember]:
    """List the members of a split archive without extracting anything.

    Args:
        volumes: Checked volume list, ``001`` first.
        extractor: As in :func:`resolve_extractor`.

    Returns:
        The members in archive order.

    Raises:
        ArchiveCorruptError: The archive headers cannot be read.
    """
    kind, binary = resolve_extractor(extractor)
    if kind == "7z":
        return _list_binary(binary, volumes)
    with _open_py7zr(volumes) as (archive, _):
        return [_py7zr_member(info) for info in archive.list()]


def _py7zr_member(info) -> ArchiveMember:
    if info.is_symlink:
        return ArchiveMember(info.filename, "symlink")
    if info.is_directory:
        return ArchiveMember(info.filename, "dir")
    return ArchiveMember(info.filename, "file" if info.is_file else "other")


def _list_binary(binary: str, volumes: Sequence[Path]) -> list[ArchiveMember]:
    cmd = [binary, "l", "-slt", "-sccUTF-8", "-y", str(volumes[0])]
    done = subprocess.run(cmd, capture_output=True, env=_c_locale(), **child_options())
    if done.returncode not in (0, 1):
        raise ArchiveCorruptError(
            f"cannot list {volumes[0].name} with {Path(binary).name} (exit code {done.returncode}): "
            f"{_tail(done.stderr or done.stdout)}; check that all {len(volumes)} volumes are complete"
        )
    text = done.stdout.decode("utf-8", errors="surrogateescape")
    _, sep, body = text.partition("\n----------\n")
    if not sep:
        return []
    members = []
    for block in re.split(r"\n\s*\n", body):
        fields = dict(line.split(" = ", 1) for line in block.splitlines() if " = " in line)
        fields.update({line[:-2]: "" for line in block.splitlines() if line.endswith(" =")})
        if "Path" in fields:
            members.append(ArchiveMember(fields["Path"], _binary_kind(fields)))
    return members


def _binary_kind(fields: Mapping[str, str]) -> str:
    if fields.get("Symbolic Link"):
        return "symlink"
    if fields.get("Hard Link"):
        return "hardlink"
    attributes = fields.get("Attributes", "")
    if fields.get("Folder") == "+" or attributes.startswith("D"):
        return "dir"
    unix = attributes.split(" ", 1)[1] if " " in attributes else ""
    if unix[:1] == "l":
        return "symlink"
    if unix[:1] not in ("", "-"):
        return "other"
    return "file"


# --------------------------------------------------------------------------------------------------------------
# Extraction


def extract(
    volumes: Sequence[Path],
    target_parent: str | Path,
    *,
    extractor: str = "auto",
    progress: bool = True,
    pass_fds: Sequence[int] = (),
) -> Path:
    """Extract a split archive into a fresh ``.extract-partial-*`` folder inside ``target_parent``.

    Member names are checked (:func:`check_members`) before anything is written. On any failure the partial folder
    is removed. A 7-Zip binary runs tied to this process: it gets ``SIGKILL`` when this process dies (Linux) and
    its process group is killed when this call raises, ``KeyboardInterrupt`` included.

    Args:
        volumes: Checked volume list, ``001`` first (see :func:`find_volumes`, :func:`verify_volumes`).
        target_parent: Folder that receives the temporary folder (the caller renames its content into place).
        extractor: ``"auto"``, ``"7z"`` or ``"py7zr"`` (see :func:`resolve_extractor`).
        progress: Report progress on stderr.
        pass_fds: Open descriptors the 7-Zip binary inherits (ignored by py7zr, which runs in this process): pass a
            held lock (:func:`lrs_plugin.data._lock.exclusive_lock`) and it stays held while the binary runs.

    Returns:
        The temporary folder holding the extracted members.

    Raises:
        UnsafeArchiveError: A member would land outside the folder or is a link.
        ArchiveCorruptError: CRC or stream error; names the member and the volume where possible.
    """
    volumes = [Path(v) for v in volumes]
    if not volumes:
        raise ArchivePartError("no volumes to extract")
    kind, binary = resolve_extractor(extractor)
    target_parent = Path(target_parent)
    target_parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=target_parent))
    try:
        if kind == "7z":
            members = _list_binary(binary, volumes)
            check_members(members, tmp)
            _extract_binary(binary, volumes, tmp, _count_files(members), progress, pass_fds)
        else:
            _extract_py7zr(volumes, tmp, progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _count_files(members: Iterable[ArchiveMember]) -> int:
    return sum(1 for m in members if m.kind == "file")


def _extract_binary(
    binary: str, volumes: Sequence[Path], tmp: Path, total: int, progress: bool, pass_fds: Sequence[int] = ()
) -> None:
    name = Path(binary).name
    cmd = [binary, "x", "-y", "-sccUTF-8", "-bb1" if progress else "-bb0", f"-o{tmp}", str(volumes[0])]
    with tempfile.TemporaryFile() as err, _Progress(total, f"extracting with {name}", progress) as bar:
        with tied_popen(cmd, pass_fds=pass_fds, stdout=subprocess.PIPE, stderr=err, env=_c_locale()) as proc:
            for line in proc.stdout or ():
                if line.startswith(b"- "):
                    bar.update(1)
            code = proc.wait()
        err.seek(0)
        stderr = err.read()
    if code == 1:
        print(f"{name} reported warnings: {_tail(stderr)}", file=sys.stderr, flush=True)
    elif code == 2:
        bad = re.findall(rb"(?:CRC Failed|Data Error|Unsupported Method|Headers Error)[^:\n]*: *([^\n]+)", stderr)
        where = f" in member {bad[0].decode(errors='replace').strip()!r}" if bad else ""
        raise ArchiveCorruptError(
            f"{name} failed to extract {volumes[0].name}..{volumes[-1].name}{where} (exit code 2): {_tail(stderr)}; "
            "re-download the volumes (sizes/hashes could not catch this)"
        )
    elif code != 0:
        raise LrsPluginError(f"{name} exited with code {code} on {volumes[0]}: {_tail(stderr)}")


def _extract_py7zr(volumes: Sequence[Path], tmp: Path, progress: bool) -> None:
    import py7zr

    with _open_py7zr(volumes) as (archive, reader):
        members = [_py7zr_member(info) for info in archive.list()]
        check_members(members, tmp)
        with _Progress(_count_files(members), "extracting with py7zr", progress) as bar:
            try:
                archive.extractall(path=tmp, callback=_py7zr_callback(bar) if progress else None)
            except py7zr.exceptions.UnsupportedCompressionMethodError as exc:
                raise ArchiveCorruptError(
                    f"py7zr cannot decode a compression method of {volumes[0].name} ({exc.message}): install 7-Zip "
                    "(Debian/Ubuntu: apt-get install 7zip) and use extractor '7z'"
                ) from exc
            except py7zr.exceptions.CrcError as exc:
                raise ArchiveCorruptError(
                    f"CRC mismatch in member {exc.filename!r} (detected while reading {_volume_name(reader)}): "
                    "re-download the volumes (sizes/hashes could not catch this)"
                ) from exc
            except _decode_errors() as exc:
                raise ArchiveCorruptError(
                    f"cannot decode {volumes[0].name}..{volumes[-1].name} (failed while reading "
                    f"{_volume_name(reader)}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc


@contextmanager
def _open_py7zr(volumes: Sequence[Path]) -> Iterator[tuple[Any, ConcatenatedReader]]:
    """Open a split archive with py7zr over :class:`ConcatenatedReader`; header errors become typed errors."""
    import py7zr

    with ConcatenatedReader(volumes) as reader:
        try:
            archive = py7zr.SevenZipFile(io.BufferedReader(reader, CHUNK), mode="r")
        except _decode_errors() as exc:
            raise ArchiveCorruptError(
                f"cannot read the archive headers of {volumes[0].name}..{volumes[-1].name} ({len(volumes)} volumes): "
                f"{type(exc).__name__}: {exc}; the first or the last volume may be missing, truncated or from "
                "another archive"
            ) from exc
        with archive:
            yield archive, reader


def _decode_errors() -> tuple[type[BaseException], ...]:
    import lzma

    import py7zr

    return (py7zr.exceptions.ArchiveError, EOFError, lzma.LZMAError, zlib.error)


def _volume_name(reader: ConcatenatedReader) -> str:
    volume = reader.current_volume
    return volume.name if volume is not None else "the first volume"


def _py7zr_callback(bar: _Progress):
    from py7zr.callbacks import ExtractCallback

    class _Callback(ExtractCallback):
        def report_start_preparation(self) -> None:
            pass

        def report_start(self, processing_file_path, processing_bytes) -> None:
            pass

        def report_update(self, decompressed_bytes) -> None:
            pass

        def report_end(self, processing_file_path, wrote_bytes) -> None:
            bar.update(1)

        def report_warning(self, message) -> None:
            print(f"py7zr: {message}", file=sys.stderr, flush=True)

        def report_postprocess(self) -> None:
            pass

    return _Callback()


class _Progress:
    """Member counter on stderr: a tqdm bar when tqdm is installed, else one line every few hundred members."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self._total, self._desc, self._enabled = total, desc, enabled
        self._done = 0
        self._bar = None

    def __enter__(self) -> _Progress:
        if self._enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                print(f"{self._desc}: {self._total} files", file=sys.stderr, flush=True)
            else:
                self._bar = tqdm(total=self._total, desc=self._desc, unit="file", file=sys.stderr)
        return self

    def update(self, n: int) -> None:
        self._done += n
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
        elif self._done % _PROGRESS_EVERY == 0 or self._done == self._total:
            print(f"{self._desc}: {self._done}/{self._total} files", file=sys.stderr, flush=True)

    def __exit__(self, *exc_info) -> None:
        if self._bar is not None:
            self._bar.close()


def _tail(data: bytes | str, limit: int = 800) -> str:
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    text = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return text[-limit:] if text else "(no message)"


def _c_locale() -> dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C.UTF-8"
    return env
