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
The 7-Zip binary runs tied to this process (:mod:`lrs_plugin.data._child`): it dies with it.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import math
import os
import re
import shutil
import struct
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
from lrs_plugin.errors import ArchiveCorruptError, ArchivePartError, ConfigError, LrsPluginError, UnsafeArchiveError

__all__ = [
    "EXTRACTORS",
    "PARTIAL_PREFIX",
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

SIGNATURE = b"7z\xbc\xaf\x27\x1c"
"""First 6 bytes of a 7z archive (of its first volume)."""

_START_HEADER = 32
_CHUNK = 8 * 1024 * 1024
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
# Volumes


def find_volumes(
    folder: str | Path,
    base: str = "LRS_VQA.7z",
    *,
    expected_count: int | None = None,
    source: str | None = None,
) -> list[Path]:
    r"""List the volumes ``<base>.001 .. <base>.NNN`` of ``folder`` explicitly (no glob).

    Only names matching ``^<base>\.(\d{3})$`` count, so ``.001.incomplete``, ``.002.aria2`` or ``.md5`` files next
    to the volumes are ignored.

    Args:
        folder: Folder holding the volumes.
        base: Archive name without the volume number.
        expected_count: Number of volumes there must be, when known (from the Hub listing or :func:`read_layout`).
        source: Where ``expected_count`` comes from, for the messages (e.g. :meth:`VolumeLayout.describe`).

    Returns:
        The volumes in order, ``001`` first.

    Raises:
        ArchivePartError: The folder is missing, holds no volume, the numbers have gaps, or (with
            ``expected_count``) a volume up to it is missing or one beyond it exists; the message names the missing
            and the unexpected volumes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ArchivePartError(f"volume folder {folder} does not exist (expected {base}.001 ... inside it)")
    pattern = re.compile(rf"^{re.escape(base)}\.(\d{{3}})$")
    numbered = {}
    for entry in folder.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_file():
            numbered[int(match.group(1))] = entry
    if not numbered:
        raise ArchivePartError(f"no volume {base}.001 (or any {base}.NNN) in {folder}")
    last = max(numbered) if expected_count is None else expected_count
    missing = [f"{base}.{n:03d}" for n in range(1, last + 1) if n not in numbered]
    extra = [numbered[n].name for n in sorted(numbered) if n > last]
    why = f" ({source})" if source else ""
    if extra:
        it = "it" if len(extra) == 1 else "them"
        gap = f"; missing volume(s) {', '.join(missing)}" if missing else ""
        raise ArchivePartError(
            f"{folder} holds {len(numbered)} volumes of {base} but {expected_count} are expected; unexpected: "
            f"{', '.join(extra)}, found beyond the {expected_count} volumes of {base}{why}: remove {it}{gap}"
        )
    if missing:
        count = f"; {base} has {expected_count} volumes{why}" if expected_count is not None else ""
        raise ArchivePartError(f"missing volume(s) {', '.join(missing)} in {folder} (found {_names(numbered)}{count})")
    return [numbered[n] for n in sorted(numbered)]


@dataclass(frozen=True)
class VolumeLayout:
    """Number and sizes of the volumes of a split 7z archive, as its start header says.

    Attributes:
        total_size: Bytes of the whole archive: the 32-byte start header, the packed streams and the end header.
        volume_size: Bytes of every volume but the last (the size of the first volume).
        count: Number of volumes, ``ceil(total_size / volume_size)``.
    """

    total_size: int
    volume_size: int
    count: int

    def expected(self, base: str) -> dict[str, tuple[int | None, str | None]]:
        """``{volume name: (size, None)}`` for :func:`verify_volumes` (no hash is known)."""
        sizes = [self.volume_size] * (self.count - 1) + [self.total_size - (self.count - 1) * self.volume_size]
        return {f"{base}.{i:03d}": (size, None) for i, size in enumerate(sizes, start=1)}

    def describe(self, base: str) -> str:
        """Where the count comes from, in words (for error messages)."""
        return (
            f"the start header of {base}.001 gives an archive of {self.total_size} bytes, i.e. {self.count} "
            f"volume(s) of {self.volume_size} bytes"
        )


def read_layout(first: str | Path, second: str | Path | None = None) -> VolumeLayout | None:
    """Derive the volume layout from the 7z start header of the first volume.

    The start header (the first 32 bytes, guarded by a CRC) holds the offset and the size of the end header, hence
    the size of the whole archive; every volume but the last has the size of the first.

    Args:
        first: The first volume (``<base>.001``).
        second: The second volume, when there is one: if it is larger than ``first``, ``first`` is truncated and its
            size says nothing about the others.

    Returns:
        The layout, or ``None`` when it cannot be trusted: ``first`` is unreadable, not a 7z volume, its start
        header fails its CRC or has no end header (an unfinished archive), or ``second`` is larger.
    """
    try:
        with open(first, "rb") as handle:
            head = handle.read(_START_HEADER)
            first_size = os.fstat(handle.fileno()).st_size
        second_size = Path(second).stat().st_size if second is not None and Path(second).is_file() else None
    except OSError:
        return None
    if len(head) < _START_HEADER or head[: len(SIGNATURE)] != SIGNATURE:
        return None
    (crc,) = struct.unpack_from("<I", head, 8)
    if zlib.crc32(head[12:_START_HEADER]) != crc:
        return None
    offset, length = struct.unpack_from("<QQ", head, 12)
    if length == 0 or (second_size is not None and second_size > first_size):
        return None
    total = _START_HEADER + offset + length
    volume_size = min(first_size, total)
    return VolumeLayout(total, volume_size, math.ceil(total / volume_size))


def find_local_volumes(
    folder: str | Path, base: str = "LRS_VQA.7z"
) -> tuple[list[Path], dict[str, tuple[int | None, str | None]] | None]:
    """List the volumes of a local folder, checked against the layout their first volume announces.

    With no listing to compare against (no Hub), :func:`read_layout` supplies the expected count and sizes: a stray
    ``<base>.014`` next to a 13-volume archive is then named as unexpected, a missing last volume as missing.
    When the layout cannot be read, the volumes are only listed (numbering checked) as by :func:`find_volumes`.

    Args:
        folder: Folder holding the volumes.
        base: Archive name without the volume number.

    Returns:
        ``(volumes, expected)``: ``expected`` is ``{name: (size, None)}`` for :func:`verify_volumes`, or ``None``.

    Raises:
        ArchivePartError: As in :func:`find_volumes`.
    """
    folder = Path(folder)
    layout = read_layout(folder / f"{base}.001", folder / f"{base}.002")
    if layout is None:
        return find_volumes(folder, base), None
    volumes = find_volumes(folder, base, expected_count=layout.count, source=layout.describe(base))
    return volumes, layout.expected(base)


def _names(numbered: Mapping[int, Path]) -> str:
    return ", ".join(numbered[n].name for n in sorted(numbered))


def sha256_file(path: str | Path, chunk_size: int = _CHUNK) -> str:
    """Return the hex sha256 of a file, read in chunks of ``chunk_size`` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def verify_volumes(
    volumes: Sequence[Path],
    expected: Mapping[str, tuple[int | None, str | None]] | None = None,
    *,
    progress: bool = False,
) -> None:
    """Check a volume list: names, sizes and (where known) sha256.

    Every volume but the last must have the same size and the last must not be larger; where ``expected`` knows a
    size or a hash it must match. Sizes are checked for all volumes before any hash is computed.

    Args:
        volumes: Volumes in order, as returned by :func:`find_volumes`.
        expected: ``{volume name: (size or None, sha256 or None)}``, e.g. from the Hub listing; ``None`` when
            nothing is known beyond the volumes themselves.
        progress: Print one line to stderr per hashed volume.

    Raises:
        ArchivePartError: Naming the bad volume with the expected and the actual value. Without ``expected``, a
            short volume that is not the last is named with the volumes after it (strays, if it is the real last
            one), and a first volume shorter than the others is named as truncated.
    """
    if not volumes:
        raise ArchivePartError("no volumes given")
    volumes = [Path(v) for v in volumes]
    names = [v.name for v in volumes]
    if expected is not None:
        absent = sorted(set(expected) - set(names))
        if absent:
            raise ArchivePartError(f"missing volume(s) {', '.join(absent)} (have {', '.join(names)})")
        extra = [n for n in names if n not in expected]
        if extra:
            raise ArchivePartError(f"unexpected volume(s) {', '.join(extra)} (expected {', '.join(sorted(expected))})")
    sizes = [v.stat().st_size for v in volumes]
    for volume, size in zip(volumes, sizes, strict=True):
        want = expected.get(volume.name, (None, None))[0] if expected else None
        if want is not None and size != want:
            raise ArchivePartError(f"{volume.name} has {size} bytes, expected {want}: re-download {volume}")
        if size == 0:
            raise ArchivePartError(f"{volume.name} is empty (0 bytes): re-download {volume}")
    first = sizes[0]
    if len(volumes) > 3 and sizes[1] > first and all(size == sizes[1] for size in sizes[2:-1]):
        raise ArchivePartError(
            f"{names[0]} has {first} bytes, fewer than the {sizes[1]} bytes of every other volume before the last "
            f"({', '.join(names[1:-1])}): truncated first volume, re-download {volumes[0]}"
        )
    for index in range(1, len(volumes) - 1):
        volume, size = volumes[index], sizes[index]
        if size == first:
            continue
        rule = (
            f"{volume.name} has {size} bytes but every volume before the last must have the size of "
            f"{names[0]} ({first} bytes)"
        )
        if size > first:
            raise ArchivePartError(f"{rule}: truncated or mismatched volume {volume}")
        later = names[index + 1 :]
        verb, it = ("does", "it") if len(later) == 1 else ("do", "them")
        raise ArchivePartError(
            f"{rule}: either {volume.name} is the last volume and {', '.join(later)} found beyond it {verb} not "
            f"belong to this archive (remove {it}), or {volume.name} is truncated (re-download {volume})"
        )
    if len(volumes) > 1 and sizes[-1] > first:
        raise ArchivePartError(
            f"last volume {names[-1]} has {sizes[-1]} bytes, more than the {first} bytes of the others: "
            f"mismatched volume {volumes[-1]}"
        )
    for volume in volumes:
        want_sha = expected.get(volume.name, (None, None))[1] if expected else None
        if want_sha is None:
            continue
        if progress:
            print(f"verifying sha256 of {volume.name} ...", file=sys.stderr, flush=True)
        actual = sha256_file(volume)
        if actual != want_sha.lower():
            raise ArchivePartError(f"{volume.name} has sha256 {actual}, expected {want_sha}: re-download {volume}")


class ConcatenatedReader(io.RawIOBase):
    """Read-only, seekable view of several files as one byte stream (the volumes of a split archive).

    Opens at most one volume at a time. Wrap it in :class:`io.BufferedReader` for many small reads.

    Args:
        paths: The volumes, in order.
    """

    def __init__(self, paths: Sequence[str | Path]) -> None:
        super().__init__()
        self._paths = [Path(p) for p in paths]
        if not self._paths:
            raise ValueError("ConcatenatedReader needs at least one file")
        self._starts: list[int] = []
        total = 0
        for path in self._paths:
            self._starts.append(total)
            total += path.stat().st_size
        self._size = total
        self._pos = 0
        self._index: int | None = None
        self._handle: io.BufferedReader | None = None

    @property
    def current_volume(self) -> Path | None:
        """The volume read last (``None`` before the first read): names the culprit of a decoding error."""
        return None if self._index is None else self._paths[self._index]

    def readable(self) -> bool:  # noqa: D102
        return True

    def seekable(self) -> bool:  # noqa: D102
        return True

    def tell(self) -> int:  # noqa: D102
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:  # noqa: D102
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence!r}; valid: 0, 1, 2")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer) -> int:  # noqa: D102
        self._check_open()
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            index = bisect.bisect_right(self._starts, self._pos) - 1
            handle = self._open(index)
            local = self._pos - self._starts[index]
            end = self._starts[index + 1] if index + 1 < len(self._starts) else self._size
            want = min(len(view) - done, end - self._pos)
            handle.seek(local)
            got = handle.readinto(view[done : done + want])
            if not got:
                raise OSError(f"{self._paths[index]} is shorter than when it was listed (changed while reading?)")
            done += got
            self._pos += got
        return done

    def close(self) -> None:  # noqa: D102
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        super().close()

    def _open(self, index: int) -> io.BufferedReader:
        if self._index != index or self._handle is None:
            if self._handle is not None:
                self._handle.close()
            self._handle = open(self._paths[index], "rb")  # noqa: SIM115 - closed in close() / on switch
            self._index = index
        return self._handle

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed ConcatenatedReader")


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
            archive = py7zr.SevenZipFile(io.BufferedReader(reader, _CHUNK), mode="r")
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
    import zlib

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
